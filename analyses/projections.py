"""Analyses over per-token projections (seeds 002, 004), DuckDB SQL plus small numpy.

    python -m analyses.projections --projections projections-demo-instruct-general
    python -m analyses.projections --projections <ds> --group-by note --groups jailbreak_success,jailbreak_fail
    python -m analyses.projections --projections <ds> --decompose "helpfulness_expressed:mean_diff>1.0,helpfulness_intent:mean_diff<0"

- ``summary``: per sample, layer and vector: mean and max over response tokens, mean over a
  response token range (``--range 0:5``), joined with the prompt's metadata (note,
  polarity, prompt) and, when a judgments dataset of the same variant and set exists, its
  trait score and vetting;
- ``groups``: Cohen's d (pooled sd, ddof=1) of a summary metric between two groups of a
  column, with a BCa bootstrap interval (:func:`cohens_d_bootstrap`);
- ``decomposition``: samples where every condition ``vector>x`` / ``vector<x`` on the
  summary metric holds (one SQL query: a pivot of the summary);
- ``correlations``: Pearson r of two vectors' per-token response scores at lags 0..k
  (vector B shifted k tokens later, within each sample), per layer.
Published as ``analysis-<projections dataset>``.
"""
from __future__ import annotations

import argparse
import logging
import re
from typing import TYPE_CHECKING, Any, Sequence

from builders.shared import names
from store import BuildResult, BuildSpec, Store

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

log = logging.getLogger(__name__)

BUILDER = "analyses.projections"
# 2: prompts and judgments pinned and recorded as parents (were latest, unrecorded)
# 3: the groups' interval is scipy's BCa bootstrap (was a percentile bootstrap over finite draws)
CODE_VERSION = "3"
METRICS = ("mean_response", "max_response", "mean_range")


def summary_sql(projections: str, prompts: str, judgments: str | None, token_range: tuple[int, int]) -> str:
    lo, hi = token_range
    judged = (f"LEFT JOIN (SELECT prompt_id, rollout, trait_score, passes FROM {judgments}) j "
              f"ON j.prompt_id = s.prompt_id AND s.sample = j.prompt_id || ':' || j.rollout") if judgments else ""
    judged_cols = ", j.trait_score, j.passes" if judgments else ""
    return f"""
WITH r AS (
  SELECT *, token_index - min(CASE WHEN is_response THEN token_index END)
              OVER (PARTITION BY sample, layer, vector) AS response_pos
  FROM {projections}),
s AS (
  SELECT sample, prompt_id, layer, vector,
         avg(score) FILTER (WHERE is_response) AS mean_response,
         max(score) FILTER (WHERE is_response) AS max_response,
         avg(score) FILTER (WHERE is_response AND response_pos >= {lo} AND response_pos < {hi}) AS mean_range,
         count(*) FILTER (WHERE is_response) AS response_tokens
  FROM r GROUP BY ALL)
SELECT s.*, p.note, p.polarity, p.prompt{judged_cols}
FROM s LEFT JOIN {prompts} p ON p.prompt_id = s.prompt_id {judged}
ORDER BY s.vector, s.layer, s.sample
"""


def lag_correlation_sql(projections: str, max_lag: int) -> str:
    lags = " UNION ALL ".join(f"SELECT {k} AS lag" for k in range(max_lag + 1))
    return f"""
WITH r AS (SELECT sample, layer, vector, token_index, score FROM {projections} WHERE is_response),
pairs AS (
  SELECT a.layer, a.vector AS vector_a, b.vector AS vector_b, l.lag, a.score AS score_a, b.score AS score_b
  FROM r a CROSS JOIN ({lags}) l
  JOIN r b ON b.sample = a.sample AND b.layer = a.layer AND b.token_index = a.token_index + l.lag
  WHERE a.vector < b.vector OR (a.vector = b.vector AND l.lag > 0))
SELECT layer, vector_a, vector_b, lag, count(*) AS tokens, corr(score_a, score_b) AS pearson_r
FROM pairs GROUP BY ALL ORDER BY layer, vector_a, vector_b, lag
"""


