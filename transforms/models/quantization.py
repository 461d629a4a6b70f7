"""Quantized models: a catalog variant's ``quantization: {method, bits}`` and how it loads.

Methods (weight-only; activations stay in the compute dtype, so capture and steering hooks
work unchanged on quantized models):

- ``torchao``: the model is loaded in its dtype and its linear layers are quantized after
  loading (``torchao.quantization.quantize_``). 8 bits: ``Int8WeightOnlyConfig`` (per-channel
  int8; runs on the CPU too). 4 bits: ``Int4WeightOnlyConfig`` with group size
  :data:`INT4_GROUP_SIZE` in torch's own tinygemm layout (``tile_packed_to_4d``), which needs
  CUDA (compute capability >= 8) and bfloat16 weights.
- ``bitsandbytes``: quantized while loading (``from_pretrained(quantization_config=
  BitsAndBytesConfig(...))``): LLM.int8 for 8 bits, NF4 with the compute dtype for 4 bits.
  Needs CUDA and the ``bitsandbytes`` package.

The output embedding (``lm_head``) stays unquantized with both methods (bitsandbytes' own
rule, followed by torchao here so the two methods quantize the same modules).

Parsing and checking need no torch import; :func:`quantize` and :func:`from_pretrained_kwargs`
import torch / torchao / transformers when called.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass
from typing import Any

from transforms.models.devices import DeviceError

logger = logging.getLogger(__name__)

METHODS = ("bitsandbytes", "torchao")
BITS = (8, 4)
KEYS = ("method", "bits")
#: torchao int4 quantization group (along the input dimension). 64 divides every projection
#: of the models at hand (SmolLM2's d_model 576 is not a multiple of the usual 128, and
#: torchao silently leaves such layers unquantized)
INT4_GROUP_SIZE = 64


class QuantizationError(DeviceError):
    """A quantization setting this machine cannot run (one line; builders exit 2)."""


@dataclass(frozen=True)
class QuantizationSpec:
    method: str  # one of METHODS
    bits: int  # one of BITS

    @property
    def label(self) -> str:
        """Short name used in version ids and manifests, e.g. ``torchao-int8``."""
        if self.method == "bitsandbytes":
            return f"bitsandbytes-{'int8' if self.bits == 8 else 'nf4'}"
        return f"torchao-int{self.bits}" + (f"-g{INT4_GROUP_SIZE}" if self.bits == 4 else "")

    @property
    def needs_cuda(self) -> bool:
        return self.method == "bitsandbytes" or self.bits == 4

    def __str__(self) -> str:
        return f"{self.method} {self.bits}-bit"


def parse_quantization(value: Any) -> QuantizationSpec | None:
    """``{method, bits}`` (or None) as a spec; ValueError whose message starts with the
    offending sub-key (``.method: ...``, ``.bits: ...``) or ``: ...`` for the mapping itself."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f": expected a mapping {{method, bits}}, got {type(value).__name__}")
    unknown = set(value) - set(KEYS)
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise ValueError(f": unknown key(s) {names} (allowed: {', '.join(sorted(KEYS))})")
    for key in KEYS:
        if key not in value:
            raise ValueError(f".{key}: missing")
    method = value["method"]
    if not isinstance(method, str) or method.strip().lower() not in METHODS:
        raise ValueError(f".method: unknown method {method!r} (known: {', '.join(METHODS)})")
    bits = value["bits"]
    if isinstance(bits, bool) or bits not in BITS:  # True == 1 and "8" != 8: both refused
        raise ValueError(f".bits: expected 8 or 4, got {bits!r}")
    return QuantizationSpec(method.strip().lower(), int(bits))


def check_supported(spec: QuantizationSpec | None, device: str, dtype: str | None = None, *,
                    variant: str | None = None) -> None:
    """Raise a one-line :class:`QuantizationError` when ``spec`` cannot run on ``device``
    (resolved, e.g. ``cpu``, ``cuda:0``) in ``dtype`` (the compute dtype, None = unchecked)."""
    if spec is None:
        return
    prefix = f"variant {variant!r}: " if variant else ""
    if spec.needs_cuda and not device.startswith("cuda"):
        raise QuantizationError(f"{prefix}{spec} needs a CUDA device; this run is on {device}")
    if spec.method == "torchao" and spec.bits == 4 and dtype is not None and dtype != "bfloat16":
        raise QuantizationError(f"{prefix}{spec} needs bfloat16 weights, not {dtype} (--dtype bfloat16)")
    if importlib.util.find_spec(spec.method) is None:  # the package is named like the method
        raise QuantizationError(f"{prefix}{spec} needs the {spec.method} package (pip install {spec.method})")


def from_pretrained_kwargs(spec: QuantizationSpec | None, torch_dtype: Any) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: a ``BitsAndBytesConfig`` for bitsandbytes,
    nothing for torchao (it quantizes after loading, :func:`quantize`)."""
    if spec is None or spec.method != "bitsandbytes":
        return {}
    from transformers import BitsAndBytesConfig

    if spec.bits == 8:
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)
    return {"quantization_config": config}


def import_torchao_quietly() -> Any:
    """``torchao.quantization`` (None when torchao is not installed), imported without the
    noise its import logs on a CPU machine (missing CUDA kernels and triton, a torch pytree
    deprecation): nothing we use needs those. transformers imports torchao on its own when
    it is installed (its quantizer registry), so :func:`~transforms.models.load_model` calls
    this first for every model: a later import is then silent."""
    if "torchao.quantization" in sys.modules:
        return sys.modules["torchao.quantization"]
    if importlib.util.find_spec("torchao") is None:
        return None
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao.quantization as tq
        # transformers' quantizer registry imports more of torchao (prototype formats, more
        # warnings): let it do so now, silenced
        import transformers.quantizers.auto  # noqa: F401
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return tq


def quantize(model: Any, spec: QuantizationSpec) -> Any:
    """Quantize ``model``'s linear layers in place with torchao (the output embedding is
    kept); returns the model. bitsandbytes models are quantized while loading instead."""
    if spec.method != "torchao":
        raise ValueError(f"{spec} is applied while loading (from_pretrained_kwargs), not by quantize()")
    import torch

    tq = import_torchao_quietly()
    if tq is None:
        raise QuantizationError(f"{spec} needs the torchao package (pip install torchao)")
    if spec.bits == 8:
        config = tq.Int8WeightOnlyConfig()
    else:
        config = tq.Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d")
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def wanted(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module is not output

    tq.quantize_(model, config, filter_fn=wanted)
    linears = [m for m in model.modules() if wanted(m, "")]
    skipped = sum(not type(m.weight).__module__.startswith("torchao") for m in linears)
    if skipped:  # torchao leaves a layer whose shape does not fit the config as it was
        logger.warning("%s: %d of %d linear layers left unquantized (shape not divisible by the group size)",
                       spec.label, skipped, len(linears))
    logger.info("%s: %d linear layers quantized", spec.label, len(linears) - skipped)
    return model
