"""``python -m builders.direction_patching``: add alpha x a direction at a layer over the prompt of
both sides of every persona pair and report the logit-difference change per alpha (issue 16).

The command line only; the stage itself is :mod:`builders.stages.direction_patching`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_arg, base_parser, open_store_and_catalog, report, run
from builders.stages.direction_patching import SCALES, DirectionOptions, build_direction_patching, parse_alphas


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.direction_patching",
                         "Add alpha x a vectors dataset's direction at one layer over every prompt token of both "
                         "sides of each persona pair; the change of logit(expert) - logit(simple) per alpha.")
    add_experiment_arg(parser)
    d = DirectionOptions(layer=0)
    parser.add_argument("--vectors", required=True, help="a vectors dataset, NAME or NAME@VERSION")
    parser.add_argument("--method", default=d.method, help="which of its vectors: probe, mean_diff, ...")
    parser.add_argument("--layer", type=int, required=True, help="the layer whose output the direction is added to")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in d.alphas),
                        help="comma-separated alphas (a list starting negative: --alphas=-8,-4,0,4,8)")
    parser.add_argument("--scale", choices=SCALES, default=d.scale,
                        help="unit: alpha x v/|v|; residual: alpha x mean |h_L| x v/|v| (alpha = perturbation "
                             "ratio, use fractions); raw: alpha x v as stored")
    parser.add_argument("--variant", help="variant to run (default: the one the vectors came from)")
    parser.add_argument("--prompt-set", default="persona", help="a persona prompt set in the catalog")
    parser.add_argument("--pairs", help="comma-separated pair ids (default: every pair of the set)")
    parser.add_argument("--limit-pairs", type=int, metavar="N", help="only the first N pairs")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per forward (speed only)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    pairs = tuple(p.strip() for p in args.pairs.split(",") if p.strip()) if args.pairs else None
    options = DirectionOptions(layer=args.layer, method=args.method, alphas=parse_alphas(args.alphas),
                               scale=args.scale, pairs=pairs, limit_pairs=args.limit_pairs,
                               batch_size=args.batch_size)
    report(build_direction_patching(store, catalog, args.vectors, variant=args.variant, prompt_set=args.prompt_set,
                                    experiment=args.experiment, options=options, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
