"""``python -m builders.finetune``: train a LoRA adapter on a responses dataset, on CPU, and publish it as a versioned artifact.

The command line only; the stage itself is :mod:`builders.stages.finetune`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.finetune import DEFAULT_TARGETS, finetune


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.finetune", "Train a LoRA adapter on a variant's responses.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, metavar="SET", help="prompt set whose responses are the data")
    parser.add_argument("--polarity", default="pos", choices=("pos", "neg", "all"))
    parser.add_argument("--passing-only", action="store_true", help="only responses that passed vetting (judgments)")
    parser.add_argument("--keep-system-prompt", action="store_true",
                        help="train on the ids as generated (default: drop the eliciting system prompt)")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scale alpha/r)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="module names to adapt")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, help="for responses built on the way")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward: less memory, same adapter (not in the version id)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    report(finetune(store, catalog, args.variant, args.prompts, experiment=args.experiment, polarity=args.polarity,
                    passing_only=args.passing_only, keep_system_prompt=args.keep_system_prompt, r=args.r,
                    alpha=args.alpha, targets=targets, epochs=args.epochs,
                    lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                    generation={"max_new_tokens": args.max_new_tokens},
                    gradient_checkpointing=args.gradient_checkpointing, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
