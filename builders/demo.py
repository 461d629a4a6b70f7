"""The demo experiment, end to end on the two offline models, in a few minutes on a CPU.

    python -m builders.demo                 # store in ./artifacts
    python -m builders.demo --store memory://demo

prompt sets -> responses (instruct = SmolLM2-135M-Instruct, base = Gemma 3 270M)
-> activations for both variants -> judgments of the instruct model's sycophancy responses
(local judge: SmolLM2 itself) -> the experiment's extraction matrix (mean_diff + probe)
-> a small adaptive steering search with the instruct vectors on the instruct model
-> the steering analysis (best layer per vector config, heatmaps), then a summary of what
was built and one SQL query. Rerunning it is a no-op: every stage says "up to date".

SmolLM2-135M is a weak judge: it scores coherence ~35 for almost any answer, so the demo
searches with a coherence threshold of 30 and reports floors 35 / 30 instead of the
seed's 80 / 70. The numbers prove the pipeline, not a finding.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from .activations import capture_activations
from .common import base_parser, open_store_and_catalog, run
from .judgments import judge_responses
from .prompts import ensure_prompt_set
from .responses import generate_responses
from .steering import steer_vectors
from .vectors import extract_vectors

# (variant, prompt set, position): instruction-elicited traits are read over the whole
# response on the instruct model, natural ones over the first tokens on the base model
# (seed 001, Phase 0); the inference set is captured on both for later comparisons.
PLAN = (
    ("instruct", "sycophancy_instruction", "response[:]"),
    ("base", "sycophancy_natural", "response[:5]"),
    ("instruct", "general", "response[:]"),
    ("base", "general", "response[:]"),
)

# the steering search: instruction-elicited vectors applied to the model they came from
STEER = {"config": ("sycophancy_instruction", "instruct", "response[:]"), "method": "mean_diff",
         "layers": "9,12,15", "steps": 2, "subset": 4, "threshold": 30.0}
FLOORS = (35.0, 30.0)

SUMMARY_SQL = """
SELECT r.variant, r.prompt_set, count(*) AS responses,
       round(avg(r.response_len), 1) AS mean_tokens,
       round(avg(CASE WHEN r.finish_reason = 'eos' THEN 1 ELSE 0 END), 2) AS eos_rate
FROM responses r
GROUP BY ALL ORDER BY r.variant, r.prompt_set
"""


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.demo", __doc__.split("\n")[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="response length for the demo")
    return parser


def main(args: argparse.Namespace) -> int:
    from store.cli import print_frame
    from store.sql import query

    store, catalog = open_store_and_catalog(args)
    started = time.time()
    results = []
    for name in sorted({p for _, p, _ in PLAN}):
        results.append(("prompts", ensure_prompt_set(store, catalog, name), None))
    for variant, prompt_set, position in PLAN:
        resp = generate_responses(store, catalog, variant, prompt_set, args.experiment,
                                  {"max_new_tokens": args.max_new_tokens}, force=args.force, quiet=args.quiet)
        results.append(("responses", resp.manifest, resp.built))
        acts = capture_activations(store, catalog, variant, prompt_set, position, "all", "residual",
                                   args.experiment, force=args.force, quiet=args.quiet)
        results.append(("activations", acts.manifest, acts.built))
    gen = {"max_new_tokens": args.max_new_tokens}
    judged = judge_responses(store, catalog, "instruct", "sycophancy_instruction", args.experiment,
                             generation=gen, force=args.force, quiet=args.quiet)
    results.append(("judgments", judged.manifest, judged.built))
    steer_from = None
    for config in catalog.experiment(args.experiment).extraction:
        vec = extract_vectors(store, catalog, config, args.experiment, generation=gen, force=args.force, quiet=args.quiet)
        results.append(("vectors", vec.manifest, vec.built))
        if (config.prompt_set, config.variant, config.position) == STEER["config"]:
            steer_from = vec.manifest
    if steer_from is not None:
        steered = steer_vectors(store, catalog, steer_from.ref, STEER["method"], experiment=args.experiment,
                                layers=STEER["layers"], steps=STEER["steps"], subset=STEER["subset"],
                                threshold=STEER["threshold"], generation=gen, force=args.force, quiet=args.quiet)
        results.append(("steering", steered.manifest, steered.built))

    print(f"\ndemo finished in {time.time() - started:.0f}s; store: {store.location.url}\n")
    seen = set()
    for stage, manifest, built in results:
        if manifest.ref in seen:
            continue
        seen.add(manifest.ref)
        state = "up to date" if built is False else "built" if built else "ready"
        extra = ""
        if manifest.arrays:
            info = manifest.arrays["acts"]
            extra = "  acts " + "x".join(f"{d}={n}" for d, n in zip(info["dimension_names"], info["shape"]))
        print(f"  {state:<10} {manifest.ref:<80} {manifest.rows:>4} rows{extra}")
    print("\nresponses per variant and prompt set (python -m store sql ...):")
    print_frame(query(store, SUMMARY_SQL))
    if steer_from is not None:
        from analyses.steering import analyze, print_tables

        analysis, tables = analyze(store, *FLOORS, force=args.force)
        print_tables({"best_layers": tables["best_layers"]}, *FLOORS)
        print(f"(135M judge: floors {FLOORS[0]:g}/{FLOORS[1]:g}, not 80/70) tables and heatmaps: {analysis.manifest.ref}; "
              f"python -m analyses.steering --floors {FLOORS[0]:g},{FLOORS[1]:g}")
    print("\nnext: python -m store ls | python -m store lineage <dataset> | python -m store sql \"SELECT * FROM catalog\"")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
