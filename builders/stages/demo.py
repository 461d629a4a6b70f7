"""The demo experiment's report: what ``python -m builders.demo`` prints after the run.

The demo's stages are declared in ``catalog.yaml`` (``experiments.demo.stages``) and run by
:mod:`builders.graph` like any experiment (``python -m builders.run --experiment demo``).
Headline trait: **optimism**, measured by instruments checked first (the judges calibrated on
labelled answers); the extraction matrix; an adaptive steering search on the instruct model and
a grid at its best layer (the coherence cliff); a planted organism (LoRA adapters trained on the
instruct model's own gloomy answers, and a control) with behaviour, projection shift, weight
alignment and transfer of the instruct vectors; seed 000's crosscoder on the organism;
per-token projections and the trait-dynamics viewer. Sycophancy (LLM judge) runs beside it as
an exploratory second trait. This module reads the results back: the responses table, the
steering tables, the model-diff report and the finding (:mod:`analyses.finding`).
"""
from __future__ import annotations

from typing import Any

FLOORS = (80.0, 70.0)  # the seed's coherence floors, on the calibrated scale
# the organism was trained on the trait's negative pole (SmolLM2 answers as cheerfully unprompted
# as when told to be cheerful: the other pole is what can be planted); see the README
PLANT = -1

SUMMARY_SQL = """
SELECT r.variant, r.prompt_set, count(*) AS responses,
       round(avg(r.response_len), 1) AS mean_tokens,
       round(avg(CASE WHEN r.finish_reason = 'eos' THEN 1 ELSE 0 END), 2) AS eos_rate
FROM responses r
GROUP BY ALL ORDER BY r.variant, r.prompt_set
"""


def print_outputs(store: Any, outcomes: list[Any]) -> None:
    """Every dataset the run published or found, with its rows and its stage's seconds."""
    from store.cli import print_frame
    from store.sql import query

    seen = set()
    print()
    for outcome in outcomes:
        for ref in outcome.outputs:
            if ref in seen:
                continue
            seen.add(ref)
            rows = store.resolve(ref).rows
            print(f"  {outcome.state:<10} {outcome.stage:<20} {ref:<84} {rows:>5} rows {outcome.seconds:>6.0f}s")
    print("\nresponses per variant and prompt set (python -m store sql ...):")
    print_frame(query(store, SUMMARY_SQL))


def print_report(store: Any, experiment: str, outcomes: list[Any], force: bool = False) -> None:
    """The steering tables, the model-diff report, the finding and where the viewer is."""
    from analyses import model_diff
    from analyses.finding import finding_report
    from analyses.steering import analyze, print_tables

    analysis, tables = analyze(store, *FLOORS, force=force)
    print_tables({"best_layers": tables["best_layers"]}, *FLOORS)
    print(f"steering tables and heatmaps: {analysis.manifest.ref}; python -m analyses.steering --floors 80,70")
    diff, _, text = model_diff.analyze(store, FLOORS[1], force=force)
    print("\n" + text)
    print(f"model-diff tables, plots and report: {diff.manifest.ref}; python -m analyses.model_diff --floor 70")
    print("\n" + finding_report(store, experiment, plant=PLANT))
    viewer = next((o.outputs[0] for o in outcomes if o.kind == "viewer" and o.outputs), None)
    if viewer is not None:
        print(f"\ntrait-dynamics viewer (per-token projections, steering heatmaps, steered responses):\n"
              f"  open {store.location.uri(store.path(store.resolve(viewer), 'index.html'))}")
