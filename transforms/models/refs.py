"""Model references, the load error, and small helpers shared by the model modules.

Outside this package import these from :mod:`transforms.models`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

PKG_PREFIX = "pkg:"


class ModelLoadError(RuntimeError):
    """A model could not be resolved or loaded. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class ModelRef:
    """What model to load: hub id, local directory, or ``pkg:<name>``; optional revision."""

    id: str
    revision: str | None = None

    @property
    def kind(self) -> str:
        """``"pkg"``, ``"local"`` or ``"hub"`` (see :func:`ref_kind`)."""
        return ref_kind(self)

    def __str__(self) -> str:
        return self.id if self.revision is None else f"{self.id}@{self.revision}"


def ref_kind(ref: ModelRef | str) -> str:
    """Classify a model id: ``"pkg"``, ``"local"`` (an existing path or path-looking id) or ``"hub"``."""
    model_id = ref.id if isinstance(ref, ModelRef) else ref
    if model_id.startswith(PKG_PREFIX):
        return "pkg"
    if _looks_like_path(model_id) or Path(model_id).expanduser().exists():
        return "local"
    return "hub"


def _looks_like_path(model_id: str) -> bool:
    return (
        model_id.startswith(("/", "./", "../", "~", "."))
        or os.path.isabs(model_id)
        or model_id.count("/") > 1
        or "\\" in model_id
    )


def as_ref(ref: ModelRef | str) -> ModelRef:
    """``ref`` as a :class:`ModelRef` (a plain string is an id without a revision)."""
    if isinstance(ref, ModelRef):
        return ref
    if isinstance(ref, str):
        return ModelRef(ref)
    raise TypeError(f"expected ModelRef or str, got {type(ref).__name__}")


def short_message(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, capped."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: dtype spellings accepted in settings -> the canonical torch name
DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def torch_dtype(dtype: Any) -> torch.dtype:
    """The ``torch.dtype`` for a name or alias (a ``torch.dtype`` is returned as is)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_ALIASES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(set(DTYPE_ALIASES.values()))}")
    return getattr(torch, name)

