"""``python -m builders.combinations``: combine two steering vectors (seed 001 phase 2), each strategy with a coefficient sweep.

The command line only; the stage itself is :mod:`builders.stages.combinations`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import BuildError, base_parser, open_store_and_catalog, report, run
from builders.stages.combinations import DEFAULT_FACTORS, combine_runs


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.combinations", "Phase 2: combine two vectors' best steering configs.")
    parser.add_argument("--runs", nargs=2, required=True, metavar=("A", "B"), help="two steering runs (dataset refs)")
    parser.add_argument("--factors", default=",".join(str(f) for f in DEFAULT_FACTORS),
                        help="coefficient sweep, as multiples of each strategy's base coefficient")
    parser.add_argument("--threshold", type=float, default=70.0, help="coherence floor for 'best'")
    parser.add_argument("--max-batch", metavar="N|auto", default="auto",
                        help="rows per batched generate call, or auto (64 on the CPU, from the free memory on CUDA; "
                             "halved on out-of-memory)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    try:
        factors = [float(x) for x in args.factors.split(",") if x.strip()]
    except ValueError:
        raise BuildError(f"--factors: expected a comma list of numbers, got {args.factors!r}") from None
    report(combine_runs(store, catalog, args.runs[0], args.runs[1], factors=factors, threshold=args.threshold,
                        max_batch=args.max_batch, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
