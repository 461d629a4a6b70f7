"""Read safetensors checkpoints one tensor at a time, without mapping whole files.

``safetensors.safe_open`` memory-maps the file: every tensor read leaves its pages
resident in the process, so streaming two checkpoints through it ends with both in RSS.
:class:`TensorReader` parses the header itself and ``seek`` + ``read``s one tensor's bytes,
so peak memory is the tensor being compared, not the checkpoint.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read_header(path: str | Path) -> tuple[dict[str, dict], int]:
    """``(header without __metadata__, byte offset where tensor data starts)``."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


class TensorReader:
    """All tensors of a checkpoint folder (one ``*.safetensors`` file or several shards)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {folder}")
        self.folder = folder
        self._index: dict[str, tuple[Path, dict, int]] = {}
        for path in files:
            header, start = read_header(path)
            for name, info in header.items():
                self._index[name] = (path, info, start)

    @property
    def names(self) -> list[str]:
        return sorted(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._index[name][1]["shape"])

    def nbytes(self) -> int:
        return sum(info["data_offsets"][1] - info["data_offsets"][0] for _, info, _ in self._index.values())

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as float32 (a fresh tensor, nothing else kept)."""
        import torch

        path, info, start = self._index[name]
        lo, hi = info["data_offsets"]
        raw = torch.empty(hi - lo, dtype=torch.uint8)
        with open(path, "rb") as handle:  # readinto: the bytes land in the tensor, no copy
            handle.seek(start + lo)
            if handle.readinto(raw.numpy()) != hi - lo:
                raise OSError(f"{path}: truncated tensor {name}")
        dtype = getattr(torch, _DTYPES[info["dtype"]])
        return raw.view(dtype).reshape(info["shape"]).to(torch.float32)
