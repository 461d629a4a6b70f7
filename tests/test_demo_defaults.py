"""The demo builds with the catalog's generation defaults, so the README's next commands
(``builders.responses`` etc. with defaults) reuse the demo's versions instead of rebuilding."""
from __future__ import annotations

import ast
from pathlib import Path

import builders.demo as demo
import builders.stages.demo as demo_stage

GENERATION_KEYS = {"generation", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "rollouts", "seed", "overrides",
                   "batch_size"}


def test_demo_has_no_generation_options_of_its_own():
    options = {a.dest for a in demo.build_parser()._actions}
    assert not options & GENERATION_KEYS, options & GENERATION_KEYS
    stages = demo_stage.Stages(None, None, "demo", force=False, quiet=True)
    assert set(stages.common) == {"force", "quiet"}


def test_no_demo_stage_overrides_generation():
    tree = ast.parse(Path(demo_stage.__file__).read_text())
    passed = {kw.arg for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords}
    assert not passed & GENERATION_KEYS, passed & GENERATION_KEYS
