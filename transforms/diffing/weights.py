"""Weight-space comparison of two variants (seed 001 phase 3), streaming one tensor at a time.

- :func:`diff_norms`: per parameter ``‖θ_B − θ_A‖_F``, ``‖θ_A‖_F`` and their ratio, with the
  decoder layer and component (``q_proj``, ``down_proj``, ``input_layernorm``, ...) parsed
  from the name; embeddings, unembedding and the final norm have ``layer = None``.
- B is a full checkpoint (:class:`~transforms.diffing.tensor_reader.TensorReader`) or a LoRA
  adapter over A (:class:`LoraAdapter`): ``ΔW = (α/r)·B·A`` (``α/√r`` with rsLoRA) computed
  per module, never merged into the model.
- Residual-facing directions, collected on the same pass: per layer the mean column of
  ``ΔW_o_proj + ΔW_down_proj`` (what the change adds for a constant input of 1/d_in: a
  crude summary, kept for comparison), and the top-k left singular vectors of each of
  ``ΔW_o_proj`` and ``ΔW_down_proj`` (what the change can write at all, ranked by gain;
  :func:`transforms.diffing.directions.top_singular_directions`). The logit lens and the
  final norm are in :mod:`transforms.diffing.directions`; :func:`cosine_by_layer` and
  :func:`random_baseline` align directions with trait vectors.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transforms.diffing.tensor_reader import TensorReader
from transforms.diffing.directions import top_singular_directions

if TYPE_CHECKING:
    import torch

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)\.weight$")
RESIDUAL_WRITERS = ("o_proj", "down_proj")


def parse_param(name: str) -> tuple[int | None, str]:
    """``(layer, component)``: ``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "q_proj")``;
    ``model.embed_tokens.weight`` -> ``(None, "embed_tokens")``."""
    m = _LAYER_RE.search(name)
    if m:
        return int(m.group(1)), m.group(2).split(".")[-1]
    stem = name.removesuffix(".weight").removesuffix(".bias")
    return None, stem.split(".")[-1]


class AdapterError(ValueError):
    """An adapter folder this analysis cannot read faithfully (one line, naming the folder)."""


def pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """The value of the first ``rank_pattern`` / ``alpha_pattern`` key that matches ``module``,
    as peft resolves it (``peft.utils.other.get_pattern_key``): the key is a regex that must
    match the whole name or a suffix starting after a ``.``, so ``o_proj`` matches
    ``model.layers.0.self_attn.o_proj`` but ``proj`` does not."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class LoraAdapter:
    """A PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
    as per-parameter deltas ``ΔW = scale · B @ A`` over the base model's weights.

    Adapters whose change is not ``scale·B@A`` on linear weights are refused
    (:class:`AdapterError`) rather than read partially: DoRA (a learned per-column magnitude
    renormalizes the merged weight), embedding LoRA (``lora_embedding_A/B``, and the full
    embedding peft saves beside them), and any other tensor (``lora_B.bias``,
    ``modules_to_save`` copies)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        config_path = folder / "adapter_config.json"
        if not config_path.exists():
            raise AdapterError(f"{folder}: no adapter_config.json (not a PEFT adapter folder)")
        config = json.loads(config_path.read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise AdapterError(f"{folder}: peft_type {config.get('peft_type')!r} is not LORA")
        if config.get("use_dora"):
            raise AdapterError(f"{folder}: a DoRA adapter (use_dora: true); its magnitude vectors change ΔW "
                               "beyond (α/r)·B·A, which this analysis does not compute")
        self.folder, self.config = folder, config
        self.reader = TensorReader(folder)
        self._modules: dict[str, tuple[str, str]] = {}
        for name in self.reader.names:
            if "lora_embedding_" in name:
                raise AdapterError(f"{folder}: embedding LoRA ({name}) is not supported; only linear-layer "
                                   "lora_A/lora_B weights are read")
            if "lora_magnitude_vector" in name:
                raise AdapterError(f"{folder}: DoRA magnitude vector {name} (a DoRA adapter) is not supported")
            if name.endswith(".lora_A.weight"):
                module = name.removesuffix(".lora_A.weight")
                base = re.sub(r"^base_model\.model\.", "", module) + ".weight"
                self._modules[base] = (name, module + ".lora_B.weight")
            elif not name.endswith(".lora_B.weight"):
                raise AdapterError(f"{folder}: tensor {name} is not a LoRA A/B weight; only lora_A/lora_B "
                                   "weights of linear layers are read")

    def scale(self, base_name: str) -> float:
        cfg = self.config
        module = base_name.removesuffix(".weight")
        r = pattern_value(cfg.get("rank_pattern"), module, cfg["r"])
        alpha = pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r))
        return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    def delta(self, base_name: str) -> torch.Tensor | None:
        """``ΔW`` for the base parameter ``base_name``, or None when the adapter leaves it alone."""
        names = self._modules.get(base_name)
        if names is None:
            return None
        a, b = self.reader.read(names[0]), self.reader.read(names[1])
        delta = (b.double() @ a.double()) * self.scale(base_name)
        if self.config.get("fan_in_fan_out"):
            delta = delta.T
        return delta.float()

    @property
    def targets(self) -> list[str]:
        return sorted(self._modules)


def iter_deltas(base: TensorReader, other: TensorReader | LoraAdapter) -> Iterator[tuple[str, Any, Any]]:
    """``(name, θ_A, ΔW)`` for every parameter of A, one at a time (ΔW None: unchanged by an
    adapter). Parameters with different shapes in A and B are an error."""
    for name in base.names:
        if isinstance(other, LoraAdapter):
            delta = other.delta(name)
            yield name, base.read(name), delta
            continue
        if name not in other:
            continue
        theta_a = base.read(name)
        theta_b = other.read(name)
        if theta_a.shape != theta_b.shape:
            raise ValueError(f"{name}: shape {tuple(theta_a.shape)} in A but {tuple(theta_b.shape)} in B")
        theta_b -= theta_a
        yield name, theta_a, theta_b


def frobenius(tensor: torch.Tensor, chunk_elems: int = 1 << 22) -> float:
    """``‖t‖_F`` accumulated in float64 over row chunks: no full float64 copy of a large
    matrix (an embedding's copy would double the analysis' peak memory)."""
    flat = tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 1 else tensor.reshape(1, -1)
    rows = max(1, chunk_elems // max(1, flat.shape[1]))
    total = 0.0
    for lo in range(0, flat.shape[0], rows):
        total += float(flat[lo:lo + rows].double().pow(2).sum())
    return total ** 0.5


def _residual_column(delta: torch.Tensor) -> torch.Tensor:
    return delta.double().mean(dim=1)  # [d_model]: ΔW @ (1/d_in)·𝟙


SingularDirections = dict[tuple[int, str], list[tuple[float, float, "torch.Tensor"]]]


def diff_norms(base: TensorReader, other: TensorReader | LoraAdapter, singular_k: int = 0
               ) -> tuple[list[dict[str, Any]], dict[int, torch.Tensor], SingularDirections]:
    """Norm rows for every parameter; per layer the mean-column direction of the residual
    writers; and per ``(layer, writer)`` the top ``singular_k`` singular directions
    ``(σ, energy share, u)`` (none for an unchanged matrix). One pass, one tensor at a time."""
    rows: list[dict[str, Any]] = []
    directions: dict[int, Any] = {}
    singular: SingularDirections = {}
    for name, theta_a, delta in iter_deltas(base, other):
        layer, component = parse_param(name)
        base_norm = frobenius(theta_a)
        diff = 0.0 if delta is None else frobenius(delta)
        rows.append({"param": name, "layer": layer, "component": component, "shape": list(theta_a.shape),
                     "diff_norm": diff, "base_norm": base_norm,
                     "relative": diff / base_norm if base_norm > 0 else None})
        if delta is not None and layer is not None and component in RESIDUAL_WRITERS and delta.ndim == 2:
            column = _residual_column(delta)
            directions[layer] = directions[layer] + column if layer in directions else column
            if singular_k > 0 and diff > 0:
                found = top_singular_directions(delta, singular_k)
                if found:
                    singular[(layer, component)] = found
    return rows, directions, singular


def cosine_by_layer(directions: Mapping[int, Any], vectors_LD: Any, layers: Sequence[int]) -> dict[int, float]:
    """``cos(direction_L, vector_L)`` for the layers both have (vectors rows in ``layers`` order)."""
    from transforms.stats import cosine

    return {int(layer): float(cosine(directions[layer], vectors_LD[row]))
            for row, layer in enumerate(layers) if layer in directions}


def random_baseline(direction: Any, observed: float, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """How aligned ``n`` seeded random unit directions are with ``direction``: the mean and
    95th percentile of ``|cos|``, and ``p_random`` = share at least as aligned as ``|observed|``
    (the chance level a trait alignment must beat; ≈ sqrt(2/(π·d)) for the mean)."""
    import numpy as np

    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    samples = np.random.default_rng(seed).standard_normal((n, d.shape[0]))
    cos = np.abs(samples @ d) / np.linalg.norm(samples, axis=1)
    return {"random_abs_cos_mean": float(cos.mean()), "random_abs_cos_p95": float(np.quantile(cos, 0.95)),
            "p_random": float((cos >= abs(observed)).mean())}
