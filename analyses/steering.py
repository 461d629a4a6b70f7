"""Steering analyses as DuckDB SQL over the store's steering tables (seed 001 checkpoints).

    python -m analyses.steering                      # print, publish tables + heatmaps to the store
    python -m analyses.steering --floors 80,70 --no-plots

Tables (each a query over the ``steering`` / ``combinations`` views of the latest versions):

- ``best_layers``: per vector config (source set / extraction variant / position / method)
  and application variant: best layer (largest trait gain at coherence ≥ the low floor),
  maximum trait delta at coherence ≥ the high floor and ≥ the low floor (with layer and
  coefficient), and where coherence first drops below the high floor at the best layer
  (smallest perturbation ratio ``|coef|·‖v‖/‖h‖`` whose coherence is below it);
- ``methods``: per source (set, variant, position), every method's best delta and layer
  at coherence ≥ the low floor, one column per method;
- ``phase2``: per combinations run, the best single vectors and each strategy's best
  configuration at coherence ≥ the low floor.

"Gain" is ``direction · delta``: a run suppressing a trait (direction -1) is best at its
most negative delta. Everything is published as one ``analysis-steering`` version (the
tables, plus ``heatmaps/*.png``: layer × perturbation ratio, trait delta and coherence).
"""
from __future__ import annotations

import argparse
import logging
import re
from typing import TYPE_CHECKING, Any, Sequence

from builders.shared import names
from builders.shared.figures import png_bytes, subplots
from store import BuildResult, BuildSpec, Store

if TYPE_CHECKING:
    import duckdb
    import polars as pl

log = logging.getLogger(__name__)

BUILDER = "analyses.steering"
CODE_VERSION = "1"
DATASET = names.analysis("steering")

_SINGLE = """
SELECT *, direction * delta AS gain FROM steering
WHERE kind = 'add' AND layer IS NOT NULL AND delta IS NOT NULL
"""


def best_layers_sql(high: float, low: float) -> str:
    return f"""
WITH r AS ({_SINGLE}),
configs AS (SELECT DISTINCT vector_config, application FROM r),
at_high AS (
  SELECT vector_config, application, arg_max(delta, gain) AS max_delta_high,
         arg_max(layer, gain) AS layer_high, arg_max(coef, gain) AS coef_high
  FROM r WHERE coherence_mean >= {high} GROUP BY ALL),
at_low AS (
  SELECT vector_config, application, arg_max(delta, gain) AS max_delta_low, arg_max(layer, gain) AS best_layer,
         arg_max(coef, gain) AS best_coef, arg_max(coherence_mean, gain) AS best_coherence
  FROM r WHERE coherence_mean >= {low} GROUP BY ALL),
drops AS (
  SELECT r.vector_config, r.application, min(r.perturbation_ratio) AS drop_ratio,
         arg_min(r.coef, r.perturbation_ratio) AS drop_coef
  FROM r JOIN at_low l ON r.vector_config = l.vector_config AND r.application = l.application
                      AND r.layer = l.best_layer
  WHERE r.coherence_mean < {high} GROUP BY ALL)
SELECT c.vector_config, c.application, l.best_layer, l.best_coef, l.max_delta_low, l.best_coherence,
       h.max_delta_high, h.layer_high, h.coef_high, d.drop_ratio AS coherence_drop_ratio,
       d.drop_coef AS coherence_drop_coef
FROM configs c
LEFT JOIN at_low l USING (vector_config, application)
LEFT JOIN at_high h USING (vector_config, application)
LEFT JOIN drops d USING (vector_config, application)
ORDER BY c.application, c.vector_config
"""


def methods_sql(low: float) -> str:
    return f"""
WITH r AS ({_SINGLE} AND coherence_mean >= {low}),
best AS (
  SELECT source_set || '/' || extraction_variant || '/' || position AS source, application, method,
         arg_max(delta, gain) AS max_delta, arg_max(layer, gain) AS layer
  FROM r GROUP BY ALL)
PIVOT best ON method USING first(max_delta) AS delta, first(layer) AS layer
ORDER BY application, source
"""


def phase2_sql(low: float) -> str:
    return f"""
WITH r AS (SELECT *, direction * delta AS gain FROM combinations WHERE delta IS NOT NULL AND strategy <> 'baseline'),
ok AS (SELECT * FROM r WHERE strategy LIKE 'single:%' OR coherence_mean >= {low})
SELECT dataset AS combination, strategy, arg_max(layers, gain) AS layers, arg_max(coef, gain) AS coef,
       arg_max(factor, gain) AS factor, arg_max(delta, gain) AS trait_delta,
       arg_max(coherence_mean, gain) AS coherence,
       CASE WHEN strategy = 'single:A' THEN any_value(vector_a) WHEN strategy = 'single:B' THEN any_value(vector_b)
            ELSE 'A+B' END AS vectors
FROM ok GROUP BY dataset, strategy
ORDER BY combination, CASE WHEN strategy LIKE 'single:%' THEN 0 ELSE 1 END, strategy
"""


def _has_view(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.sql(f"SELECT 1 FROM duckdb_views() WHERE view_name = '{name}'").fetchall())


