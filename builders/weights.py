"""``python -m builders.weights``: weight-space analysis of two variants (seed 001 phase 3): diff norms, logit lens, trait alignment.

The command line only; the stage itself is :mod:`builders.stages.weights`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_variant_pair_args, base_parser, open_store_and_catalog, report, run
from builders.stages.weights import analyze_weights


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.weights", "Weight diff norms, logit lens and trait alignment of two variants.")
    add_variant_pair_args(parser, "reference variant (e.g. base)",
                          "compared variant (e.g. instruct, or an adapter variant)")
    parser.add_argument("--vectors", action="append", default=[], metavar="REF", help="vector set to align (repeatable)")
    parser.add_argument("--method", default="mean_diff")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--no-token-filter", action="store_true", help="keep rare / garbage tokens in the logit lens")
    parser.add_argument("--singular-k", type=int, default=3, metavar="K",
                        help="top singular directions of ΔW_o and ΔW_down per layer (0: off)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    report(analyze_weights(store, catalog, args.a, args.b, experiment=args.experiment, vectors=args.vectors,
                           method=args.method, top_k=args.top_k, filter_tokens=not args.no_token_filter,
                           singular_k=args.singular_k, force=args.force))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
