"""Which candidate features separate the two sides of minimal pairs, consistently across pairs.

Input: per-pair values of K candidate features (crosscoder / SAE latents, or projections on
directions) for the pos and the neg side of P pairs, ``pos_PK`` and ``neg_PK`` (row p of both
is the same pair). Per feature, with ``d_p = pos_p − neg_p``:

- ``mean_diff`` = mean(d);
- ``effect_size`` = mean(d) / sd(d) (ddof=1): Cohen's d_z, as :func:`transforms.stats.cohens_d_paired`
  (NaN when sd is 0 or P < 2);
- ``sign_consistency`` = fraction of pairs whose d has the sign of mean(d) (zeros never count;
  when mean(d) is 0 it is the fraction of zero differences);
- ``p_value``: two-sided sign-flip permutation test of mean(d) = 0: under the null each d_p is
  as likely to be −d_p, so the statistic |Σ s_p d_p| over random signs s ∈ {±1}^P is the null
  distribution; ``p = (#{null ≥ observed} + 1) / (n_permutations + 1)`` (never 0). One sign
  matrix [n_permutations, P] serves every feature (a matrix product, chunked over
  permutations so memory stays at ``chunk × K``);
- ``q_value``: Benjamini-Hochberg over the K features. The p floor ``1/(n_permutations+1)``
  bounds the smallest q by ``K/(n_permutations+1)``: screening K features at level α needs
  ``n_permutations`` well above ``K/α``.

:func:`split_pairs` turns rows (pair id, polarity, values) into the aligned matrices;
:func:`mean_difference_direction` is the plain mean-difference direction of two sides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_PERMUTATIONS = 10_000
_CHUNK_ELEMENTS = 2**24  # null sums held at once (float64: 128 MiB)


@dataclass(frozen=True)
class FeatureStat:
    """Paired statistics of one candidate feature (definitions in the module docstring)."""

    feature: int
    n_pairs: int
    mean_diff: float
    effect_size: float
    sign_consistency: float
    p_value: float
    q_value: float


@dataclass(frozen=True)
class PairedValues:
    """Values of the two sides aligned by pair: row p of ``pos_PK`` and ``neg_PK`` is ``pair_ids[p]``."""

    pair_ids: list[str]
    pos_PK: "np.ndarray"
    neg_PK: "np.ndarray"


def split_pairs(pair_ids: Sequence[str | None], polarities: Sequence[str | None], values_NK: "np.ndarray") -> PairedValues:
    """Align N rows into pos/neg matrices by pair id (pairs sorted by id). Rows with no pair id
    or polarity are skipped; a pair id with other than exactly one "pos" and one "neg" row
    raises ``ValueError`` naming the pair."""
    import numpy as np

    values_NK = np.asarray(values_NK)
    if values_NK.ndim != 2 or values_NK.shape[0] != len(pair_ids) or len(pair_ids) != len(polarities):
        raise ValueError(f"values must be [N, K] with N = {len(pair_ids)} pair ids and {len(polarities)} "
                         f"polarities, got shape {values_NK.shape}")
    rows: dict[str, dict[str, list[int]]] = {}
    for i, (pair, pol) in enumerate(zip(pair_ids, polarities)):
        if pair is None or pol is None:
            continue
        if pol not in ("pos", "neg"):
            raise ValueError(f"row {i}: polarity must be 'pos' or 'neg', got {pol!r}")
        rows.setdefault(pair, {"pos": [], "neg": []})[pol].append(i)
    for pair, sides in rows.items():
        for pol in ("pos", "neg"):
            if len(sides[pol]) != 1:
                raise ValueError(f"pair {pair!r}: expected one {pol!r} row, got {len(sides[pol])}")
    order = sorted(rows)
    return PairedValues(order, values_NK[[rows[p]["pos"][0] for p in order]],
                        values_NK[[rows[p]["neg"][0] for p in order]])


def sign_flips(n_permutations: int, n_pairs: int, seed: int) -> "np.ndarray":
    """The random sign matrix of the permutation test: int8 ±1, shape [n_permutations, n_pairs]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, size=(n_permutations, n_pairs), dtype=np.int8) * 2 - 1).astype(np.int8)


