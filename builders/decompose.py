"""``python -m builders.decompose``: trait vectors decomposed into an SAE's or a crosscoder's features (issue 15).

The command line only; the stage itself is :mod:`builders.stages.decomposition`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import base_parser, open_store_and_catalog, report, run
from builders.stages.decomposition import decompose_vectors


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.decompose",
                         "Top dictionary features of trait vectors at the dictionary's layer, by decoder cosine "
                         "and by encoding, with their top activating contexts.")
    parser.add_argument("--dictionary", required=True, metavar="DATASET[@VERSION]",
                        help="an sae-... or crosscoder-... dataset")
    parser.add_argument("--vectors", required=True, metavar="DATASET[@VERSION]", help="a vectors-... dataset")
    parser.add_argument("--method", default="mean_diff", help="vector method(s), comma-separated")
    parser.add_argument("--model-index", type=int,
                        help="crosscoders: whose slice, 0 (a) or 1 (b); default the model whose variant made the "
                             "vectors")
    parser.add_argument("--top-n", type=int, default=10, help="features listed per ranking")
    parser.add_argument("--scale", type=float,
                        help="norm the vector is rescaled to before encoding (default: the dictionary's typical "
                             "activation norm at its layer)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, _ = open_store_and_catalog(args)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    report(decompose_vectors(store, args.dictionary, args.vectors, methods=methods, model_index=args.model_index,
                             top_n=args.top_n, scale=args.scale, force=args.force))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
