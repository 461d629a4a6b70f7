"""Where a model runs and in what precision: one place that resolves ``auto`` and defaults.

Device names: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.
Dtypes: ``float32``, ``bfloat16``, ``float16`` (aliases fp32/bf16/fp16/half accepted); the
default is bfloat16 on an accelerator and float32 on the CPU. Errors are one line
(:class:`DeviceError`, a :class:`~transforms.models.ModelLoadError`, so builders report
them like any other bad model setting). Checking a name's spelling needs no torch import;
resolving ``auto`` or checking availability does.
"""
from __future__ import annotations

import re

from transforms.models.refs import DTYPE_ALIASES, ModelLoadError

DTYPES = ("float32", "bfloat16", "float16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceError(ModelLoadError, ValueError):
    """A device or dtype setting that is misspelled or not available on this machine (a
    ValueError too: a bad dtype was one before dtypes were settings)."""


def check_device_name(name: str) -> str:
    """``name`` normalised (lower case, trimmed) if it is a device name, else DeviceError."""
    norm = str(name).strip().lower()
    if not _DEVICE_RE.match(norm):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, mps, cuda or cuda:N")
    return norm


def check_dtype_name(name: str) -> str:
    """The canonical dtype name (``float32``, ``bfloat16``, ``float16``) or DeviceError."""
    canonical = DTYPE_ALIASES.get(str(name).strip().lower().removeprefix("torch."))
    if canonical is None:
        raise DeviceError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return canonical


def resolve_device(name: str | None = "auto") -> str:
    """A concrete torch device string for ``name`` (None = auto), checked to exist here."""
    norm = check_device_name(name or "auto")
    if norm == "cpu":
        return "cpu"
    import torch

    if norm == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available(torch):
            return "mps"
        return "cpu"
    if norm == "mps":
        if not _mps_available(torch):
            raise DeviceError("device 'mps' requested but MPS is not available on this machine")
        return "mps"
    if not torch.cuda.is_available():
        raise DeviceError(f"device {norm!r} requested but CUDA is not available on this machine")
    if ":" in norm:
        index, count = int(norm.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {norm!r} requested but this machine has {count} CUDA device(s)")
    return norm


def resolve_dtype(name: str | None, device: str) -> str:
    """The dtype to load in: ``name`` (canonical), or by default bfloat16 on an
    accelerator and float32 on the CPU (``device`` already resolved)."""
    if name is not None:
        return check_dtype_name(name)
    return "float32" if device == "cpu" else "bfloat16"


def _mps_available(torch: object) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available())
