"""Latent Scaling (Minder, Dumas et al. 2025, "Robustly identifying concepts introduced during
chat fine-tuning using crosscoders", arXiv 2504.02922): how much of latent j's B decoder
direction each model's activations really carry.

For latent j, ``d = W_dec[B, j]`` (model B's decoder row, used for *both* models) and a target
``t_m(n)`` per token n and model m, the least-squares scale

    β_m = argmin_β Σ_n ‖β f_j(n) d − t_m(n)‖² = Σ_n f_j(n) ⟨d, t_m(n)⟩ / (‖d‖² Σ_n f_j(n)²).

Only tokens with f_j ≠ 0 contribute. Targets, with ``x_m`` the activations the crosscoder was
fed (after any input normalisation) and ``x̂_m`` its full reconstruction (decoder bias included):

- error target ``ε_m(n) = x_m(n) − x̂_m(n) + f_j(n) W_dec[m, j]``: what the crosscoder fails to
  reconstruct once latent j's own contribution to model m is removed from the reconstruction.
- reconstruction target, ``recon_target="full"`` (default) ``r_m(n) = x̂_m(n)``: the full
  reconstruction, latent j included. This is what the authors' released code
  (science-of-finetuning) fits. With ``recon_target="without_latent"``,
  ``r_m(n) = x̂_m(n) − f_j(n) W_dec[m, j]`` (the reconstruction without latent j). The two agree
  on the A side of a B-only latent (W_dec[A, j] ≈ 0); on the B side "without_latent" removes
  exactly the part that makes β^r_B ≈ 1, so ν^r is ill-conditioned there — prefer "full".

Ratios ``ν^ε = β^ε_A / β^ε_B`` and ``ν^r = β^r_A / β^r_B``. A genuinely B-specific latent has
ν^ε ≈ 0 (A's activations lack the direction); a latent whose A decoder was shrunk to 0 by the
sparsity penalty although A carries the same information ("Complete Shrinkage") has ν^ε ≈ 1;
ν^r ≈ 1 flags "Latent Decoupling" (other latents reconstruct the direction in A).

:class:`LatentScaling` streams batches and keeps only the needed sums, ``O(len(latents) ·
n_models)`` memory, computed with torch on the inputs' device (float32 matmuls, or float64 when
an input is float64; per-batch reductions and running sums in float64).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

from transforms.dictionaries.latents import check_model_index

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

RECON_TARGETS = ("full", "without_latent")


@dataclass(frozen=True)
class ScalingBetas:
    """Raw β arrays over all models: ``error_ML`` and ``recon_ML`` [n_models, len(latents)]
    (NaN where undefined) and ``n_active_L`` (tokens with f > 0)."""

    error_ML: Any
    recon_ML: Any
    n_active_L: Any


def _as_tensor(x: Any, device: Any) -> "torch.Tensor":
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.detach().to(device)


class LatentScaling:
    """Streaming closed-form β^ε and β^r per chosen latent and model (see the module docstring).

    ``add(x_BMD, x_hat_BMD, f_BF, W_dec_MFD)`` per batch (numpy or torch); ``result()`` rows
    ``latent, beta_error_a, beta_error_b, beta_recon_a, beta_recon_b, nu_error, nu_recon,
    n_active`` with None where undefined (latent never active, a zero B decoder row, or a
    ratio over β_B = 0)."""

    def __init__(
        self,
        latents: Sequence[int],
        model_a: int = 0,
        model_b: int = 1,
        recon_target: Literal["full", "without_latent"] = "full",
    ):
        import numpy as np

        self.latents = [int(j) for j in latents]
        if not self.latents:
            raise ValueError("no latents to scale")
        if model_a == model_b:
            raise ValueError(f"model_a and model_b are both {model_a}")
        if recon_target not in RECON_TARGETS:
            raise ValueError(f"recon_target must be one of {RECON_TARGETS}, got {recon_target!r}")
        self.model_a, self.model_b, self.recon_target = model_a, model_b, recon_target
        self.n_models: int | None = None
        n = len(self.latents)
        self._num_err: np.ndarray | None = None  # [M, L] Σ f ⟨d, ε_m⟩
        self._num_rec: np.ndarray | None = None  # [M, L] Σ f ⟨d, r_m⟩
        self._den = np.zeros(n, np.float64)  # [L] ‖d‖² Σ f²
        self._n_active = np.zeros(n, np.int64)

    def _check(self, x: "torch.Tensor", x_hat: "torch.Tensor", f: "torch.Tensor", w: "torch.Tensor") -> None:
        if x.ndim != 3 or x.shape != x_hat.shape:
            raise ValueError(f"x and x_hat must both be [batch, n_models, d_model]; got {tuple(x.shape)}, {tuple(x_hat.shape)}")
        n_batch, n_models, d_model = x.shape
        if w.ndim != 3 or w.shape[0] != n_models or w.shape[2] != d_model:
            raise ValueError(f"decoder shape {tuple(w.shape)} does not match activations [*, {n_models}, {d_model}]")
        if f.ndim != 2 or f.shape != (n_batch, w.shape[1]):
            raise ValueError(f"latent activations must be [{n_batch}, {w.shape[1]}], got {tuple(f.shape)}")
        bad = [j for j in self.latents if not 0 <= j < w.shape[1]]
        if bad:
            raise ValueError(f"latent index {bad[0]} out of range for a dictionary of {w.shape[1]} latents")
        check_model_index(self.model_a, n_models, "model_a")
        check_model_index(self.model_b, n_models, "model_b")
        if self.n_models is not None and self.n_models != n_models:
            raise ValueError(f"batch has {n_models} models, earlier batches had {self.n_models}")

    def add(self, x_BMD: Any, x_hat_BMD: Any, f_BF: Any, W_dec_MFD: Any) -> None:
        """Fold one batch of tokens in (no loop over tokens or latents)."""
        import numpy as np
        import torch

        device = f_BF.device if isinstance(f_BF, torch.Tensor) else "cpu"
        x, x_hat, f, w = (_as_tensor(t, device) for t in (x_BMD, x_hat_BMD, f_BF, W_dec_MFD))
        self._check(x, x_hat, f, w)
        wide = torch.float64 if torch.float64 in {x.dtype, x_hat.dtype, f.dtype, w.dtype} else torch.float32
        idx = torch.tensor(self.latents, device=device)
        f_BL = f[:, idx].to(torch.float64)
        d_LD = w[self.model_b, idx].to(wide)
        w_MLD = w[:, idx].to(wide)
        with torch.no_grad():
            # ⟨d, x − x̂⟩ and ⟨d, x̂⟩ for every token, model and latent: [B, M, L]
            proj_err = torch.matmul((x.to(wide) - x_hat.to(wide)), d_LD.T).to(torch.float64)
            proj_hat = torch.matmul(x_hat.to(wide), d_LD.T).to(torch.float64)
            ff_L = (f_BL * f_BL).sum(0)
            # ⟨d, W_dec[m, j]⟩: the latent's own contribution, added back or removed per token
            own_ML = torch.einsum("mld,ld->ml", w_MLD, d_LD).to(torch.float64)
            num_err = torch.einsum("bl,bml->ml", f_BL, proj_err) + own_ML * ff_L
            num_rec = torch.einsum("bl,bml->ml", f_BL, proj_hat)
            if self.recon_target == "without_latent":
                num_rec = num_rec - own_ML * ff_L
            den = (d_LD.to(torch.float64) ** 2).sum(1) * ff_L
            n_active = (f_BL > 0).sum(0)
        if self._num_err is None:
            self.n_models = x.shape[1]
            self._num_err = np.zeros((self.n_models, len(self.latents)), np.float64)
            self._num_rec = np.zeros_like(self._num_err)
        self._num_err += num_err.cpu().numpy()
        self._num_rec += num_rec.cpu().numpy()
        self._den += den.cpu().numpy()
        self._n_active += n_active.cpu().numpy()

    def betas(self) -> ScalingBetas:
        """β for every model, not only A and B."""
        import numpy as np

        if self._num_err is None or self._num_rec is None:
            raise ValueError("no batch was added")
        ok = self._den > 0
        safe = np.where(ok, self._den, 1.0)
        error = np.where(ok[None, :], self._num_err / safe, np.nan)
        recon = np.where(ok[None, :], self._num_rec / safe, np.nan)
        return ScalingBetas(error_ML=error, recon_ML=recon, n_active_L=self._n_active.copy())

    def result(self) -> list[dict[str, Any]]:
        """One row per chosen latent, in the order given."""
        b = self.betas()
        rows = []
        for i, j in enumerate(self.latents):
            ea, eb = _value(b.error_ML[self.model_a, i]), _value(b.error_ML[self.model_b, i])
            ra, rb = _value(b.recon_ML[self.model_a, i]), _value(b.recon_ML[self.model_b, i])
            rows.append(
                {
                    "latent": j,
                    "beta_error_a": ea,
                    "beta_error_b": eb,
                    "beta_recon_a": ra,
                    "beta_recon_b": rb,
                    "nu_error": _ratio(ea, eb),
                    "nu_recon": _ratio(ra, rb),
                    "n_active": int(b.n_active_L[i]),
                }
            )
        return rows


def _value(x: float) -> float | None:
    return None if x != x else float(x)  # NaN -> None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
