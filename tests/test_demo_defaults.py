"""The demo builds with the catalog's generation defaults, so the README's next commands
(``builders.responses`` etc. with defaults) reuse the demo's versions instead of rebuilding."""
from __future__ import annotations

import builders.demo as demo
from builders.graph.kinds import registry
from builders.shared.catalog import load_catalog

GENERATION_KEYS = {"generation", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "rollouts", "seed",
                   "overrides", "batch_size", "responses"}


def test_demo_has_no_generation_options_of_its_own():
    options = {a.dest for a in demo.build_parser()._actions}
    assert not options & GENERATION_KEYS, options & GENERATION_KEYS


def test_no_demo_stage_overrides_generation():
    stages = load_catalog().experiment("demo").stages
    kinds = registry()
    generating = {name for name, spec in stages.items() if "max_new_tokens" in kinds[spec.kind].params}
    assert len(generating) >= 10  # the check would be empty if the kinds lost their generation parameters
    passed = {key for spec in stages.values() for key in spec.params}
    assert not passed & GENERATION_KEYS, passed & GENERATION_KEYS
