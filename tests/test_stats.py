"""transforms.stats against the hand-written copies it replaced (kept here verbatim as the
reference) and against scipy: numbers that must not change are compared exactly (Cohen's
d) or to 1e-9 (p-values); the bootstrap interval changed on purpose (percentile -> BCa) and
is checked against scipy and against the old one for size."""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from transforms.stats import bootstrap_ci, cohens_d, cohens_d_axis, cohens_d_paired, cosine, pearson, unit, unit_rows


# --- the replaced copies, verbatim (reference behaviour) -----------------------------------------
def old_projections_cohens_d(a, b):  # analyses/projections.py: (mean b − mean a) / pooled
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    return float((b.mean() - a.mean()) / pooled) if pooled > 0 else float("nan")


def old_vector_eval_cohens_d(proj_pos, proj_neg):  # transforms/vectors/evaluation.py
    n1, n0 = len(proj_pos), len(proj_neg)
    if n1 == 0 or n0 == 0 or n1 + n0 < 3:
        return math.nan
    var1 = float(np.var(proj_pos, ddof=1)) if n1 > 1 else 0.0
    var0 = float(np.var(proj_neg, ddof=1)) if n0 > 1 else 0.0
    pooled = math.sqrt(((n1 - 1) * var1 + (n0 - 1) * var0) / (n1 + n0 - 2))
    if pooled == 0:
        return math.nan
    return (float(np.mean(proj_pos)) - float(np.mean(proj_neg))) / pooled


def old_finding_cohens_d(pos, neg):  # analyses/finding.py (pure Python sums)
    if len(pos) < 2 or len(neg) < 2:
        return float("nan")
    mp, mn = sum(pos) / len(pos), sum(neg) / len(neg)
    vp = sum((x - mp) ** 2 for x in pos) / (len(pos) - 1)
    vn = sum((x - mn) ** 2 for x in neg) / (len(neg) - 1)
    pooled = math.sqrt(((len(pos) - 1) * vp + (len(neg) - 1) * vn) / (len(pos) + len(neg) - 2))
    return (mp - mn) / pooled if pooled > 0 else float("nan")


def old_pearson_p(r, n):  # analyses/model_diff.py: t distribution, n − 2 degrees of freedom
    if r is None or n < 3 or (isinstance(r, float) and math.isnan(r)):
        return None
    if abs(r) >= 1.0:
        return 0.0
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * sps.t.sf(abs(t), n - 2))


def same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or x == y


# --- Cohen's d: exact ------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [(40, 55), (2, 2), (1, 5), (3, 1), (0, 4), (1, 1), (7, 9)])
def test_cohens_d_is_exactly_the_old_copies(sizes):
    rng = np.random.default_rng(sum(sizes))
    for trial in range(20):
        a, b = rng.normal(0, 1 + trial, sizes[0]), rng.normal(0.5, 2, sizes[1])
        if sizes[0] >= 2 and sizes[1] >= 2:
            assert same(cohens_d(b, a), old_projections_cohens_d(a, b))
            assert cohens_d(a.tolist(), b.tolist()) == pytest.approx(old_finding_cohens_d(a.tolist(), b.tolist()),
                                                                    rel=1e-12)  # summation order only
        else:
            assert math.isnan(cohens_d(b, a))
        assert same(cohens_d(a, b, min_per_group=1), old_vector_eval_cohens_d(a, b))
    assert math.isnan(cohens_d([1.0, 1.0], [1.0, 1.0]))  # no spread
    a, b = rng.normal(size=(3, 12)), rng.normal(size=(3, 9))
    assert cohens_d_axis(a, b).tolist() == [cohens_d(x, y) for x, y in zip(a, b)]


def test_cohens_d_paired():
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + rng.normal(0.3, 0.5, 30)
    d = b - a
    assert cohens_d_paired(a, b) == float(d.mean() / d.std(ddof=1))
    assert math.isnan(cohens_d_paired([1.0], [2.0])) and math.isnan(cohens_d_paired([1.0, 2.0], [2.0, 3.0]))


