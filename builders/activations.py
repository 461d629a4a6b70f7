"""``python -m builders.activations``: capture activations of one variant over stored responses, replaying their token ids.

The command line only; the stage itself is :mod:`builders.stages.activations`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.shared.executors import add_executor_args, executor_from_args
from builders.stages.activations import ACTIVATIONS_UNIT, COMPONENTS, capture_activations


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.activations", "Capture activations over stored responses.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, action="append", metavar="SET", help="prompt set (repeatable)")
    parser.add_argument("--position", default=None, help='e.g. "response[:5]", "prompt[-1]", "all[:]"')
    parser.add_argument("--layers", default=None, help="all, 12, 9-19, 30%%-60%%, 0-30:5, or a comma list")
    parser.add_argument("--component", default=None, choices=COMPONENTS)
    parser.add_argument("--per-token", action="store_true", help="store every token of the position, not the mean")
    parser.add_argument("--replay-from", metavar="VARIANT", help="replay this variant's responses through --variant")
    parser.add_argument("--batch-size", metavar="N|auto", default=None,
                        help="sequences per batch; auto (catalog default): from the free accelerator memory, "
                             "8 on the CPU; halved and retried on out-of-memory")
    parser.add_argument("--unit-size", type=int, default=ACTIVATIONS_UNIT,
                        help="samples per work unit and table shard (pooled: per Zarr chunk), whole batches")
    add_executor_args(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    with executor_from_args(args) as executor:  # connects first: a bad cluster touches no store
        store, catalog = open_store_and_catalog(args)
        defaults = catalog.stage_defaults("activations")
        for prompt_set in args.prompts:
            report(capture_activations(
                store, catalog, args.variant, prompt_set,
                position=args.position or defaults.get("position", "response[:]"),
                layers=args.layers or str(defaults.get("layers", "all")),
                component=args.component or defaults.get("component", "residual"),
                experiment=args.experiment, replay_from=args.replay_from, per_token=args.per_token,
                batch_size=defaults.get("batch_size", "auto") if args.batch_size is None else args.batch_size,
                force=args.force,
                quiet=args.quiet, unit_size=args.unit_size, executor=executor,
            ))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
