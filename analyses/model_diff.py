"""Transfer analysis and the model-diff report (seed 001 phases 3-4 checkpoints), DuckDB SQL.

    python -m analyses.model_diff [--floor 70]

- ``transfer``: per trait, extraction variant A, application variant B (A ≠ B) and layer,
  the best trait delta (in the run's direction) at coherence ≥ ``--floor`` over the
  steering runs whose vectors came from A and steered B: the transfer curve;
- ``correlation``: per trait and (A, B), Pearson r between per-layer activation
  similarity (``similarity`` tables of the same A, B) and the transfer curve — r and the
  two-sided p from ``scipy.stats.pearsonr`` (:func:`transforms.stats.pearson`);
- ``profile``: per (A, B) and layer: similarity, weight-diff norm, residual-facing
  direction norm, transfer delta — one figure per (A, B) (``plots/*.png``);
- ``report.md``: the seed's checkpoint questions answered with these numbers.
Published as ``analysis-model-diff``.
"""
from __future__ import annotations

import argparse
import logging
import math
import re
from typing import TYPE_CHECKING, Any, Sequence

from builders.shared import names
from builders.shared.figures import png_bytes, subplots
from store import BuildResult, BuildSpec, Store

if TYPE_CHECKING:
    import duckdb
    import polars as pl

log = logging.getLogger(__name__)

BUILDER = "analyses.model_diff"
CODE_VERSION = "2"  # 2: r and p from scipy.stats.pearsonr (were DuckDB corr + a hand-written t test; p equal to 1e-9)
DATASET = names.analysis("model-diff")


def transfer_sql(floor: float) -> str:
    return f"""
SELECT trait, extraction_variant AS variant_a, application AS variant_b, layer,
       max(direction * delta) AS best_gain, arg_max(delta, direction * delta) AS best_delta,
       arg_max(vector_config, direction * delta) AS vector_config
FROM steering
WHERE kind = 'add' AND layer IS NOT NULL AND delta IS NOT NULL AND coherence_mean >= {floor}
  AND extraction_variant <> application
GROUP BY ALL ORDER BY trait, variant_a, variant_b, layer
"""


CORRELATION_SQL = """
WITH sim AS (SELECT variant_a, variant_b, layer, avg(mean_cosine) AS similarity FROM similarity GROUP BY ALL),
pairs AS (SELECT t.trait, t.variant_a, t.variant_b, t.layer, s.similarity, t.best_delta
          FROM transfer t JOIN sim s USING (variant_a, variant_b, layer))
SELECT trait, variant_a, variant_b, count(*) AS layers, list(similarity ORDER BY layer) AS similarity,
       list(best_delta ORDER BY layer) AS best_delta
FROM pairs GROUP BY ALL ORDER BY trait, variant_a, variant_b
"""

PROFILE_SQL = """
WITH sim AS (SELECT variant_a, variant_b, layer, avg(mean_cosine) AS similarity FROM similarity GROUP BY ALL),
w AS (SELECT variant_a, variant_b, layer, any_value(diff_norm) AS weight_diff_norm,
             any_value(residual_direction_norm) AS residual_direction_norm FROM weights__layers GROUP BY ALL),
t AS (SELECT variant_a, variant_b, layer, max(best_delta) AS transfer_delta FROM transfer GROUP BY ALL),
keys AS (SELECT variant_a, variant_b, layer FROM sim UNION SELECT variant_a, variant_b, layer FROM w
         UNION SELECT variant_a, variant_b, layer FROM t)
SELECT k.variant_a, k.variant_b, k.layer, sim.similarity, w.weight_diff_norm, w.residual_direction_norm,
       t.transfer_delta
FROM keys k LEFT JOIN sim USING (variant_a, variant_b, layer) LEFT JOIN w USING (variant_a, variant_b, layer)
LEFT JOIN t USING (variant_a, variant_b, layer)
ORDER BY k.variant_a, k.variant_b, k.layer
"""


