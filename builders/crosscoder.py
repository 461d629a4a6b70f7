"""``python -m builders.crosscoder``: train or import a crosscoder of two variants at one layer (seed 000).

The command line only; the stage itself is :mod:`builders.stages.crosscoder`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_variant_pair_args, base_parser, open_store_and_catalog, report, run
from builders.stages.crosscoder import KINDS, CrosscoderOptions, build_crosscoder


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.crosscoder",
                         "Crosscoder of two variants on the same tokens: latents, decoder-norm tags, Latent Scaling.")
    add_variant_pair_args(parser, "first model (decoder 0), e.g. base; its responses are replayed through B",
                          "second model (decoder 1), e.g. instruct or finetuned")
    parser.add_argument("--prompts", required=True, metavar="SET", help="prompt set whose A responses give the tokens")
    parser.add_argument("--layer", type=int, required=True, help="layer k = output of decoder block k")
    parser.add_argument("--position", default="response[:]", help="which tokens of each sequence")
    parser.add_argument("--checkpoint", metavar="PATH|REPO",
                        help="import a dictionary_learning crosscoder (folder, .pt, or Hub repo id) instead of training")
    parser.add_argument("--revision", help="Hub revision of --checkpoint")
    add_training_args(parser)
    parser.add_argument("--top-k", type=int, default=10, help="top activating contexts kept per latent")
    parser.add_argument("--max-new-tokens", type=int, help="for A's responses built on the way (default: the catalog's)")
    parser.add_argument("--activation-batch-size", metavar="N|auto", default="auto",
                        help="sequences per forward when activations are built on the way")
    return parser


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The training options of a crosscoder, or of an SAE (a crosscoder of one model)."""
    defaults = CrosscoderOptions()
    train = parser.add_argument_group("training (ignored with --checkpoint)")
    train.add_argument("--kind", choices=KINDS, default=defaults.kind)
    train.add_argument("--dict-size", type=int, default=defaults.dict_size)
    train.add_argument("--l1", type=float, default=defaults.l1_coefficient, help="L1 coefficient (kind l1)")
    train.add_argument("--k", type=int, default=defaults.k, help="active latents per token (kind batch_topk)")
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size, help="tokens per training batch")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--target-rms", type=float, default=defaults.target_rms,
                       help="inputs scaled per model to this RMS per dimension (scale stored with the weights)")
    train.add_argument("--resample-every", type=int, default=defaults.resample_every,
                       help="steps between dead-latent resamplings (0: never)")
    train.add_argument("--dead-after", type=int, default=defaults.dead_after,
                       help="a latent silent for this many tokens is dead")
    train.add_argument("--auxk-alpha", type=float, default=defaults.auxk_alpha,
                       help="batch_topk: auxiliary-k loss weight reviving dead latents (0: off; 1/32 is usual)")


def training_options(args: argparse.Namespace) -> CrosscoderOptions:
    """The options given by :func:`add_training_args`."""
    return CrosscoderOptions(kind=args.kind, dict_size=args.dict_size, l1_coefficient=args.l1, k=args.k,
                             lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                             target_rms=args.target_rms, resample_every=args.resample_every,
                             dead_after=args.dead_after, auxk_alpha=args.auxk_alpha)


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    report(build_crosscoder(store, catalog, args.a, args.b, args.prompts, args.layer, training_options(args),
                            experiment=args.experiment, position=args.position, checkpoint=args.checkpoint,
                            revision=args.revision, top_k=args.top_k,
                            activation_batch_size=args.activation_batch_size,
                            generation={"max_new_tokens": args.max_new_tokens}, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
