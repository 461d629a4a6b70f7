"""``python -m builders.projections``: per-token projections of a prompt set's activations onto many trait vectors (seed 004).

The command line only; the stage itself is :mod:`builders.stages.projections`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import BuildError, add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.projections import build_projections


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.projections", "Per-token projections onto trait vectors.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, metavar="SET")
    parser.add_argument("--vectors", action="append", default=[], metavar="REF[:METHOD]", help="repeatable")
    parser.add_argument("--layers", default="best", help="9,12 | 30%%-60%% | best | best+2 (per vector set)")
    parser.add_argument("--floor", type=float, default=70.0, help="coherence floor for 'best'")
    parser.add_argument("--live", action="store_true", help="score inside the model during generation")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--batch-size", metavar="N|auto",
                        help="with --live: prompts per generation batch, or auto (default: the catalog's responses "
                             "setting; auto is 8 on the CPU, from the free memory on CUDA; halved on out-of-memory)")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.batch_size is not None and not args.live:
        raise BuildError("--batch-size applies to --live (stored projections generate nothing)")
    store, catalog = open_store_and_catalog(args)
    report(build_projections(store, catalog, args.variant, args.prompts, args.vectors, experiment=args.experiment,
                             layers=args.layers, floor=args.floor, live=args.live,
                             generation={"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size},
                             force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
