"""``python -m builders.demo``: the demo experiment, end to end on the two offline models, on a CPU.

A thin alias: it runs ``python -m builders.run --experiment demo`` (the stages declared in
``catalog.yaml``) and then prints the demo's report (:mod:`builders.stages.demo`): the datasets,
the steering tables, the model-diff report and the finding, each read from the store.
Rerunning it is a no-op.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from builders.shared.common import base_parser, open_store_and_catalog, run


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.demo", __doc__.split("\n")[0])
    parser.add_argument("--experiment", default="demo")
    return parser


def main(args: argparse.Namespace) -> int:
    from builders.graph.execute import RunContext, execute, make_plan
    from builders.run import on_event, print_plan, print_summary
    from builders.stages.demo import print_outputs, print_report

    store, catalog = open_store_and_catalog(args)
    started = time.time()
    planned = make_plan(store, catalog, args.experiment, force=args.force)
    print_plan(planned)
    ctx = RunContext(store, catalog, planned.experiment, force=args.force, quiet=args.quiet)
    outcomes = execute(planned, ctx, on_event)
    status = print_summary(outcomes, time.time() - started)
    print_outputs(store, outcomes)
    if status:
        return status
    print_report(store, planned.experiment, outcomes, force=args.force)
    print("\nnext: python -m store ls | python -m store lineage <dataset> | python -m store sql \"SELECT * FROM catalog\"")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
