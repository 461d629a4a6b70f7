"""``python -m builders.user_features``: user-model features of one variant on minimal pairs (seed 000, Day 1).

The command line only; the stage itself is :mod:`builders.stages.user_features`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.user_features import UserFeatureOptions, find_user_features


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.user_features",
                         "Directions and dictionary latents that separate the two sides of minimal pairs, per category.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, metavar="SET", help="a paired prompt set, e.g. user_model")
    parser.add_argument("--layer", type=int, required=True, help="layer k = output of decoder block k")
    defaults = UserFeatureOptions()
    parser.add_argument("--position", default=defaults.position, help="tokens pooled per prompt")
    parser.add_argument("--dictionary", metavar="NAME[@VERSION]",
                        help="a crosscoder-... or sae-... dataset whose latents are screened too")
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed,
                        help="seed of the train/eval halves of each category's pairs (directions)")
    parser.add_argument("--permutations", type=int, default=defaults.n_permutations,
                        help="sign-flip permutations (the latent screen runs at least 40 per latent)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the permutations")
    parser.add_argument("--q", type=float, default=defaults.q_threshold, help="BH q below which a feature is a candidate")
    parser.add_argument("--min-consistency", type=float, default=defaults.min_consistency,
                        help="fraction of pairs that must agree in sign")
    parser.add_argument("--top", type=int, default=defaults.top, help="candidates kept per category")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help="new tokens when responses must be generated (the features live in the prompt)")
    parser.add_argument("--batch-size", metavar="N|auto", default="auto", help="sequences per forward")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    options = UserFeatureOptions(position=args.position, split_seed=args.split_seed, n_permutations=args.permutations,
                                 seed=args.seed, q_threshold=args.q, min_consistency=args.min_consistency,
                                 top=args.top, max_new_tokens=args.max_new_tokens)
    report(find_user_features(store, catalog, args.variant, args.prompts, args.layer, experiment=args.experiment,
                              dictionary=args.dictionary, options=options, batch_size=args.batch_size,
                              force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
