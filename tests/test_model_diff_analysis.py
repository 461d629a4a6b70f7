"""analyses.model_diff: the transfer curve and its Pearson r / p against polars and scipy."""
from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats

from analyses.model_diff import pearson_columns, report_text, run_queries


@pytest.fixture
def con():
    rng = np.random.default_rng(0)
    steering = pl.DataFrame([
        {"trait": "syco", "extraction_variant": "a", "application": "b", "layer": k, "kind": "add", "direction": 1,
         "coef": c, "delta": float(rng.normal(k, 2)), "coherence_mean": float(rng.uniform(40, 100)),
         "vector_config": "s/a/response[:]/mean_diff"}
        for k in range(8) for c in (1.0, 2.0, 3.0)
    ] + [{"trait": "syco", "extraction_variant": "b", "application": "b", "layer": 0, "kind": "add", "direction": 1,
          "coef": 1.0, "delta": 99.0, "coherence_mean": 99.0, "vector_config": "s/b/response[:]/mean_diff"}])
    similarity = pl.DataFrame({"variant_a": ["a"] * 8, "variant_b": ["b"] * 8, "layer": list(range(8)),
                               "mean_cosine": list(rng.uniform(0.8, 1.0, 8))})
    weights = pl.DataFrame({"variant_a": ["a"] * 8, "variant_b": ["b"] * 8, "layer": list(range(8)),
                            "diff_norm": list(rng.uniform(0, 1, 8)), "residual_direction_norm": list(rng.uniform(0, 1, 8))})
    c = duckdb.connect()
    for name, frame in (("steering", steering), ("similarity", similarity), ("weights__layers", weights)):
        c.register(f"_{name}", frame.to_arrow())
        c.sql(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
    return c, steering, similarity


def test_transfer_curve_and_pearson(con):
    c, steering, similarity = con
    tables = run_queries(c, floor=70.0)
    transfer = tables["transfer"]
    expected = (steering.filter((pl.col("coherence_mean") >= 70) & (pl.col("extraction_variant") != pl.col("application")))
                .group_by("layer").agg(pl.col("delta").max()).sort("layer"))
    assert transfer["layer"].to_list() == expected["layer"].to_list()
    np.testing.assert_allclose(transfer["best_delta"].to_numpy(), expected["delta"].to_numpy())
    joined = expected.join(similarity, on="layer").sort("layer")
    r, p = stats.pearsonr(joined["mean_cosine"].to_numpy(), joined["delta"].to_numpy())
    row = tables["correlation"].row(0, named=True)
    assert row["layers"] == joined.height
    assert (row["pearson_r"], row["p_value"]) == (r, p)  # scipy.stats.pearsonr itself (code version 2)
    assert set(tables["profile"].columns) >= {"similarity", "weight_diff_norm", "transfer_delta"}
    text = report_text(c, tables, 70.0)
    assert f"r = {r:+.3f}" in text and "largest ‖Δθ‖" in text


def test_pearson_columns_are_scipy_and_skip_missing_layers():
    rng = np.random.default_rng(1)
    xs, ys = [list(rng.standard_normal(n)) for n in (3, 5, 12)], [list(rng.standard_normal(n)) for n in (3, 5, 12)]
    xs[2][4] = None  # a layer without a similarity: left out of r, as DuckDB's corr did
    r, p = pearson_columns(xs + [[0.1, 0.2], [1.0, 1.0, 1.0]], ys + [[0.3, 0.4], [1.0, 2.0, 3.0]])
    for k in range(3):
        keep = [i for i, x in enumerate(xs[k]) if x is not None]
        ref = stats.pearsonr([xs[k][i] for i in keep], [ys[k][i] for i in keep])
        assert (r[k], p[k]) == (ref.statistic, ref.pvalue)
    assert r[3:] == [None, None] and p[3:] == [None, None]  # 2 layers; no spread