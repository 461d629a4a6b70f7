"""Sparse autoencoders (SAEs) for inference, and decomposing a trait vector into SAE features.

One class covers the formats researchers publish (loaders in ``sae_formats``):

    encode(x) = act((x * input_scale - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)
    decode(f) = (f @ W_dec + b_dec) / input_scale

with ``act`` one of ``relu``; ``jumprelu`` (``relu(pre) * (pre > threshold)``, Gemma Scope and
SAELens); ``topk`` (per sample: the k largest pre-activations, relu'd, the rest zero, SAELens).
``input_scale`` is SAELens' "expected_average_only_in" factor (sqrt(d) / E||x||): the SAE was
trained on scaled activations, so inputs are scaled on the way in and outputs back on the way out,
and the caller always speaks in the model's own units.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transforms.dictionaries.errors import DictionaryError

log = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "jumprelu", "topk")


class SAEFormatError(DictionaryError):
    """An SAE file or object that cannot be read as an SAE; the message is one line naming it."""


@dataclass(frozen=True)
class HookInfo:
    """Where an SAE reads the model, in this project's convention when it maps onto it.

    ``layer`` is the decoder block index k (residual = output of block k = hidden_states[k+1]);
    ``component`` is ``residual`` / ``attn_out`` / ``mlp_out`` when the SAE's input is the tensor
    our capture calls that, else None (e.g. attention ``hook_z``, ``resid_mid``).
    """

    layer: int | None = None
    component: str | None = None
    hook_name: str | None = None
    model_name: str | None = None


def _as_f32(a: Any) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32).detach().clone()


class SparseAutoencoder(nn.Module):
    """An SAE: W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d] (see the module docstring)."""

    def __init__(
        self,
        W_enc: Any,
        b_enc: Any,
        W_dec: Any,
        b_dec: Any,
        *,
        activation: str = "relu",
        threshold: Any = None,
        k: int | None = None,
        apply_b_dec_to_input: bool = False,
        input_scale: float = 1.0,
        hook: HookInfo | None = None,
    ) -> None:
        super().__init__()
        W_enc, b_enc, W_dec, b_dec = (_as_f32(a) for a in (W_enc, b_enc, W_dec, b_dec))
        if W_enc.ndim != 2:
            raise ValueError(f"W_enc must be [d, F], got shape {tuple(W_enc.shape)}")
        d, F = W_enc.shape
        for name, t, shape in (("b_enc", b_enc, (F,)), ("W_dec", W_dec, (F, d)), ("b_dec", b_dec, (d,))):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} for W_enc {(d, F)}, got {tuple(t.shape)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not (math.isfinite(input_scale) and input_scale > 0):
            raise ValueError(f"input_scale must be a positive number, got {input_scale}")
        self.W_enc, self.b_enc = nn.Parameter(W_enc), nn.Parameter(b_enc)
        self.W_dec, self.b_dec = nn.Parameter(W_dec), nn.Parameter(b_dec)
        if activation == "jumprelu":
            if threshold is None:
                raise ValueError("activation 'jumprelu' needs a threshold [F]")
            threshold = _as_f32(threshold)
            if threshold.ndim == 0:
                threshold = threshold.expand(F).clone()
            if tuple(threshold.shape) != (F,):
                raise ValueError(f"threshold must have shape ({F},), got {tuple(threshold.shape)}")
            self.threshold = nn.Parameter(threshold)
        else:
            self.register_parameter("threshold", None)
        if activation == "topk":
            if k is None or not 0 < int(k) <= F:
                raise ValueError(f"activation 'topk' needs 0 < k <= {F}, got {k}")
            k = int(k)
        self.activation, self.k = activation, k
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.input_scale = float(input_scale)
        self.hook = hook or HookInfo()

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def dict_size(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def layer(self) -> int | None:
        return self.hook.layer

    def pre_activations(self, x_BD: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x_BD).to(self.W_enc.dtype) * self.input_scale
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Feature activations f [..., F] for activations x [..., d] in model units."""
        pre = self.pre_activations(x_BD)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d] in model units."""
        return (torch.as_tensor(f_BF).to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.input_scale

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_BD))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, dict_size={self.dict_size}, activation={self.activation}"
                + (f", k={self.k}" if self.k else "") + f", layer={self.layer}")


def check_sae_width(sae: SparseAutoencoder, d_model: int, where: str) -> None:
    """Refuse an SAE whose input width is not the model's d_model, in one line."""
    if sae.d_model != int(d_model):
        raise SAEFormatError(f"{where}: the SAE reads d_model={sae.d_model} but the model has d_model={d_model}")


# ---- decomposing a vector ------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureScore:
    """One feature in a decomposition. ``cosine``: signed cosine of the vector with the feature's
    decoder row; ``activation``: the feature's activation when the (scaled) vector is encoded;
    ``score``: what the ranking sorted by (|cosine| or activation * ||decoder row||)."""

    feature: int
    rank_by: str  # "cosine" | "encoding"
    rank: int
    cosine: float
    activation: float
    score: float


@dataclass(frozen=True)
class VectorDecomposition:
    """A vector read through an SAE's dictionary.

    ``explained_fraction`` = ||P v||^2 / ||v||^2 with P the least-squares projection onto the span
    of the top-n decoder rows by cosine (1 - relative squared residual); ``coefficients`` are that
    fit's weights, aligned with ``by_cosine`` (v ~ sum_i c_i * W_dec[feature_i]).
    """

    by_cosine: tuple[FeatureScore, ...]
    by_encoding: tuple[FeatureScore, ...]
    explained_fraction: float
    coefficients: tuple[float, ...]
    vector_norm: float
    scale: float


