"""``python -m builders.demo``: the demo experiment, end to end on the two offline models, in a few minutes on a CPU.

The command line only; the stage itself is :mod:`builders.stages.demo`.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from builders.shared.common import base_parser, open_store_and_catalog, run
from builders.stages.demo import FLOORS, ORGANISM, build_stages, print_summary


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.demo", __doc__.split("\n")[0])
    parser.add_argument("--experiment", default="demo")
    return parser


def main(args: argparse.Namespace) -> int:
    from analyses import model_diff
    from analyses.finding import finding_report
    from analyses.steering import analyze, print_tables
    from analyses.viewer import build_viewer

    store, catalog = open_store_and_catalog(args)
    started = time.time()
    stages = build_stages(store, catalog, args.experiment, force=args.force, quiet=args.quiet)
    print_summary(store, stages, started)
    analysis, tables = analyze(store, *FLOORS, force=args.force)
    print_tables({"best_layers": tables["best_layers"]}, *FLOORS)
    print(f"steering tables and heatmaps: {analysis.manifest.ref}; python -m analyses.steering --floors 80,70")
    diff, _, text = model_diff.analyze(store, FLOORS[1], force=args.force)
    print("\n" + text)
    print(f"model-diff tables, plots and report: {diff.manifest.ref}; python -m analyses.model_diff --floor 70")
    print("\n" + finding_report(store, args.experiment, plant=-1 if ORGANISM["polarity"] == "neg" else 1))
    projections = next(m for stage, m, _ in stages.results if stage == "projections")
    viewer = build_viewer(store, projections.ref, force=args.force).manifest
    print(f"\ntrait-dynamics viewer (per-token projections, steering heatmaps, steered responses):\n"
          f"  open {store.location.uri(store.path(viewer, 'index.html'))}")
    print("\nnext: python -m store ls | python -m store lineage <dataset> | python -m store sql \"SELECT * FROM catalog\"")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