# --- unit / cosine ---------------------------------------------------------------------------------
def test_unit_and_cosine():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 16)), rng.standard_normal((4, 16))
    a[2] = 0.0
    expected = np.array([x @ y / (np.linalg.norm(x) * np.linalg.norm(y) or 1.0) for x, y in zip(a, b)])
    got = cosine(a, b)
    assert np.isnan(got[2]) and np.allclose(np.delete(got, 2), np.delete(expected, 2), rtol=1e-14)
    assert float(cosine(a[0], a[0] * 3)) == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(unit_rows(b), axis=1), 1.0)
    assert (unit_rows(a)[2] == 0).all()
    assert unit([3.0, 4.0]).tolist() == [0.6, 0.8]
    with pytest.raises(ValueError, match="zero vector"):
        unit(np.zeros(3))


# --- Pearson: scipy, the same p as the t distribution to 1e-9 ------------------------------------
def test_pearson_is_scipy_and_matches_the_old_t_test():
    rng = np.random.default_rng(2)
    for n in (3, 4, 5, 8, 12, 30, 200):
        for _ in range(25):
            x = rng.standard_normal(n)
            y = 0.4 * x + rng.standard_normal(n)
            r, p = pearson(x, y)
            ref = sps.pearsonr(x, y)
            assert (r, p) == (float(ref.statistic), float(ref.pvalue))
            assert p == pytest.approx(old_pearson_p(r, n), rel=1e-9, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined cases are explicit: no scipy warning
        assert all(math.isnan(v) for v in pearson([1.0, 2.0], [2.0, 1.0]))
        assert all(math.isnan(v) for v in pearson([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="same length"):
        pearson([1.0, 2.0, 3.0], [1.0, 2.0])


# --- bootstrap: scipy BCa; the change from the old percentile interval, measured ------------------
def _d(x, y, axis=-1):
    return cohens_d_axis(y, x, axis)  # second − first, as analyses.projections reports it


def test_bootstrap_ci_is_scipy_bca():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 40), rng.normal(0.8, 1.3, 55)
    lo, hi = bootstrap_ci(_d, (a, b), n_resamples=999, confidence=0.9, seed=7)
    ref = sps.bootstrap((a, b), _d, n_resamples=999, confidence_level=0.9, method="BCa", paired=False,
                        vectorized=True, rng=np.random.default_rng(7))
    assert (lo, hi) == (ref.confidence_interval.low, ref.confidence_interval.high)
    assert lo < _d(a, b) < hi
    # the old percentile interval (same draws): BCa moves each end by a few hundredths of a d unit here
    pct = np.percentile(ref.bootstrap_distribution, [5, 95])
    assert abs(lo - pct[0]) < 0.05 and abs(hi - pct[1]) < 0.05 and (lo, hi) != tuple(pct)


@pytest.mark.parametrize("groups", [([0.0, 1.0], [2.0, 3.0, 4.0]), ([1.0, 1.0, 1.0, 2.0], [3.0, 3.0, 3.0, 4.0])])
def test_bootstrap_ci_undefined_is_nan_with_a_reason(groups, caplog):
    """Groups of 2 have leave-one-out samples without a variance; few distinct values give
    resamples without spread: BCa is undefined, reported as nan (not a filtered interval)."""
    caplog.set_level(logging.INFO, logger="transforms.stats")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = bootstrap_ci(_d, tuple(np.asarray(g) for g in groups), n_resamples=500, seed=0)
    assert math.isnan(lo) and math.isnan(hi)
    assert "BCa interval undefined" in caplog.text


def test_mean_t_interval_matches_the_t_formula_and_drops_missing_values():
    import math

    from scipy import stats as sps

    from transforms.stats import mean_t_interval

    x = [1.0, 2.5, 4.0, 3.5, None, float("nan")]
    kept = np.array([1.0, 2.5, 4.0, 3.5])
    half = sps.t.ppf(0.975, 3) * kept.std(ddof=1) / 2.0
    mean, low, high = mean_t_interval(x)
    assert math.isclose(mean, kept.mean()) and math.isclose(low, kept.mean() - half) and math.isclose(high, kept.mean() + half)
    assert math.isnan(mean_t_interval([2.0])[1]) and mean_t_interval([2.0])[0] == 2.0
    assert all(math.isnan(v) for v in mean_t_interval([]))
