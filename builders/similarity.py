"""``python -m builders.similarity``: activation similarity of two variants on A's response tokens (seed 001 phase 4, step 4c-4d).

The command line only; the stage itself is :mod:`builders.stages.similarity`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_variant_pair_args, base_parser, open_store_and_catalog, report, run
from builders.stages.similarity import activation_similarity


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.similarity", "Per-layer / per-position activation similarity of two variants.")
    add_variant_pair_args(parser, "variant whose responses are replayed (e.g. instruct)",
                          "variant that replays them (e.g. base, finetuned)")
    parser.add_argument("--prompts", required=True, metavar="SET")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--min-share", type=float, default=0.8, help="positions reached by at least this share of prompts")
    parser.add_argument("--batch-size", metavar="N|auto", default="auto",
                        help="prompts per batch, or auto (8 on the CPU, from the free memory on CUDA; halved on "
                             "out-of-memory)")
    parser.add_argument("--max-new-tokens", type=int, help="for responses built on the way")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    report(activation_similarity(store, catalog, args.a, args.b, args.prompts, experiment=args.experiment,
                                 layers=args.layers, min_share=args.min_share, batch_size=args.batch_size,
                                 generation={"max_new_tokens": args.max_new_tokens}, force=args.force,
                                 quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
