"""Compare two variants' activations on the same tokens against trait vectors (pure numpy).

For one layer, ``a_ND`` / ``b_ND``: the variants' pooled activations of the same ``N``
samples (B replaying A's tokens), ``v``: a trait vector.

- :func:`diff_cosine`: ``cos(mean(B) − mean(A), v)``;
- :func:`cohens_d_paired`: ``mean(d) / sd(d)``, ``d = b·v̂ − a·v̂`` per sample (ddof=1);
- :func:`cohens_d_unpaired`: ``(mean(b·v̂) − mean(a·v̂)) / pooled sd`` (ddof=1 each);
- :func:`random_specificity`: how the ``|cos|`` of the diff with ``v`` ranks among ``n``
  seeded random unit directions (share of random directions at least as aligned).
"""
from __future__ import annotations

import numpy as np

from transforms.stats import cohens_d, cohens_d_paired, unit

__all__ = ["cohens_d_paired", "cohens_d_unpaired", "diff_cosine", "projections", "random_directions",
           "random_specificity", "unit"]


def projections(acts_ND: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``acts · v̂`` per sample (float64)."""
    return np.asarray(acts_ND, dtype=np.float64) @ unit(v)


def diff_cosine(a_ND: np.ndarray, b_ND: np.ndarray, v: np.ndarray) -> float:
    diff = np.asarray(b_ND, np.float64).mean(0) - np.asarray(a_ND, np.float64).mean(0)
    norm = np.linalg.norm(diff)
    return float(diff @ unit(v) / norm) if norm > 0 else float("nan")


def cohens_d_unpaired(a_proj: np.ndarray, b_proj: np.ndarray) -> float:
    """B over A: :func:`transforms.stats.cohens_d` ``(b, a)``."""
    return cohens_d(b_proj, a_proj)


def random_directions(n: int, d_model: int, seed: int = 0) -> np.ndarray:
    """``[n, d_model]`` seeded random unit vectors (Gaussian, normalized)."""
    r = np.random.default_rng(seed).standard_normal((n, d_model))
    return r / np.linalg.norm(r, axis=1, keepdims=True)


def random_specificity(diff: np.ndarray, v: np.ndarray, randoms_RD: np.ndarray) -> tuple[float, float, float]:
    """``(|cos(diff, v)|, mean |cos(diff, r)|, share of r with |cos| ≥ the trait's)``."""
    diff_u = unit(diff)
    observed = abs(float(diff_u @ unit(v)))
    random_cos = np.abs(randoms_RD @ diff_u)
    return observed, float(random_cos.mean()), float((random_cos >= observed).mean())
