"""``python -m builders.responses``: generate responses for a prompt set with one variant of an experiment.

The command line only; the stage itself is :mod:`builders.stages.responses`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.shared.executors import add_executor_args, executor_from_args
from builders.stages.responses import RESPONSES_UNIT, generate_responses


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.responses", "Generate responses for a prompt set with one variant.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, action="append", metavar="SET",
                        help="prompt set from the catalog (repeatable)")
    gen = parser.add_argument_group("generation (defaults from catalog.yaml defaults.responses)")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--temperature", type=float, help="0 = greedy")
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--rollouts", type=int, help="responses per prompt")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--batch-size", metavar="N|auto",
                     help="sequences per batch; auto (catalog default): from the free accelerator memory, "
                          "32 on the CPU (greedy tokens do not depend on it; sampled ones are seeded per "
                          "batch, so pass a size to reproduce them across machines); halved and retried on "
                          "out-of-memory")
    gen.add_argument("--unit-size", type=int,
                     help=f"rows per work unit and Parquet shard, rounded up to whole batches (default {RESPONSES_UNIT})")
    add_executor_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    with executor_from_args(args) as executor:  # connects first: a bad cluster touches no store
        store, catalog = open_store_and_catalog(args)
        overrides = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                     "rollouts": args.rollouts, "seed": args.seed, "batch_size": args.batch_size,
                     "unit_size": args.unit_size}
        for prompt_set in args.prompts:
            report(generate_responses(store, catalog, args.variant, prompt_set, args.experiment, overrides,
                                      force=args.force, quiet=args.quiet, executor=executor))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
