"""``python -m builders.logit_lens``: the logit lens on persona pairs at a prompt position (issue 16).

The command line only; the stage itself is :mod:`builders.stages.logit_lens`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.logit_lens import LensOptions, build_logit_lens


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.logit_lens",
                         "Each layer's residual at a prompt position read through the model's final norm and "
                         "unembedding, for both sides of every persona pair: top tokens and tracked tokens.")
    add_experiment_args(parser)
    defaults = LensOptions()
    parser.add_argument("--prompt-set", default="persona", help="a persona prompt set in the catalog")
    parser.add_argument("--position", default=defaults.position,
                        help="a position inside the prompt (a span is mean-pooled)")
    parser.add_argument("--layers", default=defaults.layers, help="layer spec: all, 12, 9-19, 0-30:5, 30%%-60%%")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="top tokens kept per layer")
    parser.add_argument("--track", nargs=2, metavar=("EXPERT", "SIMPLE"),
                        help="two single tokens tracked for every pair (default: each question's own)")
    parser.add_argument("--limit-pairs", type=int, metavar="N", help="only the first N pairs of the set")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    options = LensOptions(position=args.position, layers=args.layers, top_k=args.top_k,
                          track=tuple(args.track) if args.track else None, limit_pairs=args.limit_pairs)
    report(build_logit_lens(store, catalog, args.variant, args.prompt_set, experiment=args.experiment,
                            options=options, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
