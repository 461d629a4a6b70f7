"""Activation similarity of two variants on the same response tokens (seed 001 phase 4).

Per prompt, with ``A_TLD`` and ``B_TLD`` the two variants' residual states over the same
response tokens (``T`` tokens, ``L`` layers):

- ``cos(mean_T A, mean_T B)`` per layer (:func:`mean_cosine_L`);
- ``cos(A[t], B[t])`` per token position and layer (:func:`position_cosine_TL`).

:class:`SimilarityStats` accumulates them over prompts, so only one batch of activations
is ever held; per-position means are clipped to positions that at least ``min_share`` of
the prompts reach, with the count per position.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


from transforms.stats import cosine  # along the last axis, float64; 0-norm rows give NaN


def mean_cosine_L(a_TLD: np.ndarray, b_TLD: np.ndarray) -> np.ndarray:
    """``[L]``: cosine of the two variants' mean response activations, per layer."""
    if a_TLD.shape != b_TLD.shape:
        raise ValueError(f"shapes differ: {a_TLD.shape} vs {b_TLD.shape}")
    return cosine(a_TLD.astype(np.float64).mean(0), b_TLD.astype(np.float64).mean(0))


def position_cosine_TL(a_TLD: np.ndarray, b_TLD: np.ndarray) -> np.ndarray:
    """``[T, L]``: cosine at each response position and layer."""
    if a_TLD.shape != b_TLD.shape:
        raise ValueError(f"shapes differ: {a_TLD.shape} vs {b_TLD.shape}")
    return cosine(a_TLD, b_TLD)


@dataclass
class SimilarityStats:
    """Running sums over prompts (see the module docstring)."""

    layers: list[int]
    per_prompt: list[dict[str, Any]] = field(default_factory=list)
    _pos_sum: np.ndarray | None = None  # [T, L]
    _pos_count: np.ndarray | None = None  # [T]

    def add(self, prompt_id: str, a_TLD: np.ndarray, b_TLD: np.ndarray) -> None:
        if a_TLD.shape[0] == 0:
            return
        for layer, value in zip(self.layers, mean_cosine_L(a_TLD, b_TLD)):
            self.per_prompt.append({"prompt_id": prompt_id, "layer": layer, "cosine": float(value),
                                    "response_len": int(a_TLD.shape[0])})
        pos = position_cosine_TL(a_TLD, b_TLD)
        n = pos.shape[0]
        if self._pos_sum is None:
            self._pos_sum = np.zeros((0, len(self.layers)))
            self._pos_count = np.zeros(0, dtype=np.int64)
        if n > self._pos_sum.shape[0]:
            grow = n - self._pos_sum.shape[0]
            self._pos_sum = np.vstack([self._pos_sum, np.zeros((grow, len(self.layers)))])
            self._pos_count = np.concatenate([self._pos_count, np.zeros(grow, dtype=np.int64)])
        self._pos_sum[:n] += pos
        self._pos_count[:n] += 1

    def layer_rows(self) -> list[dict[str, Any]]:
        """Per layer: mean and std (ddof=0) over prompts of the mean-activation cosine."""
        out = []
        for layer in self.layers:
            values = np.array([r["cosine"] for r in self.per_prompt if r["layer"] == layer])
            out.append({"layer": layer, "mean_cosine": float(values.mean()) if values.size else None,
                        "std_cosine": float(values.std()) if values.size else None, "prompts": int(values.size)})
        return out

    def position_rows(self, min_share: float = 0.8) -> list[dict[str, Any]]:
        """Per position reached by ≥ ``min_share`` of the prompts, per layer: mean cosine, count."""
        if self._pos_sum is None:
            return []
        n_prompts = len({r["prompt_id"] for r in self.per_prompt})
        out = []
        for t, count in enumerate(self._pos_count):
            if count < min_share * n_prompts:
                continue
            for j, layer in enumerate(self.layers):
                out.append({"position": t, "layer": layer, "mean_cosine": float(self._pos_sum[t, j] / count),
                            "prompts": int(count)})
        return out
