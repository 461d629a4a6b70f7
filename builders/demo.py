"""The demo experiment, end to end on the two offline models, in a few minutes on a CPU.

    python -m builders.demo                 # store in ./artifacts
    python -m builders.demo --store memory://demo

prompt sets -> responses (instruct = SmolLM2-135M-Instruct, base = Gemma 3 270M)
-> activations for both variants -> judgments of the instruct model's sycophancy responses
(local judge: SmolLM2 itself) -> the experiment's extraction matrix (mean_diff + probe)
-> a small adaptive steering search with the instruct vectors on the instruct model
-> the steering analysis (best layer per vector config, heatmaps) -> model diffing on a
matched pair (seed 001 phases 3-4): a LoRA finetune of the instruct model on its own
sycophantic responses (variant ``finetuned``), the weight analysis, activation similarity
and the variant comparison, the same steering search with the instruct vectors applied to
the finetuned model (transfer), and the model-diff report -> per-token projections of the
inference set onto the trait vectors and the trait-dynamics viewer (a self-contained HTML
page; the demo prints where to open it). Then a summary of what was built and one SQL query. Rerunning it is a no-op: every stage says "up to date".

SmolLM2-135M is a weak judge: it scores coherence ~35 for almost any answer, so the demo
searches with a coherence threshold of 30 and reports floors 35 / 30 instead of the
seed's 80 / 70. The numbers prove the pipeline, not a finding.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from typing import Any

from .activations import capture_activations
from .common import base_parser, open_store_and_catalog, run
from .compare import compare_variants
from .finetune import finetune
from .projections import build_projections
from .judgments import judge_responses
from .prompts import ensure_prompt_set
from .responses import generate_responses
from .similarity import activation_similarity
from .steering import steer_vectors
from .vectors import extract_vectors
from .weights import analyze_weights

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
# model diffing: the instruct model vs itself + a LoRA adapter (catalog variant "finetuned")
DIFF = {"a": "instruct", "b": "finetuned", "data": "sycophancy_instruction", "replay": "general"}
# per-token monitoring: the inference set scored against both methods' vectors at the searched layers
MONITOR = {"variant": "instruct", "prompts": "general", "methods": ("mean_diff", "probe"), "layers": "9,12,15"}

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


def build_stages(store: Any, catalog: Any, args: argparse.Namespace) -> tuple[list[tuple], Any]:
    """Every stage of the demo in order; returns ``(results, steering vectors or None)``."""
    gen = {"max_new_tokens": args.max_new_tokens}
    common = {"force": args.force, "quiet": args.quiet}
    results: list[tuple] = []
    for name in sorted({p for _, p, _ in PLAN}):
        results.append(("prompts", ensure_prompt_set(store, catalog, name), None))
    for variant, prompt_set, position in PLAN:
        resp = generate_responses(store, catalog, variant, prompt_set, args.experiment, gen, **common)
        results.append(("responses", resp.manifest, resp.built))
        acts = capture_activations(store, catalog, variant, prompt_set, position, "all", "residual",
                                   args.experiment, **common)
        results.append(("activations", acts.manifest, acts.built))
    judged = judge_responses(store, catalog, "instruct", "sycophancy_instruction", args.experiment, generation=gen, **common)
    results.append(("judgments", judged.manifest, judged.built))
    steer_from = None
    for config in catalog.experiment(args.experiment).extraction:
        vec = extract_vectors(store, catalog, config, args.experiment, generation=gen, **common)
        results.append(("vectors", vec.manifest, vec.built))
        if (config.prompt_set, config.variant, config.position) == STEER["config"]:
            steer_from = vec.manifest
    if steer_from is None:
        return results, None
    search = {"layers": STEER["layers"], "steps": STEER["steps"], "subset": STEER["subset"],
              "threshold": STEER["threshold"], "generation": gen}
    for variant in (None, DIFF["b"]):  # on the instruct model, then transferred to the finetuned one
        steered = steer_vectors(store, catalog, steer_from.ref, STEER["method"], experiment=args.experiment,
                                variant=variant, **search, **common)
        results.append(("steering", steered.manifest, steered.built))
        if variant is None:
            tuned = finetune(store, catalog, DIFF["a"], DIFF["data"], experiment=args.experiment, generation=gen, **common)
            results.append(("finetune", tuned.manifest, tuned.built))
    a, b = DIFF["a"], DIFF["b"]
    for stage, result in (
        ("weights", analyze_weights(store, catalog, a, b, experiment=args.experiment, vectors=[steer_from.ref],
                                    force=args.force)),
        ("similarity", activation_similarity(store, catalog, a, b, DIFF["replay"], experiment=args.experiment,
                                             generation=gen, **common)),
        ("compare", compare_variants(store, catalog, a, b, DIFF["replay"], [steer_from.ref], experiment=args.experiment,
                                     generation=gen, **common)),
    ):
        results.append((stage, result.manifest, result.built))
    monitored = build_projections(store, catalog, MONITOR["variant"], MONITOR["prompts"],
                                  [f"{steer_from.ref}:{m}" for m in MONITOR["methods"]], experiment=args.experiment,
                                  layers=MONITOR["layers"], generation=gen, **common)
    results.append(("projections", monitored.manifest, monitored.built))
    return results, steer_from


def print_summary(store: Any, results: list[tuple], started: float) -> None:
    from store.cli import print_frame
    from store.sql import query

    print(f"\ndemo finished in {time.time() - started:.0f}s; store: {store.location.url}\n")
    seen = set()
    for _stage, manifest, built in results:
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


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    started = time.time()
    results, steer_from = build_stages(store, catalog, args)
    print_summary(store, results, started)
    if steer_from is not None:
        from analyses import model_diff
        from analyses.steering import analyze, print_tables

        analysis, tables = analyze(store, *FLOORS, force=args.force)
        print_tables({"best_layers": tables["best_layers"]}, *FLOORS)
        print(f"(135M judge: floors {FLOORS[0]:g}/{FLOORS[1]:g}, not 80/70) tables and heatmaps: {analysis.manifest.ref}; "
              f"python -m analyses.steering --floors {FLOORS[0]:g},{FLOORS[1]:g}")
        diff, _, text = model_diff.analyze(store, FLOORS[1], force=args.force)
        print("\n" + text)
        print(f"model-diff tables, plots and report: {diff.manifest.ref}; python -m analyses.model_diff --floor {FLOORS[1]:g}")
        from analyses.viewer import build_viewer

        projections = next(m for stage, m, _ in results if stage == "projections")
        viewer = build_viewer(store, projections.ref, force=args.force).manifest
        print(f"\ntrait-dynamics viewer (per-token projections, steering heatmaps, steered responses):\n"
              f"  open {store.location.uri(store.path(viewer, 'index.html'))}")
    print("\nnext: python -m store ls | python -m store lineage <dataset> | python -m store sql \"SELECT * FROM catalog\"")
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
