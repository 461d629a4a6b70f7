"""Trait vectors out of the store, into the files other tools load.

- ``gguf``: a llama.cpp control vector. Read from llama.cpp itself (ggml-org/llama.cpp):
  ``common/common.cpp`` ``common_control_vector_load_one`` parses the tensor name
  ``direction.N``, rejects N = 0 ("invalid (zero) direction tensor layer index"), requires F32
  and 1-D, and stores the data at offset ``n_embd * (N - 1)``; ``src/llama-adapter.cpp``
  ``llama_adapter_cvec::apply`` fills ``tensors[il]`` from offset ``n_embd * (il - 1)`` for
  ``il = 1 .. n_layer - 1``, and every model graph calls ``build_cvec(cur, il)`` right after
  block ``il``'s FFN residual add, on the block's output (``l_out``). The two ``-1`` cancel:
  ``direction.N`` is added to the output of decoder block N, which is our layer N
  (= ``hidden_states[N+1]``). Our layer 0 has no llama.cpp slot. ``controlvector.layer_count``
  is the number of direction tensors, int32, as llama.cpp's ``cvector-generator`` writes it
  (the loader does not read it, nor ``model_hint``).
- ``repeng``: the same layout, which repeng's ``ControlVector.import_gguf`` reads (vgel/repeng
  ``extract.py``: ``direction.N`` -> ``directions[N]``, ``model_hint`` -> ``model_type``).
  repeng's ``ControlModel`` adds ``directions[i]`` to the output of ``model.model.layers[i]``,
  block i = our layer i, so the numbers carry over unchanged and layer 0 is allowed.
  ``layer_count`` is uint32 there, as repeng's ``export_gguf`` writes it. A pickle-free
  ``{model_type, directions}`` file would need code on the reader's side; repeng loads only
  its gguf, so that is what we write.
- ``pt``: plain tensors. ``*.safetensors``: ``{"layer_<k>": [d_model]}`` with our metadata in
  the header; anything else: ``torch.save({k: tensor})`` plus a ``<output>.json`` sidecar.

Every check runs before the first byte is written; files are written to a temporary name and
renamed, so a failed export leaves nothing.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("gguf", "repeng", "pt")
CONTROL_FORMATS = ("gguf", "repeng")  # added to the block output: residual vectors only
CONTROL_ARCH = "controlvector"
TENSOR_LAYER_MAP = ("direction.N = traitstore layer N = output of decoder block N; llama.cpp adds "
                    "direction.N to block N's output (l_out) and rejects N = 0; repeng adds it to "
                    "model.model.layers[N]'s output")
# source metadata copied into the exported file as traitstore.<key>
CARRIED_KEYS = ("model_id", "model_revision", "layer_convention", "position", "component", "method",
                "variant", "prompt_set")


class ExportError(ValueError):
    """A request that cannot be exported; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class VectorFile:
    """One method's vectors as a vectors dataset stores them (``vectors/<method>.safetensors``):
    ``vectors_LD`` float32 [layer, d_model], row i is layer ``layers[i]``."""

    vectors_LD: "np.ndarray"
    layers: tuple[int, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def component(self) -> str:
        return self.metadata.get("component", "residual")


@dataclass(frozen=True)
class ExportResult:
    paths: tuple[str, ...]
    layers: tuple[int, ...]
    fmt: str


def read_vector_file(data: bytes, where: str = "vectors file") -> VectorFile:
    """Parse a vectors safetensors file's bytes (tensor ``vectors`` + ``__metadata__``)."""
    import numpy as np
    from safetensors.numpy import load

    try:
        tensors = load(data)
        length = int.from_bytes(data[:8], "little")
        metadata = dict(json.loads(data[8:8 + length]).get("__metadata__") or {})
    except Exception as err:  # a truncated or foreign file: say which one
        raise ExportError(f"{where}: not a readable safetensors file ({type(err).__name__})") from None
    if "vectors" not in tensors or tensors["vectors"].ndim != 2:
        raise ExportError(f"{where}: expected a 2-D tensor 'vectors' [layer, d_model]")
    vectors_LD = np.asarray(tensors["vectors"], dtype=np.float32)
    layers = tuple(int(k) for k in json.loads(metadata.get("layers", "null")) or range(len(vectors_LD)))
    if len(layers) != len(vectors_LD):
        raise ExportError(f"{where}: metadata names {len(layers)} layers for {len(vectors_LD)} vectors")
    return VectorFile(vectors_LD, layers, metadata)


def select_layers(available: Sequence[int], spec: str, fmt: str) -> tuple[int, ...]:
    """``all`` or a comma list of layer numbers, checked against what the file holds. llama.cpp
    has no slot for layer 0: ``all`` leaves it out (logged), naming it is an error."""
    if spec.strip() == "all":
        chosen = tuple(available)
        if fmt == "gguf" and 0 in chosen:
            log.warning("layer 0 left out: llama.cpp control vectors start at block 1 (direction.0 is rejected)")
            chosen = tuple(k for k in chosen if k != 0)
    else:
        try:
            chosen = tuple(int(part) for part in spec.split(",") if part.strip())
        except ValueError:
            raise ExportError(f"--layers: expected 'all' or a comma list of layer numbers, got {spec!r}") from None
        missing = [k for k in chosen if k not in available]
        if missing:
            raise ExportError(f"--layers: layer(s) {', '.join(map(str, missing))} not in the vectors "
                              f"(layers {', '.join(map(str, available))})")
        if len(set(chosen)) != len(chosen):
            raise ExportError(f"--layers: a layer is named twice in {spec!r}")
        if fmt == "gguf" and 0 in chosen:
            raise ExportError("--layers: layer 0 cannot be a llama.cpp control vector (its loader rejects "
                              "direction.0; it starts at block 1)")
    if not chosen:
        raise ExportError("--layers: no layer left to export")
    return chosen


def export_vectors(vectors: VectorFile, output: str, fmt: str, layers: str = "all", scale: float = 1.0,
                   source: str = "", model_hint: str | None = None, force: bool = False) -> ExportResult:
    """Write ``vectors`` (scaled by ``scale``, only ``layers``) to ``output`` in ``fmt``;
    ``source`` is the dataset ref written into the file. Raises :class:`ExportError` before
    writing anything when the request cannot be met."""
    import numpy as np

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format: unknown format {fmt!r} (known: {', '.join(EXPORT_FORMATS)})")
    if fmt in CONTROL_FORMATS and vectors.component != "residual":
        raise ExportError(f"--format {fmt}: a control vector is added to a block's output, so only residual "
                          f"vectors qualify; these are {vectors.component} vectors (use --format pt)")
    if not math.isfinite(scale):
        raise ExportError(f"--scale must be a finite number, got {scale}")
    chosen = select_layers(vectors.layers, layers, fmt)
    row = {k: i for i, k in enumerate(vectors.layers)}
    directions = {k: np.ascontiguousarray(vectors.vectors_LD[row[k]] * np.float32(scale), dtype=np.float32)
                  for k in chosen}
    if not all(np.isfinite(d).all() for d in directions.values()):
        raise ExportError("the vectors hold non-finite values; nothing to export")
    metadata = export_metadata(vectors.metadata, source, scale, chosen)
    safetensors_out = fmt == "pt" and output.endswith(".safetensors")
    paths = (output,) if fmt != "pt" or safetensors_out else (output, output + ".json")
    check_outputs(paths, force)
    if fmt == "pt" and safetensors_out:
        write_safetensors(output, directions, metadata)
    elif fmt == "pt":
        write_torch(output, directions, metadata)
    else:
        hint = model_hint or vectors.metadata.get("model_id") or "unknown"
        # llama.cpp's cvector-generator writes layer_count as int32, repeng's export as uint32
        write_control_gguf(output, directions, hint, metadata, count_type="int32" if fmt == "gguf" else "uint32")
    log.info("wrote %s (%s, layers %s)", ", ".join(paths), fmt, list(chosen))
    return ExportResult(paths, chosen, fmt)


def export_metadata(source_meta: dict[str, str], source: str, scale: float, layers: Sequence[int]) -> dict[str, str]:
    """Our keys (``traitstore.<key>``, strings) for any of the three formats."""
    meta = {f"traitstore.{k}": str(source_meta[k]) for k in CARRIED_KEYS if k in source_meta}
    meta.setdefault("traitstore.layer_convention", "layer k = output of decoder block k = hidden_states[k+1]")
    meta.update({"traitstore.source": source, "traitstore.scale": repr(float(scale)),
                 "traitstore.layers": json.dumps([int(k) for k in layers]),
                 "traitstore.tensor_layer_map": TENSOR_LAYER_MAP})
    return meta


def check_outputs(paths: Sequence[str], force: bool) -> None:
    for path in paths:
        if os.path.isdir(path):
            raise ExportError(f"--output {path} is a folder; give a file path")
        if os.path.exists(path) and not force:
            raise ExportError(f"--output {path} exists (pass --force to overwrite)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ExportError(f"--output: folder {parent} does not exist")


def write_control_gguf(path: str, directions: "dict[int, np.ndarray]", model_hint: str,
                       metadata: dict[str, str], count_type: str = "int32") -> None:
    """One float32 ``direction.<layer>`` tensor per layer (see the module docstring for why
    N is our layer number), ``controlvector.model_hint``, ``controlvector.layer_count``."""
    from gguf import GGUFWriter

    def write(tmp: str) -> None:
        writer = GGUFWriter(tmp, CONTROL_ARCH)
        writer.add_string(f"{CONTROL_ARCH}.model_hint", model_hint)
        if count_type == "int32":
            writer.add_int32(f"{CONTROL_ARCH}.layer_count", len(directions))
        else:
            writer.add_uint32(f"{CONTROL_ARCH}.layer_count", len(directions))
        for key, value in metadata.items():
            writer.add_string(key, value)
        for layer in sorted(directions):
            writer.add_tensor(f"direction.{layer}", directions[layer])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    replace_written(path, write)


def write_safetensors(path: str, directions: "dict[int, np.ndarray]", metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    replace_written(path, lambda tmp: save_file({f"layer_{k}": v for k, v in sorted(directions.items())},
                                                tmp, metadata=metadata))


def write_torch(path: str, directions: "dict[int, np.ndarray]", metadata: dict[str, str]) -> None:
    """``torch.save({layer: tensor})`` (loads with ``weights_only=True``) + ``<path>.json``."""
    import torch

    tensors = {int(k): torch.from_numpy(v.copy()) for k, v in sorted(directions.items())}
    sidecar = json.dumps({**metadata, "tensors": "{layer: float32 [d_model]}"}, indent=1, sort_keys=True) + "\n"
    replace_written(path, lambda tmp: torch.save(tensors, tmp))

    def write_sidecar(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(sidecar)

    try:
        replace_written(path + ".json", write_sidecar)
    except BaseException:
        os.remove(path)  # the tensors without their metadata would be a half export
        raise


def replace_written(path: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)`` then rename ``tmp`` to ``path``; the temporary file never stays."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