def pearson_columns(similarity: Sequence[Sequence[float | None]],
                    best_delta: Sequence[Sequence[float | None]]) -> tuple[list[float | None], list[float | None]]:
    """Per (trait, A, B): Pearson r and two-sided p over the layers where both values are
    present (:func:`transforms.stats.pearson`, i.e. ``scipy.stats.pearsonr``); ``None`` when
    undefined (fewer than 3 layers, or no spread)."""
    from transforms.stats import pearson

    rs: list[float | None] = []
    ps: list[float | None] = []
    for xs, ys in zip(similarity, best_delta):
        pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        r, p = pearson([x for x, _ in pairs], [y for _, y in pairs]) if pairs else (math.nan, math.nan)
        rs.append(None if math.isnan(r) else r)
        ps.append(None if math.isnan(p) else p)
    return rs, ps


def _views(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def run_queries(con: duckdb.DuckDBPyConnection, floor: float = 70.0) -> dict[str, pl.DataFrame]:
    import polars as pl

    views = _views(con)
    out: dict[str, Any] = {}
    if "steering" in views:
        out["transfer"] = con.sql(transfer_sql(floor)).pl()
        con.register("transfer", out["transfer"].to_arrow())
    else:
        con.sql("CREATE TEMP TABLE transfer (trait VARCHAR, variant_a VARCHAR, variant_b VARCHAR, layer BIGINT, "
                "best_gain DOUBLE, best_delta DOUBLE, vector_config VARCHAR)")
        out["transfer"] = con.sql("SELECT * FROM transfer").pl()
    if "similarity" in views:
        corr = con.sql(CORRELATION_SQL).pl()
        r, p = pearson_columns(corr["similarity"].to_list(), corr["best_delta"].to_list())
        out["correlation"] = corr.drop("similarity", "best_delta").with_columns(
            pl.Series("pearson_r", r, dtype=pl.Float64), pl.Series("p_value", p, dtype=pl.Float64))
    if "similarity" in views and "weights__layers" in views:
        out["profile"] = con.sql(PROFILE_SQL).pl()
    return out


def profile_plot(frame: pl.DataFrame, title: str) -> bytes:
    """Similarity, weight-diff norm and transfer delta per layer, stacked on one layer axis."""
    series = [("similarity", "activation cosine (B replays A)"), ("weight_diff_norm", "‖θ_B − θ_A‖_F"),
              ("transfer_delta", "best trait Δ, A's vectors on B")]
    fig, axes = subplots(len(series), 1, figsize=(8, 6.5), sharex=True)
    for ax, (column, label) in zip(axes, series):
        pts = [(r["layer"], r[column]) for r in frame.iter_rows(named=True) if r[column] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("layer")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def report_text(con: duckdb.DuckDBPyConnection, tables: dict[str, Any], floor: float) -> str:
    """The seed's phase 3-4 checkpoint questions, answered from the tables."""
    views = _views(con)
    lines = ["# Model diff report", ""]
    if "weights__layers" in views:
        lines += ["## Weight space (phase 3)", ""]
        for a, b in con.sql("SELECT DISTINCT variant_a, variant_b FROM weights__layers ORDER BY ALL").fetchall():
            top = con.sql(f"SELECT layer, diff_norm FROM weights__layers WHERE variant_a = '{a}' AND variant_b = '{b}' "
                          "ORDER BY diff_norm DESC LIMIT 3").fetchall()
            lines.append(f"- {b} vs {a}: largest ‖Δθ‖ at layers "
                         + ", ".join(f"{k} ({v:.4g})" for k, v in top) + ".")
        if "steering" in views:
            best = con.sql(f"SELECT vector_config || ' on ' || application, arg_max(layer, direction * delta) "
                           f"FROM steering WHERE kind = 'add' AND layer IS NOT NULL AND coherence_mean >= {floor} "
                           f"GROUP BY 1 ORDER BY 1").fetchall()
            if best:
                lines.append("- Best steering layers (coherence ≥ {:g}): ".format(floor)
                             + "; ".join(f"{c}: {k}" for c, k in best) + ".")
        if "weights__logit_lens" in views:
            lens = con.sql("WITH top AS (SELECT layer FROM weights__layers ORDER BY residual_direction_norm DESC LIMIT 1) "
                           "SELECT direction, string_agg(token, ' | ' ORDER BY rank) FROM weights__logit_lens "
                           "WHERE layer = (SELECT layer FROM top) AND rank < 10 GROUP BY 1 ORDER BY 1 DESC").fetchall()
            for direction, tokens in lens:
                lines.append(f"- Logit lens of the largest residual-facing diff, {direction}: {tokens}")
        if "weights__alignment" in views:
            peak = con.sql("SELECT vector_config, arg_max(layer, abs(cosine)), max(abs(cosine)) FROM weights__alignment "
                           "GROUP BY 1 ORDER BY 1").fetchall()
            for config, layer, value in peak:
                lines.append(f"- Alignment of Δθ with {config}: peaks at layer {layer} (|cos| {value:.3f}).")
        lines.append("")
    if "similarity" in views:
        lines += ["## Activation similarity and transfer (phase 4)", ""]
        for a, b, layer, value in con.sql("SELECT variant_a, variant_b, arg_min(layer, mean_cosine), min(mean_cosine) "
                                          "FROM similarity GROUP BY 1, 2 ORDER BY 1, 2").fetchall():
            lines.append(f"- {b} replaying {a}: lowest mean cosine {value:.4f} at layer {layer}.")
        for row in tables.get("correlation", []).iter_rows(named=True) if "correlation" in tables else []:
            r, p = row["pearson_r"], row["p_value"]
            lines.append(f"- {row['trait']}: similarity vs transfer ({row['variant_a']} → {row['variant_b']}), "
                         f"{row['layers']} layers: r = {'n/a' if r is None else f'{r:+.3f}'}, "
                         f"p = {'n/a' if p is None else f'{p:.3g}'} (exploratory).")
        if "correlation" not in tables or not tables["correlation"].height:
            lines.append("- No steering run applies one variant's vectors to the other: no transfer curve yet.")
        lines.append("")
    if "compare" in views:
        lines += ["## Finetuning shift", ""]
        for ref, pos, n, d in con.sql("SELECT vectors, sum(CASE WHEN shift > 0 THEN 1 ELSE 0 END), count(*), "
                                      "max(d_paired) FROM compare GROUP BY 1 ORDER BY 1").fetchall():
            lines.append(f"- {ref}: projection shift positive at {pos} of {n} layers (max paired d {d:+.3f}).")
        lines.append("")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def analyze(store: Store, floor: float = 70.0, force: bool = False) -> tuple[BuildResult, dict[str, Any], str]:
    from store.sql import connect

    kinds = ("steering", "similarity", "weights", "compare")
    sources = [store.latest(n) for n in store.datasets() if store.latest(n).kind in kinds]
    if not any(m.kind in ("similarity", "weights") for m in sources):
        raise ValueError("no similarity or weights datasets yet: run builders.similarity / builders.weights first")
    con = connect(store)
    tables = run_queries(con, floor)
    text = report_text(con, tables, floor)
    spec = BuildSpec(name=DATASET, kind="analysis", builder=BUILDER, code_version=CODE_VERSION,
                     params={"floor": floor}, parents={m.name: m.ref for m in sources}, identity={})

    def produce(writer: Any) -> None:
        writer.write_table(tables["transfer"])
        for name in ("correlation", "profile"):
            if name in tables and tables[name].height:
                writer.write_table(tables[name], table=name)
        if "profile" in tables:
            for (a, b), frame in sorted(tables["profile"].group_by(["variant_a", "variant_b"]), key=lambda kv: kv[0]):
                writer.write_bytes(f"plots/{_slug(f'{a}-vs-{b}')}.png", profile_plot(frame.sort("layer"), f"{b} vs {a}"))
        writer.write_bytes("report.md", text.encode())

    return store.build(spec, produce, force=force), tables, text


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import analysis_parser, run

    parser = analysis_parser("python -m analyses.model_diff", __doc__.split("\n")[0])
    parser.add_argument("--floor", type=float, default=70.0, help="coherence floor of the transfer curve")
    return run(_main, parser, argv)


def _main(args: argparse.Namespace) -> int:
    result, _, text = analyze(Store(args.store), args.floor, args.force)
    print(text)
    print(f"{'built' if result.built else 'up to date'}: {result.manifest.ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
