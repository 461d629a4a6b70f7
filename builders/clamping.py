"""``python -m builders.clamping``: clamp crosscoder latents while a variant generates; judge what changes (seed 000, Day 3).

The command line only; the stage itself is :mod:`builders.stages.clamping`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_arg, base_parser, open_store_and_catalog, report, run
from builders.shared.judges import add_judge_args, judge_choice
from builders.stages.clamping import (DEFAULT_TRAIT_SET, MODES, POSITIONS, ClampingOptions, clamp_run, default_judges,
                                      parse_int_list, parse_values)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.clamping",
                         "Clamp dictionary latents during generation (with a random-latent control); judge trait "
                         "and coherence.")
    add_experiment_arg(parser)
    parser.add_argument("--variant", required=True, help="variant that generates, e.g. finetuned")
    parser.add_argument("--dictionary", required=True, metavar="REF", help="a crosscoder dataset (name or name@version)")
    parser.add_argument("--model-index", type=int,
                        help="which model's slice of the crosscoder (default: the variant's place in its pair)")
    parser.add_argument("--layer", type=int, help="must equal the dictionary's layer (a check; default: the dictionary's)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--latents", help="comma list of latent indices, e.g. 12,40")
    which.add_argument("--top-b-only", type=int, metavar="N",
                       help="the N b_only latents with the lowest dec_norm_diff (nu_error < 0.5 when known)")
    parser.add_argument("--mode", choices=MODES, default="zero", help="zero, set to each value, or scale by each value")
    parser.add_argument("--values", help="comma list (with --mode set / scale), e.g. 0,2,4")
    parser.add_argument("--positions", choices=POSITIONS, default="all", help="where the clamp applies")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random control latents")
    parser.add_argument("--prompts", required=True, metavar="SET", help="questions to answer (steering questions or an "
                                                                        "inference set)")
    parser.add_argument("--trait-set", default=DEFAULT_TRAIT_SET, help="prompt set whose trait the trait judge scores")
    parser.add_argument("--subset", type=int, default=0, help="first N questions only (0 = all)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--max-batch", metavar="N|auto", default="auto", help="rows per batched generate call")
    add_judge_args(parser, calibration_gate=True)
    parser.set_defaults(trait_judge=None)  # None: sentiment when the trait has a sentiment direction, else local
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    options = ClampingOptions(mode=args.mode, values=parse_values(args.values), positions=args.positions, seed=args.seed)
    latents = parse_int_list(args.latents, "--latents") if args.latents is not None else []
    if args.trait_judge is None and not args.judge:
        args.trait_judge = default_judges(catalog, store, args.trait_set).trait
    report(clamp_run(store, catalog, args.dictionary, args.variant, args.prompts, latents=latents,
                     top_b_only_n=args.top_b_only, options=options, experiment=args.experiment,
                     model_index=args.model_index, layer=args.layer, trait_set=args.trait_set, subset=args.subset,
                     generation={"max_new_tokens": args.max_new_tokens}, judges=judge_choice(args),
                     max_batch=args.max_batch, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