def decompose_vector(
    sae: SparseAutoencoder, vector_D: Any, top_n: int = 10, scale: float | None = None
) -> VectorDecomposition:
    """Top features of ``vector_D`` two ways: by decoder cosine, and by encoding the vector.

    Encoding treats the vector as an activation: it is rescaled to norm ``scale`` (default: its
    own norm) and passed through ``sae.encode`` with biases and thresholds as they are, because
    that is the only input distribution the encoder was fitted on. Pass a typical residual norm at
    the SAE's layer as ``scale`` when the vector is unit-norm or a small difference of means;
    features whose threshold the scaled vector does not clear stay at zero and are not listed.
    """
    import numpy as np

    v = np.asarray(torch.as_tensor(vector_D).detach().cpu().double().numpy()).reshape(-1)
    if v.shape[0] != sae.d_model:
        raise ValueError(f"vector has {v.shape[0]} entries but the SAE reads d_model={sae.d_model}")
    norm = float(np.linalg.norm(v))
    if not norm > 0:
        raise ValueError("cannot decompose a zero vector")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    top_n = min(top_n, sae.dict_size)
    scale = norm if scale is None else float(scale)
    W_dec = sae.W_dec.detach().cpu().double().numpy()
    row_norms = np.linalg.norm(W_dec, axis=1)
    cos = (W_dec @ v) / (np.maximum(row_norms, 1e-30) * norm)
    with torch.no_grad():
        x = torch.as_tensor(v * (scale / norm), dtype=torch.float32)[None]
        acts = sae.encode(x)[0].double().cpu().numpy()

    order = np.argsort(-np.abs(cos), kind="stable")[:top_n]
    by_cos = tuple(FeatureScore(int(i), "cosine", r, float(cos[i]), float(acts[i]), float(abs(cos[i])))
                   for r, i in enumerate(order))
    contribution = acts * row_norms
    live = np.flatnonzero(contribution > 0)
    enc_order = live[np.argsort(-contribution[live], kind="stable")][:top_n]
    by_enc = tuple(FeatureScore(int(i), "encoding", r, float(cos[i]), float(acts[i]), float(contribution[i]))
                   for r, i in enumerate(enc_order))

    basis = W_dec[order].T  # [d, n]
    coef, *_ = np.linalg.lstsq(basis, v, rcond=None)
    residual = v - basis @ coef
    explained = float(1.0 - (residual @ residual) / (norm * norm))
    return VectorDecomposition(by_cos, by_enc, explained, tuple(float(c) for c in coef), norm, scale)


# ---- a one-model crosscoder is an SAE --------------------------------------------------------


def sae_from_crosscoder(
    crosscoder_like: Any, *, input_scale: float | None = None, threshold_on_scaled_code: bool = True
) -> SparseAutoencoder:
    """The SAE equivalent to a one-model crosscoder in the ``dictionary_learning`` layout.

    Reads ``encoder.weight`` [1, d, F], ``encoder.bias`` [F], ``decoder.weight`` [1, F, d],
    ``decoder.bias`` [1, d], and optional ``k`` / ``threshold`` buffers (BatchTopK). Without ``k``:
    relu. With ``k`` and a threshold >= 0: jumprelu, which is how BatchTopK is meant to run at
    inference. dictionary_learning compares the threshold with the decoder-norm-scaled code
    f * ||d_i||, i.e. pre > t / ||d_i|| (``threshold_on_scaled_code``; False compares with f).
    With ``k`` and no usable threshold (< 0: never calibrated): per-sample top-k on the
    pre-activations, an approximation of batch top-k, which has no per-sample equivalent.
    ``input_scale``: default the crosscoder's own ``input_scale`` buffer when it has one, else 1.
    """
    try:
        W_enc = crosscoder_like.encoder.weight.detach()
        b_enc = crosscoder_like.encoder.bias.detach()
        W_dec = crosscoder_like.decoder.weight.detach()
        b_dec = crosscoder_like.decoder.bias.detach()
    except AttributeError as exc:
        raise SAEFormatError(f"crosscoder: missing {exc.name or exc} (need encoder/decoder weight and bias)") from None
    if W_enc.ndim != 3 or W_dec.ndim != 3 or W_enc.shape[0] != 1 or W_dec.shape[0] != 1:
        raise SAEFormatError(f"crosscoder: expected one model, encoder.weight [1, d, F] and decoder.weight [1, F, d], "
                             f"got {tuple(W_enc.shape)} and {tuple(W_dec.shape)}")
    W_enc, W_dec, b_enc, b_dec = W_enc[0], W_dec[0], b_enc.reshape(-1), b_dec.reshape(-1)
    k = getattr(crosscoder_like, "k", None)
    threshold = getattr(crosscoder_like, "threshold", None)
    if input_scale is None:
        own = getattr(crosscoder_like, "input_scale", None)
        input_scale = 1.0 if own is None else float(torch.as_tensor(own).reshape(-1)[0])
    kwargs: dict[str, Any] = {}
    if k is not None:
        k = int(torch.as_tensor(k).item())
        t = None if threshold is None else torch.as_tensor(threshold, dtype=torch.float32).detach().reshape(-1)
        if t is not None and bool((t >= 0).all()):
            if threshold_on_scaled_code:
                t = t / W_dec.float().norm(dim=1).clamp_min(1e-30)
            kwargs = {"activation": "jumprelu", "threshold": t.expand(W_enc.shape[1])}
        else:
            log.info("crosscoder has k=%d but no calibrated threshold: per-sample top-k", k)
            kwargs = {"activation": "topk", "k": k}
    try:
        return SparseAutoencoder(W_enc, b_enc, W_dec, b_dec, input_scale=input_scale, **kwargs)
    except ValueError as exc:
        raise SAEFormatError(f"crosscoder: {exc}") from None
