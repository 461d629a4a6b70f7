"""Weight-space comparison of two variants (seed 001 phase 3), streaming one tensor at a time.

- :func:`diff_norms`: per parameter ``‖θ_B − θ_A‖_F``, ``‖θ_A‖_F`` and their ratio, with the
  decoder layer and component (``q_proj``, ``down_proj``, ``input_layernorm``, ...) parsed
  from the name; embeddings, unembedding and the final norm have ``layer = None``.
- B is a full checkpoint (:class:`~transforms.safetensors_stream.TensorReader`) or a LoRA
  adapter over A (:class:`LoraAdapter`): ``ΔW = (α/r)·B·A`` (``α/√r`` with rsLoRA) computed
  per module, never merged into the model.
- :func:`residual_directions`: per layer, the residual-facing change, ``mean column of
  ΔW_o_proj + mean column of ΔW_down_proj`` (each ``[d_model]``: what the change adds to the
  residual stream for an input of all ones / d_in); :func:`logit_lens` reads such a vector
  through the final norm and the unembedding; :func:`cosine_by_layer` aligns it with trait
  vectors.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transforms.safetensors_stream import TensorReader

if TYPE_CHECKING:
    import torch

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)\.weight$")
RESIDUAL_WRITERS = ("o_proj", "down_proj")
_EMBED = ("embed_tokens.weight", "wte.weight")
_UNEMBED = ("lm_head.weight",)
_FINAL_NORM = ("model.norm.weight", "norm.weight", "final_layernorm.weight", "transformer.ln_f.weight")


def parse_param(name: str) -> tuple[int | None, str]:
    """``(layer, component)``: ``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "q_proj")``;
    ``model.embed_tokens.weight`` -> ``(None, "embed_tokens")``."""
    m = _LAYER_RE.search(name)
    if m:
        return int(m.group(1)), m.group(2).split(".")[-1]
    stem = name.removesuffix(".weight").removesuffix(".bias")
    return None, stem.split(".")[-1]


class LoraAdapter:
    """A PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
    as per-parameter deltas ``ΔW = scale · B @ A`` over the base model's weights."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        config_path = folder / "adapter_config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{folder}: no adapter_config.json (not a PEFT adapter folder)")
        config = json.loads(config_path.read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{folder}: peft_type {config.get('peft_type')!r} is not LORA")
        self.folder, self.config = folder, config
        self.reader = TensorReader(folder)
        self._modules: dict[str, tuple[str, str]] = {}
        for name in self.reader.names:
            if name.endswith(".lora_A.weight"):
                module = name.removesuffix(".lora_A.weight")
                base = re.sub(r"^base_model\.model\.", "", module) + ".weight"
                self._modules[base] = (name, module + ".lora_B.weight")

    def scale(self, base_name: str) -> float:
        cfg = self.config
        module = base_name.removesuffix(".weight")
        r = next((v for k, v in (cfg.get("rank_pattern") or {}).items() if module.endswith(k)), cfg["r"])
        alpha = next((v for k, v in (cfg.get("alpha_pattern") or {}).items() if module.endswith(k)),
                     cfg.get("lora_alpha", r))
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


def diff_norms(base: TensorReader, other: TensorReader | LoraAdapter
               ) -> tuple[list[dict[str, Any]], dict[int, torch.Tensor]]:
    """Norm rows for every parameter, and the per-layer residual-facing directions
    (:func:`residual_directions`) collected on the same pass."""
    rows: list[dict[str, Any]] = []
    directions: dict[int, Any] = {}
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
    return rows, directions


def unembedding_name(reader: TensorReader) -> str:
    """``lm_head.weight`` when the checkpoint has one, else the (tied) input embedding."""
    for name in reader.names:
        if name.endswith(_UNEMBED):
            return name
    for name in reader.names:
        if name.endswith(_EMBED):
            return name
    raise ValueError(f"{reader.folder}: no lm_head or embedding matrix found")


def final_norm_name(reader: TensorReader) -> str | None:
    return next((n for n in reader.names if n in _FINAL_NORM), None)


def apply_final_norm(vector: torch.Tensor, weight: torch.Tensor | None, kind: str, eps: float) -> torch.Tensor:
    """RMSNorm of one vector as the model applies it: ``x/rms(x)·w`` (``llama``-style) or
    ``x/rms(x)·(1+w)`` (``gemma``); ``kind="none"``: unchanged."""
    x = vector.double()
    if kind == "none" or weight is None:
        return x
    normed = x / (x.pow(2).mean() + eps).sqrt()
    return normed * (1.0 + weight.double()) if kind == "gemma" else normed * weight.double()


def norm_kind(model_type: str) -> str:
    return "gemma" if model_type.startswith("gemma") else "llama"


_WORD = re.compile(r"^\s?[A-Za-z][A-Za-z'\-]+$")


def token_ok(text: str) -> bool:
    """The rare/garbage filter: a word-like token (optional leading space, ≥ 2 letters)."""
    return bool(_WORD.match(text))


def logit_lens(vector: torch.Tensor, unembed: torch.Tensor, norm_weight: torch.Tensor | None, kind: str,
               eps: float, decode: Any, k: int = 20, filter_tokens: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Top-``k`` tokens of ``unembed @ norm(vector)`` in both directions (``up``: largest
    logits, ``down``: most negative), each ``{"token_id", "token", "logit"}``; with
    ``filter_tokens`` only word-like tokens (:func:`token_ok`) are kept."""
    import torch

    normed = apply_final_norm(vector, norm_weight, kind, eps)
    step = max(1, (1 << 22) // max(1, unembed.shape[1]))  # float64 in row chunks: no full copy
    logits = torch.cat([unembed[lo:lo + step].double() @ normed for lo in range(0, unembed.shape[0], step)])
    out = {}
    for direction, order in (("up", torch.argsort(logits, descending=True)), ("down", torch.argsort(logits))):
        picked = []
        for token_id in order.tolist():
            text = decode(token_id)
            if filter_tokens and not token_ok(text):
                continue
            picked.append({"token_id": int(token_id), "token": text, "logit": float(logits[token_id])})
            if len(picked) == k:
                break
        out[direction] = picked
    return out


def cosine_by_layer(directions: Mapping[int, Any], vectors_LD: Any, layers: Sequence[int]) -> dict[int, float]:
    """``cos(direction_L, vector_L)`` for the layers both have (vectors rows in ``layers`` order)."""
    import numpy as np

    out = {}
    for row, layer in enumerate(layers):
        if layer not in directions:
            continue
        d = np.asarray(directions[layer], dtype=np.float64)
        v = np.asarray(vectors_LD[row], dtype=np.float64)
        denom = np.linalg.norm(d) * np.linalg.norm(v)
        out[int(layer)] = float(d @ v / denom) if denom > 0 else float("nan")
    return out


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
