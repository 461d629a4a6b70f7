"""The patching metric: a logit difference between two answer tokens, and its normalisation
(clean = 1, corrupted = 0)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def logit_diff(logits_BV: torch.Tensor, answer_ids_B2: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    """``logits[b, a_b] - logits[b, c_b]`` per row, in float32 (bf16 logits would round the
    difference of two large numbers); ``answer_ids_B2[b] = (a_b, c_b)``."""
    import torch

    ids = torch.as_tensor(answer_ids_B2, dtype=torch.long, device=logits_BV.device)
    if ids.ndim != 2 or ids.shape[1] != 2 or ids.shape[0] != logits_BV.shape[0]:
        raise ValueError(f"answer ids must be [B, 2] with B = {logits_BV.shape[0]}, got {tuple(ids.shape)}")
    picked = logits_BV.float().gather(1, ids)
    return picked[:, 0] - picked[:, 1]


def normalise(value: float | np.ndarray, clean: float, corrupted: float) -> float | np.ndarray:
    """``(value - corrupted) / (clean - corrupted)``: 1 = the clean run's metric, 0 = the
    corrupted run's. NaN when clean == corrupted (the pair does not move the metric, so no
    fraction of it can be restored)."""
    import numpy as np

    denom = float(clean) - float(corrupted)
    arr = np.asarray(value, dtype=np.float64)
    out = np.full_like(arr, np.nan) if denom == 0 else (arr - float(corrupted)) / denom
    return float(out) if out.ndim == 0 else out
