"""Stage kinds that read finished datasets and publish analyses: the steering tables (seed 001
phase 1 checkpoints), the model-diff report (transfer vs similarity), the trait-dynamics viewer.

The steering and model-diff analyses read the latest steering, similarity, weights and compare
datasets of the whole store, so a stage of these kinds names the stages it must follow in
``after``."""
from __future__ import annotations

from typing import Any

from builders.graph.kinds import Kind
from builders.graph.params import Param


def run_steering_analysis(ctx: Any, p: dict[str, Any]) -> list:
    from analyses.steering import analyze

    result, _ = analyze(ctx.store, p.get("high", 80.0), p.get("low", 70.0), force=ctx.force)
    return [(result.manifest, result.built)]


def run_model_diff(ctx: Any, p: dict[str, Any]) -> list:
    from analyses import model_diff

    result, _, _ = model_diff.analyze(ctx.store, p.get("floor", 70.0), force=ctx.force)
    return [(result.manifest, result.built)]


def run_viewer(ctx: Any, p: dict[str, Any]) -> list:
    from analyses.viewer import build_viewer

    result = build_viewer(ctx.store, p["projections"], force=ctx.force)
    return [(result.manifest, result.built)]


KINDS = [
    Kind("steering_analysis", "best layers, methods and phase-2 tables over the store's steering runs "
         "(python -m analyses.steering)", {"high": Param("float"), "low": Param("float")},
         run_steering_analysis, uses_generation=False),
    Kind("model_diff", "transfer vs activation similarity and weight diffs (python -m analyses.model_diff)",
         {"floor": Param("float")}, run_model_diff, uses_generation=False),
    Kind("viewer", "the trait-dynamics viewer of a projections stage (python -m analyses.viewer)",
         {"projections": Param("stage", required=True)}, run_viewer, uses_generation=False),
]
