"""``python -m builders.vectors``: extract trait vectors from contrasting responses' activations, every layer at once.

The command line only; the stage itself is :mod:`builders.stages.vectors`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.catalog import ExtractionConfig
from builders.shared.common import BuildError, add_experiment_arg, base_parser, open_store_and_catalog, report, run
from builders.stages.vectors import ALL_METHODS, extract_vectors


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.vectors", "Extract trait vectors (all layers, several methods).")
    add_experiment_arg(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--matrix", action="store_true", help="every config of the experiment's extraction matrix")
    which.add_argument("--prompts", metavar="SET", help="one trait prompt set (with --variant, --position)")
    parser.add_argument("--variant")
    parser.add_argument("--position", default="response[:]")
    parser.add_argument("--methods", default="mean_diff,probe", help=f"comma list of {', '.join(ALL_METHODS)}")
    parser.add_argument("--component", default="residual", choices=("residual", "attn_out", "mlp_out"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, help="for responses built on the way")
    vet = parser.add_argument_group("vetting (persona_vectors' filters, joined on response id)")
    vet.add_argument("--vetted", action="store_true",
                     help="only responses whose judgments pass: pos trait >= threshold, neg <= threshold, "
                          "coherence >= floor (output dataset gets -vetted)")
    vet.add_argument("--vet-trait-threshold", type=float, default=50.0, help="trait score threshold (0-100)")
    vet.add_argument("--vet-coherence-floor", type=float, default=50.0, help="minimum coherence (0-100)")
    vet.add_argument("--judgments", metavar="NAME[@VERSION]",
                     help="judgments to vet with (default: the latest judgments of the config's responses)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    exp = catalog.experiment(args.experiment)
    if args.matrix:
        configs = list(exp.extraction)
        if not configs:
            raise BuildError(f"experiment {exp.name!r} has no extraction matrix in {catalog.path.name}")
    else:
        if not args.variant:
            raise BuildError("--prompts needs --variant")
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        configs = [ExtractionConfig(args.prompts, args.variant, args.position, methods)]
    generation = {"max_new_tokens": args.max_new_tokens}
    for config in configs:
        report(extract_vectors(store, catalog, config, exp.name, args.component, args.val_fraction, args.seed,
                               generation, force=args.force, quiet=args.quiet, vetted=args.vetted,
                               vet_trait_threshold=args.vet_trait_threshold,
                               vet_coherence_floor=args.vet_coherence_floor, judgments=args.judgments))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
