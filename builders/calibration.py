"""``python -m builders.calibration``: calibrate a judge on labelled answers and publish how well it separates them.

The command line only; the stage itself is :mod:`builders.stages.calibration`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from builders.shared.common import add_experiment_arg, base_parser, open_store_and_catalog, report, run
from builders.shared.judges import OPENAI_MODES, JudgeChoice
from builders.stages.calibration import DEFAULT_DIR, DEFAULT_TRAIT_SET, calibrate


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.calibration", "Calibrate a judge on labelled answers (AUROC, plot).")
    add_experiment_arg(parser)
    parser.add_argument("--judge", required=True, help="sentiment, lexicon, perplexity, local or openai")
    parser.add_argument("--variant", help="perplexity reference variant (default: the experiment's application)")
    parser.add_argument("--coherence-reference", metavar="MODEL", help="perplexity reference: a catalog model instead")
    parser.add_argument("--judge-model", help="LLM judge model (local default: SmolLM2-135M-Instruct)")
    parser.add_argument("--judge-mode", choices=OPENAI_MODES, default=None,
                        help="openai judge: single-token (OpenAI models) or digits (vLLM/llama.cpp; "
                             "default $OPENAI_JUDGE_MODE, else single-token)")
    parser.add_argument("--trait-set", default=DEFAULT_TRAIT_SET, help="prompt set whose trait the trait judges score")
    parser.add_argument("--calibration-dir", type=Path, help=f"labelled answers (default {DEFAULT_DIR})")
    parser.add_argument("--per-label", type=int, default=0, help="only the first N answers of each label (0 = all)")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    choice = JudgeChoice("openai" if args.judge == "openai" else "local",
                         "openai" if args.judge == "openai" else "perplexity",
                         args.judge_model, args.coherence_reference, True, openai_mode=args.judge_mode)
    result = calibrate(store, catalog, args.judge, experiment=args.experiment, variant=args.variant, choice=choice,
                       trait_set=args.trait_set, folder=args.calibration_dir, per_label=args.per_label,
                       force=args.force, quiet=args.quiet)
    report(result)
    s = result.manifest.summary
    print(f"  AUROC fluent vs degenerate {s['coherence_auroc']:.3f} ({s['estimate']}), "
          f"positive vs negative {s['trait_auroc']:.3f}")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