def decomposition_sql(summary: str, conditions: Sequence[tuple[str, str, float]], metric: str, layer: int | None) -> str:
    """Samples meeting every ``(vector, op, threshold)`` on ``metric`` (one layer or each)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    cols = ", ".join(f"max(CASE WHEN vector = '{v.replace(chr(39), '')}' THEN {metric} END) AS c{i}"
                     for i, (v, _, _) in enumerate(conditions))
    where = " AND ".join(f"c{i} {op} {float(x)}" for i, (_, op, x) in enumerate(conditions))
    layer_filter = f"WHERE layer = {int(layer)}" if layer is not None else ""
    named = ", ".join('c{} AS "{}"'.format(i, v.replace('"', "")) for i, (v, _, _) in enumerate(conditions))
    return (f"SELECT sample, prompt_id, layer, {named} "
            f"FROM (SELECT sample, prompt_id, layer, {cols} FROM {summary} {layer_filter} GROUP BY ALL) "
            f"WHERE {where} ORDER BY layer, sample")


def parse_conditions(text: str) -> list[tuple[str, str, float]]:
    """``"a:mean_diff>1.5,b:mean_diff<0"`` -> ``[("a:mean_diff", ">", 1.5), ...]``."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(.+?)\s*(>=|<=|>|<)\s*(-?[0-9.]+(?:e-?\d+)?)\s*", part)
        if not m:
            raise ValueError(f"--decompose: bad condition {part!r} (expected vector>number or vector<number)")
        out.append((m.group(1), m.group(2), float(m.group(3))))
    return out


def cohens_d_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, ci: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """``(d, lo, hi)``: Cohen's d (mean b − mean a over the pooled sd, ddof=1) and its BCa
    bootstrap interval (:func:`transforms.stats.bootstrap_ci`: ``scipy.stats.bootstrap``, each
    group resampled on its own, ``default_rng(seed)``); ``lo``/``hi`` are nan where BCa is
    undefined (a resample or leave-one-out group without spread, e.g. groups of 2). Until
    code version 3 this was a percentile interval over the finite draws only."""
    import numpy as np

    from transforms.stats import bootstrap_ci, cohens_d, cohens_d_axis

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"each group needs at least 2 values (got {a.size} and {b.size})")
    d = cohens_d(b, a)
    if not np.isfinite(d):  # no spread in either group: no interval either
        return d, float("nan"), float("nan")
    lo, hi = bootstrap_ci(lambda x, y, axis=-1: cohens_d_axis(y, x, axis), (a, b), n_resamples=n_boot,
                          confidence=ci, seed=seed)
    return d, lo, hi


