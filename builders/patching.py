"""``python -m builders.patching``: activation and head patching on persona pairs (issue 16).

The command line only; the stage itself is :mod:`builders.stages.patching`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.patching import KINDS, PatchOptions, build_patching


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.patching",
                         "Patch clean (expert persona) activations into the corrupted (child persona) run of every "
                         "persona pair, one target at a time, and read logit(expert) - logit(simple) at the last "
                         "prompt token.")
    add_experiment_args(parser)
    d = PatchOptions()
    parser.add_argument("--prompt-set", default="persona", help="a persona prompt set in the catalog")
    parser.add_argument("--kind", choices=KINDS, default=d.kind,
                        help="residual / attn_out / mlp_out: layer x position; heads: each head at all positions; "
                             "heads_by_position: each head at each position")
    parser.add_argument("--layers", default=d.layers, help="layer spec: all, 12, 9-19, 0-30:5, 30%%-60%%")
    parser.add_argument("--positions", default=d.positions,
                        help="all, offsets from the end (--positions=-12: or =-1), or prompt[a:b]")
    parser.add_argument("--heads", help="heads kinds only: L3H4,L5H1 (or 3.4,5.1) instead of every head of --layers")
    parser.add_argument("--pairs", help="comma-separated pair ids (default: every pair of the set)")
    parser.add_argument("--limit-pairs", type=int, metavar="N", help="only the first N pairs")
    parser.add_argument("--min-gap", type=float, default=d.min_gap,
                        help="pairs whose |clean - corrupted| logit diff is below this get no normalised effect")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="patched rows per forward (speed only)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    pairs = tuple(p.strip() for p in args.pairs.split(",") if p.strip()) if args.pairs else None
    options = PatchOptions(kind=args.kind, layers=args.layers, positions=args.positions, heads=args.heads,
                           pairs=pairs, limit_pairs=args.limit_pairs, min_gap=args.min_gap,
                           batch_size=args.batch_size)
    report(build_patching(store, catalog, args.variant, args.prompt_set, experiment=args.experiment,
                          options=options, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
