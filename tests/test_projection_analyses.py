"""analyses.projections: Cohen's d and its bootstrap interval, summaries, lagged correlations
and decompositions against independent computations."""
from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from analyses.projections import (cohens_d_bootstrap, decomposition_sql, lag_correlation_sql, parse_conditions,
                                  summary_sql)


def test_cohens_d_and_its_bca_interval_equal_scipy():
    """d as before, exactly; the interval is scipy's BCa (code version 3; was percentile)."""
    from scipy import stats

    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 40), rng.normal(0.8, 1.3, 55)
    d, lo, hi = cohens_d_bootstrap(a, b, n_boot=500, ci=0.9, seed=7)
    pooled = np.sqrt(((a.size - 1) * np.var(a, ddof=1) + (b.size - 1) * np.var(b, ddof=1)) / (a.size + b.size - 2))
    assert d == float((b.mean() - a.mean()) / pooled)

    def loop_d(x, y, axis=-1):  # one resample at a time, as the old plain loop did
        x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
        out = [(yy.mean() - xx.mean()) / np.sqrt(((xx.size - 1) * xx.var(ddof=1) + (yy.size - 1) * yy.var(ddof=1))
                                                 / (xx.size + yy.size - 2))
               for xx, yy in zip(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))]
        return np.asarray(out).reshape(x.shape[:-1])

    ref = stats.bootstrap((a, b), loop_d, n_resamples=500, confidence_level=0.9, method="BCa", paired=False,
                          vectorized=True, rng=np.random.default_rng(7))
    assert lo == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert hi == pytest.approx(ref.confidence_interval.high, rel=1e-12)
    assert lo < d < hi
    with pytest.raises(ValueError, match="at least 2 values"):
        cohens_d_bootstrap(a[:1], b)
    d2, lo2, hi2 = cohens_d_bootstrap(np.array([0.0, 1.0]), np.array([1.0, 2.0, 3.0]))  # BCa undefined: nan
    assert np.isfinite(d2) and np.isnan(lo2) and np.isnan(hi2)


@pytest.fixture
def con():
    rng = np.random.default_rng(0)
    rows = []
    for s in range(6):
        n_prompt, n_resp = 3, 5 + s % 3
        for t in range(n_prompt + n_resp):
            for v in ("a:m", "b:m"):
                rows.append({"sample": f"{s}:0", "prompt_id": str(s), "token_index": t, "is_response": t >= n_prompt,
                             "layer": 4, "vector": v, "score": float(rng.normal())})
    proj = pl.DataFrame(rows)
    prompts = pl.DataFrame({"prompt_id": [str(s) for s in range(6)], "note": ["x", "y"] * 3,
                            "polarity": [None] * 6, "prompt": [f"p{s}" for s in range(6)]})
    c = duckdb.connect()
    c.register("proj", proj.to_arrow())
    c.register("prompts", prompts.to_arrow())
    return c, proj


def test_summary_lags_and_decomposition(con):
    c, proj = con
    summary = c.sql(summary_sql("proj", "prompts", None, (1, 3))).pl()
    for row in summary.iter_rows(named=True):
        mine = proj.filter((pl.col("sample") == row["sample"]) & (pl.col("vector") == row["vector"]) & pl.col("is_response"))
        scores = mine.sort("token_index")["score"].to_numpy()
        assert row["mean_response"] == pytest.approx(scores.mean())
        assert row["max_response"] == pytest.approx(scores.max())
        assert row["mean_range"] == pytest.approx(scores[1:3].mean())
        assert row["note"] == ["x", "y"][int(row["prompt_id"]) % 2]
    corr = c.sql(lag_correlation_sql("proj", 2)).pl()
    for row in corr.iter_rows(named=True):
        xs, ys = [], []
        for (sample,), frame in proj.filter(pl.col("is_response")).group_by("sample"):
            a = frame.filter(pl.col("vector") == row["vector_a"]).sort("token_index")["score"].to_numpy()
            b = frame.filter(pl.col("vector") == row["vector_b"]).sort("token_index")["score"].to_numpy()
            k = row["lag"]
            xs += list(a[:len(a) - k]); ys += list(b[k:])
        assert row["tokens"] == len(xs)
        assert row["pearson_r"] == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    c.register("summary_table", summary.to_arrow())
    conditions = parse_conditions("a:m>0,b:m<0.5")
    got = c.sql(decomposition_sql("summary_table", conditions, "mean_response", 4)).pl()
    wide = summary.pivot(on="vector", index="sample", values="mean_response")
    expected = wide.filter((pl.col("a:m") > 0) & (pl.col("b:m") < 0.5))["sample"].sort().to_list()
    assert sorted(got["sample"].to_list()) == expected
    with pytest.raises(ValueError, match="bad condition"):
        parse_conditions("a:m=3")