def group_rows(summary: pl.DataFrame, column: str, groups: tuple[str, str], metric: str,
               n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per layer and vector: group sizes, means, Cohen's d (second − first) and its interval."""
    if column not in summary.columns:
        raise ValueError(f"--group-by {column!r}: not a summary column ({', '.join(summary.columns)})")
    rows = []
    for (layer, vector), frame in sorted(summary.group_by(["layer", "vector"]), key=lambda kv: kv[0]):
        values = [frame.filter(frame[column].cast(str) == g)[metric].drop_nulls().to_numpy() for g in groups]
        if min(v.size for v in values) < 2:
            continue
        d, lo, hi = cohens_d_bootstrap(values[0], values[1], n_boot, seed=seed)
        rows.append({"layer": layer, "vector": vector, "metric": metric, "group_a": groups[0], "group_b": groups[1],
                     "n_a": int(values[0].size), "n_b": int(values[1].size), "mean_a": float(values[0].mean()),
                     "mean_b": float(values[1].mean()), "cohens_d": d, "ci_low": lo, "ci_high": hi})
    return rows


def analyze(store: Store, projections: str, *, token_range: tuple[int, int] = (0, 5), group_by: str | None = None,
            groups: tuple[str, str] | None = None, metric: str = "mean_response", decompose: str | None = None,
            max_lag: int = 3, n_boot: int = 2000, seed: int = 0, force: bool = False) -> tuple[BuildResult, dict]:
    from .lineage import judgments_of, pinned_connection, prompts_of

    manifest = store.resolve(projections)
    if manifest.kind != "projections":
        raise ValueError(f"{manifest.ref} is a {manifest.kind} dataset, not projections")
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}")
    # every input resolved once here: these exact versions are the parents and the views
    inputs = {"projections": manifest, "prompts": prompts_of(store, manifest),
              "judgments": judgments_of(store, manifest)}
    inputs = {k: m for k, m in inputs.items() if m is not None}
    if "prompts" not in inputs:
        raise ValueError(f"{manifest.ref}: no version of {names.prompts(str(manifest.params.get('prompt_set')))} in its lineage "
                         f"or the store")
    con = pinned_connection(store, inputs)
    tables: dict[str, Any] = {}
    summary_query = summary_sql("projections", "prompts", "judgments" if "judgments" in inputs else None, token_range)
    tables["summary"] = con.sql(summary_query).pl()
    con.register("summary_table", tables["summary"].to_arrow())
    tables["correlations"] = con.sql(lag_correlation_sql("projections", max_lag)).pl()
    if group_by:
        if not groups:
            raise ValueError("--group-by needs --groups A,B")
        tables["groups"] = group_rows(tables["summary"], group_by, groups, metric, n_boot, seed)
    if decompose:
        tables["decomposition"] = con.sql(decomposition_sql("summary_table", parse_conditions(decompose), metric,
                                                            None)).pl()
    params = {"projections": manifest.ref, "range": list(token_range), "group_by": group_by,
              "groups": list(groups) if groups else None, "metric": metric, "decompose": decompose,
              "max_lag": max_lag, "bootstrap": n_boot, "seed": seed}
    spec = BuildSpec(name=names.analysis(manifest.name), kind="analysis", builder=BUILDER, code_version=CODE_VERSION,
                     params=params, parents={k: m.ref for k, m in inputs.items()}, identity={})

    def produce(writer: Any) -> None:
        writer.write_table(tables["summary"])
        for name in ("correlations", "groups", "decomposition"):
            value = tables.get(name)
            if value is not None and len(value):
                writer.write_table(value, table=name)

    return store.build(spec, produce, force=force), tables


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import analysis_parser, run

    parser = analysis_parser("python -m analyses.projections", __doc__.split("\n")[0])
    parser.add_argument("--projections", required=True, metavar="DATASET")
    parser.add_argument("--range", default="0:5", help="response token range a:b for mean_range")
    parser.add_argument("--group-by", help="summary column whose two groups are compared (e.g. note, passes)")
    parser.add_argument("--groups", help="the two values, comma separated")
    parser.add_argument("--metric", default="mean_response", choices=METRICS)
    parser.add_argument("--decompose", help="conditions like 'a:mean_diff>1,b:mean_diff<0'")
    parser.add_argument("--max-lag", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    return run(_main, parser, argv)


def _main(args: argparse.Namespace) -> int:
    import polars as pl

    from store.cli import print_frame

    lo, hi = (int(x) for x in args.range.split(":"))
    groups = tuple(args.groups.split(",")) if args.groups else None
    if groups is not None and len(groups) != 2:
        raise ValueError("--groups: expected exactly two values A,B")
    result, tables = analyze(Store(args.store), args.projections, token_range=(lo, hi), group_by=args.group_by,
                             groups=groups, metric=args.metric, decompose=args.decompose, max_lag=args.max_lag,
                             n_boot=args.bootstrap, seed=args.seed, force=args.force)
    for name, value in tables.items():
        frame = value if isinstance(value, pl.DataFrame) else pl.DataFrame(value)
        print(f"\n{name}")
        print_frame(frame.drop([c for c in ("prompt",) if c in frame.columns]))
    print(f"\n{'built' if result.built else 'up to date'}: {result.manifest.ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
