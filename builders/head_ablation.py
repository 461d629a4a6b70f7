"""``python -m builders.head_ablation``: zero / mean ablation of chosen attention heads on persona
pairs, against random heads, with the register of generations (issue 16 item 5).

The command line only; the stage itself is :mod:`builders.stages.head_ablation`.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from builders.shared.common import add_experiment_args, base_parser, open_store_and_catalog, report, run
from builders.stages.head_ablation import MODES, AblationOptions, build_head_ablation


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.head_ablation",
                         "Ablate chosen attention heads (zero or mean over both sides of the pairs used) and "
                         "measure the persona logit difference on both sides of every pair, against random heads; "
                         "optionally the register of greedy answers with and without the heads.")
    add_experiment_args(parser)
    d = AblationOptions()
    parser.add_argument("--prompt-set", default="persona", help="a persona prompt set in the catalog")
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--heads", help="heads to ablate together, e.g. L3H4,L5H1")
    chosen.add_argument("--from-patching", metavar="DATASET[@VERSION]",
                        help="a per-head patching dataset (kind heads): ablate its --top-k heads by |effect|")
    parser.add_argument("--top-k", type=int, default=d.top_k, help="heads taken from --from-patching")
    parser.add_argument("--modes", default=",".join(d.modes), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--random-draws", type=int, default=d.random_draws,
                        help="control sets of as many heads, drawn from the heads not chosen")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the random head draws")
    parser.add_argument("--limit-pairs", type=int, metavar="N", help="only the first N pairs of the set")
    parser.add_argument("--generate", type=int, default=d.generate, metavar="N_PROMPTS",
                        help="answer the first N expert-side prompts greedily with and without ablation; judge register")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens per generated answer")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per forward / generate call")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    options = AblationOptions(heads=args.heads, from_patching=args.from_patching, top_k=args.top_k,
                              modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                              random_draws=args.random_draws, seed=args.seed, limit_pairs=args.limit_pairs,
                              generate=args.generate, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    report(build_head_ablation(store, catalog, args.variant, args.prompt_set, experiment=args.experiment,
                               options=options, force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
