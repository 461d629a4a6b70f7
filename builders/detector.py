"""``python -m builders.detector``: internal and observable sycophancy detectors on minimal pairs (seed 000, Day 2).

The command line only; the stage itself is :mod:`builders.stages.detector`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.detector import DetectorOptions, build_detector


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.detector",
                         "Sycophancy detectors (activations, dictionary latents, response text) with AUROC "
                         "cross-validated by pair.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, metavar="SET",
                        help="a paired set with answer keys, e.g. observable_pairs or user_model")
    parser.add_argument("--layer", type=int, required=True, help="layer k = output of decoder block k")
    defaults = DetectorOptions()
    parser.add_argument("--category", help="only this category of the set (e.g. sycophancy in user_model)")
    parser.add_argument("--position", default=defaults.position, help="tokens the internal detectors read")
    parser.add_argument("--dictionary", metavar="NAME[@VERSION]", help="a crosscoder-... or sae-... dataset")
    parser.add_argument("--folds", type=int, default=defaults.folds, help="GroupKFold splits (by pair)")
    parser.add_argument("--l1-c", type=float, default=defaults.l1_c, help="inverse L1 strength of the latent detector")
    parser.add_argument("--bootstrap", type=int, default=defaults.n_bootstrap, help="pair-bootstrap resamples (CI)")
    parser.add_argument("--top", type=int, default=defaults.top, help="top latents reported")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the bootstrap")
    parser.add_argument("--max-new-tokens", type=int, help="response length (default: the catalog's)")
    parser.add_argument("--batch-size", metavar="N|auto", default="auto", help="sequences per forward")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    options = DetectorOptions(position=args.position, category=args.category, folds=args.folds, l1_c=args.l1_c,
                              n_bootstrap=args.bootstrap, top=args.top, seed=args.seed)
    report(build_detector(store, catalog, args.variant, args.prompts, args.layer, experiment=args.experiment,
                          dictionary=args.dictionary, options=options, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
