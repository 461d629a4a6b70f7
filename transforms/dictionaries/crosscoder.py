"""The crosscoder: one encoder over several models' activations, one decoder per model.

Parameters and buffers follow science-of-finetuning/crosscoder_learning
(``dictionary_learning/dictionary.py``: ``CrossCoder`` / ``BatchTopKCrossCoder``) key for key,
so state dicts load both ways with ``strict=True``:

- ``encoder.weight`` [n_models, d, F], ``encoder.bias`` [F]
- ``decoder.weight`` [n_models, F, d], ``decoder.bias`` [n_models, d]
- ``code_normalization_id`` (int64 scalar, 1 = CROSSCODER: a latent's scale is the sum over
  models of its decoder row norms)
- batch_topk only: ``k`` (int32 scalar), ``threshold`` (float32 scalar, -1 = not yet set)

``input_scale`` [n_models] (what raw activations are multiplied by before ``encode``) is a
non-persistent buffer: it travels in ``config.json``, not in the state dict, as the public
checkpoints have no such key.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("l1", "batch_topk")
CROSSCODER_NORMALIZATION_ID = 1  # CodeNormalization.CROSSCODER in dictionary_learning (enum auto() from 1)
CODE_NORMALIZATION_NAMES = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}
DEFAULT_INIT_NORM = {"l1": 0.1, "batch_topk": 1.0}  # decoder row norm at init (Anthropic's small norm for L1)


def check_code_normalization(code_id: int, where: str = "crosscoder") -> None:
    """Refuse any code normalization but CROSSCODER, naming the id found."""
    if int(code_id) != CROSSCODER_NORMALIZATION_ID:
        name = CODE_NORMALIZATION_NAMES.get(int(code_id), "unknown")
        raise ValueError(f"{where}: code_normalization_id {int(code_id)} ({name}) is not supported; "
                         f"only {CROSSCODER_NORMALIZATION_ID} (CROSSCODER) is")


class CrossCoder(nn.Module):
    """An L1 or BatchTopK crosscoder. Inputs are ``x_BMD`` (batch, model, d_model) in normalized
    space (see ``normalize``); latents are ``f_BF``."""

    def __init__(self, n_models: int, d_model: int, dict_size: int, *, kind: str = "l1",
                 k: int | None = None, seed: int = 0, init_norm: float | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"crosscoder kind {kind!r} is not one of {KINDS}")
        if kind == "batch_topk" and (k is None or int(k) <= 0):
            raise ValueError(f"a batch_topk crosscoder needs k > 0, got {k!r}")
        self._kind = kind
        generator = torch.Generator().manual_seed(seed)
        norm = DEFAULT_INIT_NORM[kind] if init_norm is None else float(init_norm)
        w_dec = torch.randn(n_models, dict_size, d_model, generator=generator)
        w_dec = w_dec / w_dec.norm(dim=2, keepdim=True).clamp_min(1e-8) * norm
        self.encoder = nn.ParameterDict({
            "weight": nn.Parameter(w_dec.transpose(1, 2).clone()),
            "bias": nn.Parameter(torch.zeros(dict_size)),
        })
        self.decoder = nn.ParameterDict({
            "weight": nn.Parameter(w_dec),
            "bias": nn.Parameter(torch.zeros(n_models, d_model)),
        })
        self.register_buffer("code_normalization_id", torch.tensor(CROSSCODER_NORMALIZATION_ID, dtype=torch.int64))
        if kind == "batch_topk":
            # Straight into _buffers: register_buffer refuses the name because of the `k` property.
            self._buffers["k"] = torch.tensor(int(k), dtype=torch.int32)
            self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))
        self.register_buffer("input_scale", torch.ones(n_models), persistent=False)

    # ---- shape ---------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self._kind

    @property
    def n_models(self) -> int:
        return int(self.decoder["weight"].shape[0])

    @property
    def d_model(self) -> int:
        return int(self.decoder["weight"].shape[2])

    @property
    def activation_dim(self) -> int:
        return self.d_model

    @property
    def dict_size(self) -> int:
        return int(self.decoder["weight"].shape[1])

    @property
    def k(self) -> int | None:
        """Top-k per token on average (batch_topk), None for L1; the int32 buffer is ``_buffers["k"]``."""
        buffer = self._buffers.get("k")
        return None if buffer is None else int(buffer.item())

    # ---- normalisation -------------------------------------------------------------------
    def set_input_scale(self, scale_M) -> None:
        """Set the per-model factor applied to raw activations (not part of the state dict)."""
        scale = torch.as_tensor(scale_M, dtype=torch.float32).reshape(-1)
        if scale.shape[0] != self.n_models:
            raise ValueError(f"input_scale has {scale.shape[0]} entries, the crosscoder has {self.n_models} models")
        self.input_scale = scale.to(self.decoder["weight"].device)

    def normalize(self, x_BMD: torch.Tensor) -> torch.Tensor:
        """Raw activations -> the space the crosscoder was trained in."""
        return x_BMD * self.input_scale.to(x_BMD.dtype)[None, :, None]

    def denormalize(self, x_hat_BMD: torch.Tensor) -> torch.Tensor:
        """Reconstructions in normalized space -> raw activation units."""
        return x_hat_BMD / self.input_scale.to(x_hat_BMD.dtype)[None, :, None]

    # ---- the model -----------------------------------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """||W_dec[m, j]|| as [n_models, F]."""
        return self.decoder["weight"].norm(dim=2)

    def latent_scale(self) -> torch.Tensor:
        """The CROSSCODER code normalization: sum over models of decoder row norms, [F]."""
        return self.decoder_norms().sum(dim=0)

    def pre_activations(self, x_BMD: torch.Tensor) -> torch.Tensor:
        """relu(sum_m x_m @ W_enc[m] + b_enc): every latent before any top-k selection."""
        # one [B, M*d] @ [M*d, F] matmul: the same sum over models as an einsum, several times
        # faster on the CPU (measured in benchmarks/crosscoder.py)
        weight = self.encoder["weight"]
        flat = x_BMD.reshape(x_BMD.shape[0], -1) @ weight.reshape(-1, weight.shape[-1])
        return torch.relu(flat + self.encoder["bias"])

    def encode(self, x_BMD: torch.Tensor, use_threshold: bool = True) -> torch.Tensor:
        f_BF = self.pre_activations(x_BMD)
        if self._kind == "l1":
            return f_BF
        scores_BF = f_BF * self.latent_scale()
        threshold = float(self.threshold.item())
        if use_threshold and not self.training and threshold >= 0:
            return f_BF * (scores_BF > threshold)
        n_keep = min(self.k * f_BF.shape[0], f_BF.numel())
        # Batch top-k: selected by score, but the kept values are the unscaled activations.
        keep = scores_BF.flatten().topk(n_keep, sorted=False).indices
        mask = torch.zeros(f_BF.numel(), dtype=torch.bool, device=f_BF.device)
        mask[keep] = True
        return f_BF * mask.view_as(f_BF)

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        weight = self.decoder["weight"]  # [M, F, d] -> [F, M*d]: one matmul for every model
        flat = f_BF @ weight.transpose(0, 1).reshape(weight.shape[1], -1)
        return flat.view(f_BF.shape[0], weight.shape[0], weight.shape[2]) + self.decoder["bias"]

    def forward(self, x_BMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_BF = self.encode(x_BMD)
        return self.decode(f_BF), f_BF

    def extra_repr(self) -> str:
        return (f"kind={self._kind}, n_models={self.n_models}, d_model={self.d_model}, "
                f"dict_size={self.dict_size}" + (f", k={self.k}" if self.k is not None else ""))
