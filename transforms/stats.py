"""Small statistics used across transforms, builders and analyses: one definition each.

- :func:`cohens_d`: ``(mean x − mean y) / s_pooled``, ``s_pooled = sqrt(((n_x − 1) var_x +
  (n_y − 1) var_y) / (n_x + n_y − 2))`` (ddof=1 per group), float64; NaN when a group has
  fewer than ``min_per_group`` values, ``n_x + n_y < 3`` or ``s_pooled == 0``.
  :func:`cohens_d_axis`: the same along an axis, unguarded (the bootstrap's statistic).
  :func:`cohens_d_paired`: ``mean(y − x) / sd(y − x)`` (ddof=1).
- :func:`unit` (one vector; a zero vector is an error), :func:`unit_rows` (each row; zero
  rows stay zero), :func:`cosine` (along the last axis, float64; NaN where a norm is 0).
- :func:`pearson`: ``scipy.stats.pearsonr`` (r, two-sided p from the exact null
  distribution, the same p as the t test with n − 2 degrees of freedom); ``(nan, nan)`` for
  fewer than 3 pairs or a constant input.
- :func:`mean_t_interval`: mean and 95% Student-t interval over the finite values (None and
  NaN dropped); ``(nan, nan, nan)`` for none, nan bounds for one.
- :func:`bootstrap_ci`: ``scipy.stats.bootstrap`` (BCa, each sample resampled on its own).
  BCa needs every bootstrap draw and every jackknife value of the statistic to be finite;
  when one is not (a resample or a leave-one-out sample with no spread, e.g. groups of 2),
  the interval is undefined and returned as ``(nan, nan)``, with a log line saying why —
  never an interval over a silently filtered subset of the draws.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def cohens_d(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, min_per_group: int = 2) -> float:
    """Signed Cohen's d of ``x`` over ``y`` with the pooled (ddof=1) sd; NaN if undefined.
    ``min_per_group=1`` lets a single value stand for its group (its variance counts as 0)."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if min(a.size, b.size) < max(min_per_group, 1) or a.size + b.size < 3:
        return math.nan
    var_a = float(a.var(ddof=1)) if a.size > 1 else 0.0
    var_b = float(b.var(ddof=1)) if b.size > 1 else 0.0
    pooled = math.sqrt(((a.size - 1) * var_a + (b.size - 1) * var_b) / (a.size + b.size - 2))
    return (float(a.mean()) - float(b.mean())) / pooled if pooled > 0 else math.nan


def cohens_d_axis(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """:func:`cohens_d` along ``axis`` without its guards (vectorised, for the bootstrap:
    no spread gives inf or nan)."""
    nx, ny = x.shape[axis], y.shape[axis]
    pooled = np.sqrt(((nx - 1) * x.var(axis=axis, ddof=1) + (ny - 1) * y.var(axis=axis, ddof=1)) / (nx + ny - 2))
    return (x.mean(axis=axis) - y.mean(axis=axis)) / pooled


def cohens_d_paired(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """``mean(y − x) / sd(y − x)`` (ddof=1); NaN for fewer than 2 pairs or no spread."""
    d = np.asarray(y, np.float64) - np.asarray(x, np.float64)
    if d.size < 2:
        return math.nan
    sd = d.std(ddof=1)
    return float(d.mean() / sd) if sd > 0 else math.nan


def unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    """``v / ||v||`` in float64; a zero vector has no direction (``ValueError``)."""
    v = np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(v)
    if norm == 0:
        raise ValueError("zero vector has no direction")
    return v / norm


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row (last axis) divided by its L2 norm, in the input's dtype (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine along the last axis in float64 (a 0-d array for two vectors); NaN where a norm is 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(r, p)`` from ``scipy.stats.pearsonr`` (two-sided); ``(nan, nan)`` when undefined
    (fewer than 3 pairs, or an input without spread: scipy would warn and return nan)."""
    from scipy import stats

    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson: x and y must be 1-D and the same length, got {a.shape} and {b.shape}")
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan, math.nan
    res = stats.pearsonr(a, b)
    return float(res.statistic), float(res.pvalue)


def mean_t_interval(values: Sequence[float | None], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the finite ``values`` with a Student-t interval at ``level``."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def bootstrap_ci(statistic: Callable[..., np.ndarray], samples: Sequence[np.ndarray], *, n_resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """BCa interval of ``statistic(*samples, axis=-1)`` (vectorised over the last axis), each
    sample resampled independently with ``numpy.random.default_rng(seed)``; ``(nan, nan)``
    when BCa is undefined (see the module docstring)."""
    import warnings

    from scipy import stats

    data = tuple(np.asarray(s, np.float64) for s in samples)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # a non-finite draw makes scipy warn and return nan: reported once below instead
        warnings.simplefilter("ignore")
        res = stats.bootstrap(data, statistic, n_resamples=n_resamples, confidence_level=confidence,
                              method="BCa", paired=False, vectorized=True, rng=rng)
    draws = res.bootstrap_distribution
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    bad = int((~np.isfinite(draws)).sum())
    if bad or not (math.isfinite(lo) and math.isfinite(hi)):
        logger.info("bootstrap: BCa interval undefined (%d of %d draws non-finite, or a jackknife value is: "
                    "sizes %s); reporting nan", bad, draws.size, [s.size for s in data])
        return math.nan, math.nan
    return lo, hi
