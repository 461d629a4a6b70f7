"""Mean residual norms per layer: the ``||h_L||`` of the perturbation ratio and of the
adaptive search's start coefficient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transforms.capture import hook_components, input_device, model_dims, run_forward

if TYPE_CHECKING:
    import torch
    from torch import nn


def mean_residual_norms(
    model: nn.Module,
    prompts_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    skip_first: int = 1,
) -> dict[int, float]:
    """Mean L2 norm of layer-k residual states over the prompt tokens (token-weighted, fp32),
    pads excluded; the ``||h_L||`` of the perturbation ratio and the adaptive start.

    ``skip_first`` (default 1) drops the first tokens of every prompt: position 0 is an
    attention sink with a huge norm. SmolLM2-135M-Instruct, 8 chat prompts: position 0 has
    ||h|| = 25054 at layer 15 against ~150-200 elsewhere, so including it inflates the mean
    4.5x at layer 15 (5.2x at 12, 2.5x at 24; ~1.0x at layers 0-9). ``skip_first=0``
    averages every prompt token. The forward stops after the deepest requested layer.
    """
    from transforms.sequences import left_pad

    n_layers, _ = model_dims(model)
    wanted = sorted(set(int(k) for k in layers))
    if not wanted or wanted[0] < 0 or wanted[-1] >= n_layers:
        raise ValueError(f"layers {list(layers)} out of range: valid layers are 0-{n_layers - 1}")
    sums = {k: 0.0 for k in wanted}
    count = 0
    current: dict[str, torch.Tensor] = {}

    def add_norms(k: int, hidden_BTD: torch.Tensor) -> None:
        norms = hidden_BTD.float().norm(dim=-1)  # [B, T]
        sums[k] += float((norms * current["w"]).sum())

    device = input_device(model)
    with hook_components(model, wanted, "residual", add_norms, stop_after_last=True):
        for lo in range(0, len(prompts_ids), batch_size):
            batch = [list(p) for p in prompts_ids[lo:lo + batch_size]]
            ids, mask = left_pad(batch, 0)
            weight = mask.clone()
            for row, p in enumerate(batch):  # drop each prompt's first skip_first tokens
                first = ids.shape[1] - len(p)
                weight[row, first:first + skip_first] = 0
            current["w"] = weight.float().to(device)
            count += int(weight.sum())
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
            run_forward(model, ids, mask, position_ids)
    if count == 0:
        raise ValueError("no prompt tokens left to average (prompts shorter than skip_first?)")
    return {k: sums[k] / count for k in wanted}
