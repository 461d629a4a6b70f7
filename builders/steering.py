"""``python -m builders.steering``: steer the application model with trait vectors and judge what changes (seed 001 phase 1).

The command line only; the stage itself is :mod:`builders.stages.steering`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import BuildError, add_experiment_arg, base_parser, open_store_and_catalog, report, run
from builders.shared.judges import add_judge_args, judge_choice
from builders.stages.steering import MODES, matrix_vectors, parse_coefficients, steer_vectors
from transforms.steering import POSITIONS


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.steering", "Steer with trait vectors; judge trait and coherence.")
    add_experiment_arg(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--vectors", metavar="REF", help="a vectors dataset (name or name@version)")
    which.add_argument("--matrix", action="store_true",
                       help="every vector set of the extraction matrix that fits the application model")
    parser.add_argument("--method", default="mean_diff", help="vector method (with --vectors)")
    parser.add_argument("--methods", default="mean_diff,probe", help="comma list (with --matrix)")
    parser.add_argument("--variant", help="variant to steer (default: the experiment's application variant)")
    parser.add_argument("--mode", choices=MODES, help="default: grid with --coefficients, else adaptive")
    parser.add_argument("--layers", default="30%-60%", help="all, 12, 9-19, 30%%-60%%, 0-30:5 or a comma list")
    parser.add_argument("--coefficients", help="explicit grid, e.g. 3,3.5,4,4.5 (implies --mode grid)")
    parser.add_argument("--positions", default="response", choices=POSITIONS,
                        help="response (default): last prompt token + generated tokens; generated: generated "
                             "tokens only; prompt; all (see transforms.steering.apply)")
    parser.add_argument("--steps", type=int, default=8, help="adaptive search steps")
    parser.add_argument("--threshold", type=float, default=70.0, help="coherence threshold of the search")
    parser.add_argument("--start-scale", type=float, default=0.7, help="start at scale·‖h‖/‖v‖")
    parser.add_argument("--momentum", type=float, default=0.5)
    parser.add_argument("--direction", choices=("auto", "+1", "-1"), default="auto",
                        help="+1 adds the trait, -1 suppresses it; auto reads steering.json")
    parser.add_argument("--questions", metavar="SET", help="prompt set to steer on (default: the vectors' set)")
    parser.add_argument("--subset", type=int, default=0, help="first N questions only (0 = all)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--max-batch", metavar="N|auto", default="auto",
                        help="rows per batched generate call, or auto (64 on the CPU, from the free memory on CUDA; "
                             "halved on out-of-memory)")
    add_judge_args(parser, calibration_gate=True)
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    coefficients = parse_coefficients(args.coefficients)
    mode = args.mode or ("grid" if coefficients else "adaptive")
    direction = None if args.direction == "auto" else int(args.direction)
    judges = judge_choice(args)
    jobs: list[tuple[str, str]] = []
    if args.matrix:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        jobs = [(v.ref, m) for v in matrix_vectors(store, catalog, args.experiment) for m in methods]
    else:
        jobs = [(args.vectors, args.method)]
    skipped = []
    for ref, method in jobs:
        try:
            result = steer_vectors(
                store, catalog, ref, method, experiment=args.experiment, variant=args.variant, mode=mode,
                layers=args.layers, coefficients=coefficients, positions=args.positions, steps=args.steps,
                threshold=args.threshold, start_scale=args.start_scale, momentum=args.momentum, direction=direction,
                questions=args.questions, subset=args.subset, generation={"max_new_tokens": args.max_new_tokens},
                judges=judges, max_batch=args.max_batch,
                force=args.force, quiet=args.quiet)
        except BuildError as err:
            if not (args.matrix and "cannot steer it" in str(err)):
                raise
            skipped.append(f"{ref} ({method})")
            continue
        report(result)
    if skipped:
        print(f"skipped (width differs from the application model): {', '.join(skipped)}")
    if args.matrix and len(skipped) == len(jobs):
        raise BuildError("no vector set of the extraction matrix fits the application model")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
