"""Reading weight changes as residual-stream directions: the final norm, the logit lens and the
top singular directions of a weight diff.

- :class:`FinalNorm` / :func:`read_final_norm`: the model's final norm as it applies it:
  RMSNorm ``x/rms(x)·w`` (Llama, SmolLM2, Qwen, Mistral), Gemma's ``x/rms(x)·(1+w)``,
  LayerNorm ``(x−mean)/std·w + b`` (GPT-2, GPT-NeoX, Phi). The kind comes from the config
  (``gemma*`` model types; ``rms_norm_eps`` means RMSNorm; ``layer_norm_epsilon`` /
  ``layer_norm_eps`` without it means LayerNorm); weight and bias from the checkpoint.
- :func:`logit_lens`: top tokens of ``unembed @ norm(v)`` both ways. LayerNorm's bias is
  added as the model adds it, so the lens reads what the model would emit from ``v``.
- :func:`top_singular_directions`: the top-k left singular vectors of ``ΔW [d_out, d_in]``
  (the output side: for ``o_proj`` and ``down_proj``, what the change can write into the
  residual stream) with their singular values, each sign-fixed so its largest-magnitude
  entry is positive (an SVD's signs are arbitrary; this keeps them stable across runs and
  between an adapter and its merged checkpoint).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from transforms.diffing.tensor_reader import TensorReader

_EMBED = ("embed_tokens.weight", "wte.weight")
_UNEMBED = ("lm_head.weight",)
_FINAL_NORM = ("model.norm.weight", "norm.weight", "final_layernorm.weight", "transformer.ln_f.weight",
               "ln_f.weight")
_IN_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.\d+\.")
NORM_KINDS = ("rms", "gemma", "layernorm", "none")


def unembedding_name(reader: TensorReader) -> str:
    """``lm_head.weight`` when the checkpoint has one, else the (tied) input embedding."""
    for suffixes in (_UNEMBED, _EMBED):
        for name in reader.names:
            if name.endswith(suffixes):
                return name
    raise ValueError(f"{reader.folder}: no lm_head or embedding matrix found")


def final_norm_name(reader: TensorReader) -> str | None:
    """The final norm's weight: a known name, also under a wrapper prefix
    (``language_model.model.norm.weight``), never a per-layer norm."""
    exact = next((n for n in reader.names if n in _FINAL_NORM), None)
    if exact is not None:
        return exact
    return next((n for n in reader.names if n.endswith(tuple("." + x for x in _FINAL_NORM))
                 and not _IN_LAYER.search(n)), None)


def norm_spec(text_config: Any) -> tuple[str, float]:
    """``(kind, eps)`` of the final norm from a (text) config; see the module docstring."""
    model_type = str(getattr(text_config, "model_type", "") or "")
    rms_eps = getattr(text_config, "rms_norm_eps", None)
    ln_eps = getattr(text_config, "layer_norm_epsilon", None) or getattr(text_config, "layer_norm_eps", None)
    if model_type.startswith("gemma"):
        return "gemma", float(rms_eps if rms_eps is not None else 1e-6)
    if rms_eps is not None:
        return "rms", float(rms_eps)
    if ln_eps is not None:
        return "layernorm", float(ln_eps)
    return "rms", 1e-6


@dataclass(frozen=True)
class FinalNorm:
    """The final norm applied to one ``[d_model]`` vector, in float64."""

    kind: str
    eps: float
    weight: Any = None  # torch.Tensor [d_model] | None
    bias: Any = None  # LayerNorm only

    def apply(self, vector: torch.Tensor) -> torch.Tensor:
        x = vector.double()
        if self.kind == "none":
            return x
        if self.kind == "layernorm":
            centered = x - x.mean()
            out = centered / (centered.pow(2).mean() + self.eps).sqrt()
        else:
            out = x / (x.pow(2).mean() + self.eps).sqrt()
        if self.weight is not None:
            w = self.weight.double()
            out = out * (1.0 + w) if self.kind == "gemma" else out * w
        if self.kind == "layernorm" and self.bias is not None:
            out = out + self.bias.double()
        return out


def read_final_norm(reader: TensorReader, config: Any) -> FinalNorm:
    """The checkpoint's final norm (kind and eps from ``config``; without a norm weight in the
    checkpoint, no norm: the lens is then the plain unembedding)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind, eps = norm_spec(text)
    name = final_norm_name(reader)
    if name is None:
        return FinalNorm("none", eps)
    bias_name = name.removesuffix(".weight") + ".bias"
    bias = reader.read(bias_name) if kind == "layernorm" and bias_name in reader else None
    return FinalNorm(kind, eps, reader.read(name), bias)


_WORD = re.compile(r"^\s?[A-Za-z][A-Za-z'\-]+$")


