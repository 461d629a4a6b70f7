"""``python -m builders.persona_probe``: persona probes per layer with template holdout (seed 003).

The command line only; the stage itself is :mod:`builders.stages.persona_probe`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import (BuildError, add_experiment_args, base_parser, open_store_and_catalog, report,
                                    run)
from builders.stages.persona_probe import METHODS, ProbeOptions, persona_probe


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.persona_probe",
                         "Linear probes for the persona (expert vs child) per layer, tested on held-out templates; "
                         "the directions published as a vectors dataset.")
    add_experiment_args(parser)
    parser.add_argument("--prompt-set", default="persona", help="a persona prompt set in the catalog")
    parser.add_argument("--position", default="prompt[-1]", help="position expression inside the prompt")
    parser.add_argument("--layers", default="all", help="all, a list (3,5,7), a range (2-6) or percentages")
    parser.add_argument("--template-holdout", default="4", metavar="N | IDS",
                        help="N folds over the template pairs, or a comma list of template ids / pair names held "
                             "out (a template id holds out its whole pair)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--templates", help="comma list of template pairs to use (default: all)")
    parser.add_argument("--questions", help="comma list of question ids to use (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap draws for the AUROC interval")
    parser.add_argument("--batch-size", type=int, default=8)
    return parser


def main(args: argparse.Namespace) -> int:
    if args.n_bootstrap < 1 or args.batch_size < 1:
        raise BuildError("--n-bootstrap and --batch-size must be >= 1")
    store, catalog = open_store_and_catalog(args)
    options = ProbeOptions(position=args.position, layers=args.layers, template_holdout=args.template_holdout,
                           methods=_names(args.methods) or (), templates=_names(args.templates),
                           questions=_names(args.questions), seed=args.seed, n_bootstrap=args.n_bootstrap,
                           batch_size=args.batch_size)
    report(persona_probe(store, catalog, args.variant, args.prompt_set, options, args.experiment, force=args.force,
                         quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