def run_queries(con: duckdb.DuckDBPyConnection, high: float = 80.0, low: float = 70.0) -> dict[str, pl.DataFrame]:
    """The analysis tables, computed on a connection with the store's views."""
    out: dict[str, Any] = {}
    if not _has_view(con, "steering"):
        raise ValueError("the store has no steering runs yet: run python -m builders.steering first")
    out["best_layers"] = con.sql(best_layers_sql(high, low)).pl()
    out["methods"] = con.sql(methods_sql(low)).pl()
    if _has_view(con, "combinations"):
        out["phase2"] = con.sql(phase2_sql(low)).pl()
    return out


def heatmap(frame: pl.DataFrame, title: str) -> bytes:
    """PNG: layer × perturbation ratio (2 significant digits), trait delta and coherence."""
    import numpy as np

    ratios = sorted({float(f"{r:.2g}") for r in frame["perturbation_ratio"].to_list()})
    layers = sorted(set(frame["layer"].to_list()))
    fig, axes = subplots(1, 2, figsize=(max(6, 1.0 + 0.6 * len(ratios)) * 2, 1.5 + 0.4 * len(layers)))
    for ax, column, cmap, label in ((axes[0], "delta", "RdBu_r", "trait delta"),
                                    (axes[1], "coherence_mean", "viridis", "coherence")):
        grid = np.full((len(layers), len(ratios)), np.nan)
        for row in frame.iter_rows(named=True):
            grid[layers.index(row["layer"]), ratios.index(float(f"{row['perturbation_ratio']:.2g}"))] = row[column]
        if column == "delta":
            span = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
            image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-span, vmax=span, origin="lower")
        else:
            image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=100, origin="lower")
        ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios], rotation=45)
        ax.set_yticks(range(len(layers)), [str(k) for k in layers])
        ax.set_xlabel("perturbation ratio |coef|·‖v‖/‖h‖")
        ax.set_ylabel("layer")
        ax.set_title(label)
        fig.colorbar(image, ax=ax)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def analyze(store: Store, high: float = 80.0, low: float = 70.0, plots: bool = True,
            force: bool = False) -> tuple[BuildResult, dict[str, Any]]:
    """Compute the tables and heatmaps over the latest steering runs and publish them."""
    from store.sql import connect

    if not high >= low:
        raise ValueError(f"the high coherence floor ({high}) must be >= the low one ({low})")
    sources = [store.latest(n) for n in store.datasets() if store.latest(n).kind in ("steering", "combinations")]
    if not sources:
        raise ValueError("the store has no steering runs yet: run python -m builders.steering first")
    con = connect(store)
    tables = run_queries(con, high, low)
    spec = BuildSpec(name=DATASET, kind="analysis", builder=BUILDER, code_version=CODE_VERSION,
                     params={"floors": [high, low], "plots": plots},
                     parents={m.name: m.ref for m in sources}, identity={})

    def produce(writer: Any) -> None:
        writer.write_table(tables["best_layers"])
        for name in ("methods", "phase2"):
            if name in tables and tables[name].height:
                writer.write_table(tables[name], table=name)
        if plots:
            runs = con.sql(f"SELECT * FROM ({_SINGLE}) WHERE perturbation_ratio IS NOT NULL").pl()
            for (config, application), frame in sorted(runs.group_by(["vector_config", "application"]),
                                                       key=lambda kv: kv[0]):
                png = heatmap(frame, f"{config} on {application}")
                writer.write_bytes(f"heatmaps/{_slug(application + '-' + config)}.png", png)
        writer.summary.update({"vector_configs": tables["best_layers"].height})

    return store.build(spec, produce, force=force), tables


def print_tables(tables: dict[str, Any], high: float, low: float) -> None:
    import polars as pl

    from store.cli import print_frame

    titles = {"best_layers": f"best layer per vector config (coherence floors {high:g} / {low:g})",
              "methods": f"method comparison: best trait delta at coherence >= {low:g}",
              "phase2": f"phase 2: combination strategies vs best single vectors (coherence >= {low:g})"}
    for name, title in titles.items():
        if name in tables:
            print(f"\n{title}")
            print_frame(tables[name].with_columns(pl.col(pl.Float64).round(3)))


def build_parser() -> argparse.ArgumentParser:
    from .cli import analysis_parser

    parser = analysis_parser("python -m analyses.steering", __doc__.split("\n")[0])
    parser.add_argument("--floors", default="80,70", help="high,low coherence floors")
    parser.add_argument("--no-plots", action="store_true", help="skip the heatmaps")
    return parser


def parse_floors(text: str) -> tuple[float, float]:
    try:
        high, low = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--floors: expected two numbers 'high,low', got {text!r}") from None
    return high, low


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import run

    return run(_main, build_parser(), argv)


def _main(args: argparse.Namespace) -> int:
    high, low = parse_floors(args.floors)
    result, tables = analyze(Store(args.store), high, low, plots=not args.no_plots, force=args.force)
    print_tables(tables, high, low)
    m = result.manifest
    plots = sorted(p for p in m.files if p.startswith("heatmaps/"))
    where = Store(args.store)
    print(f"\n{'built' if result.built else 'up to date'}: {m.ref}; heatmaps: {len(plots)} under "
          f"{where.location.uri(where.path(m, 'heatmaps'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
