"""``python -m builders.compare``: compare two variants against trait vectors on the same tokens (seed 001 phase 4 / persona shift).

The command line only; the stage itself is :mod:`builders.stages.compare`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_variant_pair_args, base_parser, open_store_and_catalog, report, run
from builders.shared.judges import add_judge_args, judge_choice
from builders.stages.compare import compare_variants


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.compare", "Compare two variants' activations against trait vectors.")
    add_variant_pair_args(parser, "reference variant (its responses are replayed)",
                          "compared variant (e.g. finetuned)")
    parser.add_argument("--prompts", required=True, metavar="SET")
    parser.add_argument("--vectors", action="append", default=[], metavar="REF", help="trait vector set (repeatable)")
    parser.add_argument("--controls", action="append", default=[], metavar="REF", help="other traits' vector sets")
    parser.add_argument("--method", default="mean_diff")
    parser.add_argument("--position", default="response[:]")
    parser.add_argument("--random", type=int, default=1000, help="random unit directions for specificity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge-responses", action="store_true",
                        help="also judge both variants' own responses (with the judges below)")
    add_judge_args(parser)
    parser.add_argument("--max-new-tokens", type=int, help="for responses built on the way")
    parser.add_argument("--batch-size", metavar="N|auto", default="auto",
                        help="sequences per capture batch, or auto (8 on the CPU, from the free memory on CUDA; "
                             "halved on out-of-memory)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    result = compare_variants(store, catalog, args.a, args.b, args.prompts, args.vectors, experiment=args.experiment,
                              method=args.method, controls=args.controls, position=args.position,
                              n_random=args.random, seed=args.seed,
                              judges=judge_choice(args) if args.judge_responses else None,
                              generation={"max_new_tokens": args.max_new_tokens}, batch_size=args.batch_size,
                              force=args.force, quiet=args.quiet)
    report(result)
    print(store.read_bytes(result.manifest, "report.md").decode())
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