def token_ok(text: str) -> bool:
    """The rare/garbage filter: a word-like token (optional leading space, ≥ 2 letters)."""
    return bool(_WORD.match(text))


def logit_lens(vector: torch.Tensor, unembed: torch.Tensor, norm: FinalNorm, decode: Any, k: int = 20,
               filter_tokens: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Top-``k`` tokens of ``unembed @ norm(vector)`` in both directions (``up``: largest
    logits, ``down``: most negative), each ``{"token_id", "token", "logit"}``; with
    ``filter_tokens`` only word-like tokens (:func:`token_ok`) are kept."""
    return logit_lens_many([vector], unembed, norm, decode, k, filter_tokens)[0]


def logit_lens_many(vectors: Sequence[torch.Tensor], unembed: torch.Tensor, norm: FinalNorm, decode: Any,
                    k: int = 20, filter_tokens: bool = True) -> list[dict[str, list[dict[str, Any]]]]:
    """:func:`logit_lens` of many vectors with one pass over the unembedding (its float64
    row chunks are what costs, not the product)."""
    import torch

    if not vectors:
        return []
    normed_DN = torch.stack([norm.apply(v) for v in vectors], dim=1)
    step = max(1, (1 << 22) // max(1, unembed.shape[1]))  # float64 in row chunks: no full copy
    logits_VN = torch.cat([unembed[lo:lo + step].double() @ normed_DN for lo in range(0, unembed.shape[0], step)])
    cache: dict[int, str] = {}
    out = []
    for logits in logits_VN.T:
        order = torch.argsort(logits, descending=True)
        lens = {}
        for direction, ids in (("up", order), ("down", order.flip(0))):
            picked = []
            for token_id in ids.tolist():
                text = cache[token_id] if token_id in cache else cache.setdefault(token_id, decode(token_id))
                if filter_tokens and not token_ok(text):
                    continue
                picked.append({"token_id": int(token_id), "token": text, "logit": float(logits[token_id])})
                if len(picked) == k:
                    break
            lens[direction] = picked
        out.append(lens)
    return out


def top_singular_directions(delta_OI: torch.Tensor, k: int, rel_tol: float = 1e-6,
                            chunk_elems: int = 1 << 22) -> list[tuple[float, float, torch.Tensor]]:
    """``(σ_i, σ_i²/‖ΔW‖²_F, u_i)`` for the top ``k`` left singular vectors of ``delta_OI``,
    largest first, sign-fixed (largest-magnitude entry positive). Directions with
    ``σ ≤ rel_tol·σ_max`` are dropped (a rank-r adapter has r, not k).

    Computed from the smaller Gram matrix in float64 (``ΔW ΔWᵀ`` accumulated over column
    chunks, or ``ΔWᵀ ΔW`` then ``u = ΔW v / σ``): memory of ``min(d_out, d_in)²``, not a
    float64 copy of ΔW, and exact enough for the leading directions."""
    import scipy.linalg
    import torch

    d_out, d_in = delta_OI.shape
    if k <= 0:
        return []
    if d_out <= d_in:
        gram = torch.zeros(d_out, d_out, dtype=torch.float64)
        step = max(1, chunk_elems // max(1, d_out))
        for lo in range(0, d_in, step):
            block = delta_OI[:, lo:lo + step].double()
            gram += block @ block.T
    else:
        gram = torch.zeros(d_in, d_in, dtype=torch.float64)
        step = max(1, chunk_elems // max(1, d_in))
        for lo in range(0, d_out, step):
            block = delta_OI[lo:lo + step].double()
            gram += block.T @ block
    total = float(torch.trace(gram))  # = Σσ²: the energy share needs no other eigenvalue
    if total <= 0:
        return []
    n = gram.shape[0]
    top = min(k, n)
    # only the top eigenpairs (LAPACK's subset driver): a full eigh of d_model² costs far more
    evals_np, evecs_np = scipy.linalg.eigh(gram.numpy(), subset_by_index=[n - top, n - 1])
    evals, evecs = torch.from_numpy(evals_np), torch.from_numpy(evecs_np)  # ascending
    sigma_max = float(evals[-1].clamp(min=0).sqrt())
    out = []
    for i in range(1, top + 1):
        sigma = float(evals[-i].clamp(min=0).sqrt())
        if sigma <= rel_tol * sigma_max:
            break
        vec = evecs[:, -i]
        if d_out > d_in:  # v_i -> u_i = ΔW v_i / σ_i, in row chunks
            step = max(1, chunk_elems // max(1, d_in))
            vec = torch.cat([delta_OI[lo:lo + step].double() @ vec for lo in range(0, d_out, step)]) / sigma
        vec = vec * torch.sign(vec[vec.abs().argmax()])
        out.append((sigma, sigma ** 2 / total, vec))
    return out
