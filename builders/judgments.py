"""``python -m builders.judgments``: judge every response for trait expression and coherence, and vet contrast pairs.

The command line only; the stage itself is :mod:`builders.stages.judgments`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from builders.shared.common import BuildError, add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.shared.judges import add_judge_args, judge_choice
from builders.stages.judgments import judge_file, judge_responses


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.judgments", "Judge responses for trait and coherence; vet pairs.")
    add_experiment_args(parser, variant_required=False)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompts", action="append", metavar="SET", help="prompt set (repeatable; needs --variant)")
    which.add_argument("--responses-file", type=Path, metavar="FILE.jsonl",
                       help='external responses: rows {"id", "question", "response", ...label columns} (needs --name)')
    parser.add_argument("--name", help="dataset name of an imported responses file")
    parser.add_argument("--trait-set", default="optimism_instruction",
                        help="with --responses-file: the prompt set whose trait is scored")
    add_judge_args(parser)
    parser.add_argument("--pos-threshold", type=float, default=60.0)
    parser.add_argument("--neg-threshold", type=float, default=40.0)
    parser.add_argument("--paired", action="store_true", help="keep a pair only when both sides pass")
    parser.add_argument("--min-pass", type=int, default=0, help="stop when fewer rows of a polarity pass")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    choice = judge_choice(args)
    if args.responses_file is not None:
        if not args.name:
            raise BuildError("--responses-file needs --name (the dataset name)")
        report(judge_file(store, catalog, args.responses_file, args.name, args.experiment, args.variant,
                          args.trait_set, choice, force=args.force, quiet=args.quiet))
        return 0
    if not args.variant:
        raise BuildError("--prompts needs --variant")
    for prompt_set in args.prompts:
        report(judge_responses(store, catalog, args.variant, prompt_set, args.experiment, choice,
                               args.pos_threshold, args.neg_threshold, args.paired, args.min_pass,
                               force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