def benjamini_hochberg(p_values: Sequence[float] | "np.ndarray") -> "np.ndarray":
    """Benjamini-Hochberg q-values: ``q_(i) = min_{j ≥ i} p_(j) m / j`` over the sorted p, capped
    at 1, returned in input order. NaN p-values stay NaN and do not count in ``m``."""
    import numpy as np

    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * m / np.arange(1, m + 1)
    monotone = np.minimum.accumulate(scaled[::-1])[::-1]  # the min over j >= i
    out = np.empty(m)
    out[order] = np.minimum(monotone, 1.0)
    q[ok] = out
    return q


def permutation_p_values(diff_PK: "np.ndarray", n_permutations: int, seed: int) -> "np.ndarray":
    """Two-sided sign-flip permutation p-values of mean(diff) = 0 per feature (column)."""
    import numpy as np

    n_pairs, n_features = diff_PK.shape
    observed = np.abs(diff_PK.sum(axis=0))
    # ties: flipping no sign reproduces the observed sum up to float rounding, which must count
    tol = 1e-9 * np.maximum(np.abs(diff_PK).sum(axis=0), 1e-300)
    signs = sign_flips(n_permutations, n_pairs, seed)
    counts = np.zeros(n_features, dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(n_features, 1))
    for start in range(0, n_permutations, chunk):
        null = np.abs(signs[start:start + chunk].astype(np.float64) @ diff_PK)  # [chunk, K]
        counts += (null >= observed - tol).sum(axis=0)
    return (counts + 1) / (n_permutations + 1)


def paired_feature_stats(pos_PK: "np.ndarray", neg_PK: "np.ndarray", n_permutations: int = DEFAULT_PERMUTATIONS,
                         seed: int = 0) -> list[FeatureStat]:
    """Per-feature paired statistics of pos − neg (module docstring), one :class:`FeatureStat`
    per column, in column order. Shapes must match ([P, K], P ≥ 1); values must be finite."""
    import numpy as np

    pos, neg = np.asarray(pos_PK, dtype=np.float64), np.asarray(neg_PK, dtype=np.float64)
    if pos.shape != neg.shape or pos.ndim != 2 or pos.shape[0] < 1:
        raise ValueError(f"pos and neg must both be [pairs, features] with at least one pair, "
                         f"got {pos.shape} and {neg.shape}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    diff = pos - neg
    if not np.isfinite(diff).all():
        bad = int(np.argwhere(~np.isfinite(diff))[0][1])
        raise ValueError(f"feature {bad}: non-finite activation values")
    n_pairs = diff.shape[0]
    mean = diff.mean(axis=0)
    if n_pairs >= 2:
        sd = diff.std(axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            effect = np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0), np.nan)
    else:
        effect = np.full(mean.shape, np.nan)
    consistency = (np.sign(diff) == np.sign(mean)).mean(axis=0)
    p = permutation_p_values(diff, n_permutations, seed)
    q = benjamini_hochberg(p)
    log.debug("paired stats: %d pairs x %d features, %d permutations", n_pairs, diff.shape[1], n_permutations)
    return [FeatureStat(k, n_pairs, float(mean[k]), float(effect[k]),
                        float(consistency[k]), float(p[k]), float(q[k])) for k in range(diff.shape[1])]


def mean_difference_direction(pos_PD: "np.ndarray", neg_PD: "np.ndarray") -> "np.ndarray":
    """Unit vector along mean(pos) − mean(neg) (float64, [D]); sides may differ in count.
    Identical means have no direction (``ValueError``)."""
    import numpy as np

    from transforms.stats import unit

    pos, neg = np.asarray(pos_PD, dtype=np.float64), np.asarray(neg_PD, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1] or not len(pos) or not len(neg):
        raise ValueError(f"pos and neg must be non-empty [n, D] with the same D, got {pos.shape} and {neg.shape}")
    return unit(pos.mean(axis=0) - neg.mean(axis=0))
