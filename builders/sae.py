"""``python -m builders.sae``: train or import a sparse autoencoder of one variant at one layer (seed 000).

The command line only; the stage itself is :mod:`builders.stages.sae`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.crosscoder import add_training_args, training_options
from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.sae import build_sae


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.sae",
                         "SAE on a variant's per-token activations (the crosscoder trainer with one model), "
                         "or a pretrained Gemma Scope / SAELens SAE, with its feature table and top contexts.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, metavar="SET", help="prompt set whose responses give the tokens")
    parser.add_argument("--layer", type=int, required=True, help="layer k = output of decoder block k")
    parser.add_argument("--position", default="response[:]", help="which tokens of each sequence")
    parser.add_argument("--checkpoint", metavar="PATH|REPO",
                        help="import a Gemma Scope (params.npz) or SAELens SAE (folder or Hub repo in the local "
                             "cache) instead of training")
    parser.add_argument("--subfolder",
                        help="folder of the SAE inside --checkpoint, e.g. layer_12/width_16k/average_l0_82")
    parser.add_argument("--revision", help="Hub revision of --checkpoint")
    parser.add_argument("--norm-scaling-factor", type=float,
                        help="SAELens expected_average_only_in factor, when the files do not hold it")
    add_training_args(parser)
    parser.add_argument("--top-k", type=int, default=10, help="top activating contexts kept per feature")
    parser.add_argument("--activation-batch-size", metavar="N|auto", default="auto",
                        help="sequences per forward when activations are built on the way")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    report(build_sae(store, catalog, args.variant, args.prompts, args.layer, training_options(args),
                     experiment=args.experiment, position=args.position, checkpoint=args.checkpoint,
                     subfolder=args.subfolder, revision=args.revision, norm_scaling_factor=args.norm_scaling_factor,
                     top_k=args.top_k, activation_batch_size=args.activation_batch_size, force=args.force,
                     quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
