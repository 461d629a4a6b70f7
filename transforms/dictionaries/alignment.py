"""Do chosen latents' decoder directions align with a trait vector more than chance?

For a set S of latents (e.g. the crosscoder's most B-specific ones) and a vector v (e.g. the
optimism vector at the crosscoder's layer):

- per latent, the signed cosine between its decoder row and v;
- ``span_fraction``: ||P_S v||² / ||v||², the share of v's squared norm inside the span of S's
  decoder rows (least squares; 1 when v is a combination of them);
- two nulls: random subsets of the same size drawn from ``pool`` (the crosscoder's other
  latents: same training, same geometry), giving a permutation p-value with the +1
  correction, and random unit directions in R^d for the per-latent cosines (what |cos|
  between unrelated directions looks like at this width: about sqrt(2/(pi d))).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Alignment:
    selected: list[int]
    cosines: list[float]  # signed, one per selected latent
    mean_abs_cosine: float
    pool_mean_abs_cosine: float  # over the pool's latents
    random_direction_abs_cosine_p95: float  # 95th percentile of |cos| of random unit directions with v
    span_fraction: float
    null_span_mean: float  # over random pool subsets of the same size
    null_span_p95: float
    p_value: float  # share of random subsets whose span_fraction >= the selected set's, (count+1)/(n+1)
    n_random: int

    def rows(self) -> list[dict[str, Any]]:
        return [{"latent": j, "cosine": c, "abs_cosine": abs(c)} for j, c in zip(self.selected, self.cosines)]


def span_fraction(rows_KD: Any, vector_D: Any) -> float:
    """||P v||² / ||v||² for P the projection onto the span of the rows."""
    import numpy as np

    rows = np.asarray(rows_KD, dtype=np.float64)
    v = np.asarray(vector_D, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(rows.T, v, rcond=None)
    projected = rows.T @ coef
    return float(projected @ projected / (v @ v))


def latent_alignment(decoder_FD: Any, vector_D: Any, selected: Sequence[int], pool: Sequence[int], *,
                     n_random: int = 1000, seed: int = 0) -> Alignment:
    """:class:`Alignment` of ``selected`` decoder rows with ``vector_D`` against random subsets of
    ``pool`` (``selected`` is removed from the pool) and random directions."""
    import numpy as np

    decoder = np.asarray(decoder_FD, dtype=np.float64)
    v = np.asarray(vector_D, dtype=np.float64)
    if decoder.ndim != 2 or v.shape != (decoder.shape[1],):
        raise ValueError(f"decoder {list(decoder.shape)} and vector {list(v.shape)}: widths differ")
    chosen = [int(j) for j in selected]
    if not chosen:
        raise ValueError("no latents selected")
    if min(chosen) < 0 or max(chosen) >= decoder.shape[0]:
        raise ValueError(f"latent index out of range 0..{decoder.shape[0] - 1}: {chosen}")
    others = np.array(sorted(set(int(j) for j in pool) - set(chosen)), dtype=np.int64)
    if len(others) < len(chosen):
        raise ValueError(f"pool of {len(others)} latents is smaller than the {len(chosen)} selected")
    norms = np.linalg.norm(decoder, axis=1)
    unit_v = v / np.linalg.norm(v)
    cos = np.divide(decoder @ unit_v, norms, out=np.zeros(len(decoder)), where=norms > 0)
    rng = np.random.default_rng(seed)
    observed = span_fraction(decoder[chosen], v)
    null = np.array([span_fraction(decoder[rng.choice(others, len(chosen), replace=False)], v)
                     for _ in range(n_random)])
    directions = rng.standard_normal((4096, len(v)))
    random_cos = np.abs(directions @ unit_v) / np.linalg.norm(directions, axis=1)
    return Alignment(
        selected=chosen, cosines=[float(cos[j]) for j in chosen],
        mean_abs_cosine=float(np.abs(cos[chosen]).mean()), pool_mean_abs_cosine=float(np.abs(cos[others]).mean()),
        random_direction_abs_cosine_p95=float(np.quantile(random_cos, 0.95)),
        span_fraction=observed, null_span_mean=float(null.mean()), null_span_p95=float(np.quantile(null, 0.95)),
        p_value=float((np.sum(null >= observed) + 1) / (n_random + 1)), n_random=n_random)
