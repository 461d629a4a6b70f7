"""analyses.projections: Cohen's d and its bootstrap interval, summaries, lagged correlations
and decompositions against independent computations."""
from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from analyses.projections import (cohens_d_bootstrap, decomposition_sql, lag_correlation_sql, parse_conditions,
                                  summary_sql)


def test_cohens_d_and_bootstrap_equal_a_plain_loop():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 40), rng.normal(0.8, 1.3, 55)
    d, lo, hi = cohens_d_bootstrap(a, b, n_boot=500, ci=0.9, seed=7)
    pooled = np.sqrt(((a.size - 1) * np.var(a, ddof=1) + (b.size - 1) * np.var(b, ddof=1)) / (a.size + b.size - 2))
    assert d == pytest.approx((b.mean() - a.mean()) / pooled)
    # the documented protocol, one resample at a time
    draw = np.random.default_rng(7)
    ia, ib = draw.integers(0, a.size, (500, a.size)), draw.integers(0, b.size, (500, b.size))
    boots = []
    for k in range(500):
        x, y = a[ia[k]], b[ib[k]]
        s = np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2))
        boots.append((y.mean() - x.mean()) / s)
    assert lo == pytest.approx(np.percentile(boots, 5)) and hi == pytest.approx(np.percentile(boots, 95))
    assert lo < d < hi


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
