"""Dead-latent tracking and resampling for crosscoder training (Anthropic / dictionary_learning).

A latent is dead when it has not fired in the last ``dead_after`` tokens. Resampling points a
dead latent at an input the crosscoder reconstructs badly (sampled with probability ∝ loss²
from the current batch, the only one held): decoder rows = that input's residual direction at
the alive latents' mean decoder norm, encoder = the same direction at a small norm, bias 0,
and the Adam moments of those entries reset so stale momentum does not undo the change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from transforms.dictionaries.crosscoder import CrossCoder


class DeadLatents:
    """Tokens since each latent last fired."""

    def __init__(self, dict_size: int, dead_after: int) -> None:
        import torch

        self.dead_after = int(dead_after)
        self.since_fired = torch.zeros(dict_size, dtype=torch.int64)

    def update(self, f_BF: "torch.Tensor") -> None:
        if self.since_fired.device != f_BF.device:
            self.since_fired = self.since_fired.to(f_BF.device)
        self.since_fired += f_BF.shape[0]
        self.since_fired[f_BF.amax(dim=0) > 0] = 0  # fired somewhere; one reduction, no [B, F] mask

    def mask(self) -> "torch.Tensor":
        return self.since_fired >= self.dead_after

    def count(self) -> int:
        return int(self.mask().sum())

    def revive(self, index: "torch.Tensor") -> None:
        self.since_fired[index] = 0


def resample_dead(model: "CrossCoder", optimizer: "torch.optim.Optimizer", dead: DeadLatents,
                  x_BMD: "torch.Tensor", x_hat_BMD: "torch.Tensor", generator: "torch.Generator",
                  encoder_scale: float = 0.2) -> int:
    """Resample the dead latents towards high-loss inputs of this batch; returns how many."""
    import torch

    index = dead.mask().nonzero().flatten()
    if index.numel() == 0:
        return 0
    with torch.no_grad():
        residual_BMD = x_BMD - x_hat_BMD
        loss_B = residual_BMD.pow(2).sum(dim=(1, 2))
        if float(loss_B.sum()) <= 0:
            return 0
        weights = loss_B.pow(2).double().cpu()  # the generator lives on the CPU
        rows = torch.multinomial(weights, index.numel(), replacement=index.numel() > int((weights > 0).sum()),
                                 generator=generator).to(x_BMD.device)
        direction_NMD = residual_BMD[rows]
        direction_NMD = direction_NMD / direction_NMD.flatten(1).norm(dim=1).clamp_min(1e-8)[:, None, None]
        w_enc, b_enc, w_dec = model.encoder["weight"], model.encoder["bias"], model.decoder["weight"]
        alive = ~dead.mask()
        if alive.any():
            dec_norm = float(w_dec[:, alive].pow(2).sum(dim=(0, 2)).sqrt().mean())
            enc_norm = float(w_enc[:, :, alive].pow(2).sum(dim=(0, 1)).sqrt().mean())
        else:
            dec_norm = enc_norm = 1.0
        w_dec[:, index] = direction_NMD.transpose(0, 1) * dec_norm
        w_enc[:, :, index] = direction_NMD.permute(1, 2, 0) * enc_norm * encoder_scale
        b_enc[index] = 0.0
        for parameter, select in ((w_dec, (slice(None), index)), (w_enc, (slice(None), slice(None), index)),
                                  (b_enc, (index,))):
            state = optimizer.state.get(parameter, {})
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    state[moment][select] = 0.0
    dead.revive(index)
    return int(index.numel())
