"""Stage kinds for testing the experiment graph without models: each publishes a one-row
dataset whose value is computed from its inputs, so a wrong input shows in the numbers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from builders.graph.kinds import Kind
from builders.graph.params import Param
from store import BuildSpec

CALLS: list[str] = []  # stage kinds run, in order (tests reset it)
INTERRUPT: list[bool] = []  # non-empty: a source with interrupt: true is killed


def _publish(ctx: Any, name: str, params: dict[str, Any], value: float, parents: dict[str, str]) -> list:
    spec = BuildSpec(name=name, kind="fake", builder="tests.graph_fakes", code_version="1", params=params,
                     parents=parents, identity={})
    result = ctx.store.build(spec, lambda w: w.write_table([{"value": float(value)}]), force=ctx.force)
    return [(result.manifest, result.built)]


def run_source(ctx: Any, p: dict[str, Any]) -> list:
    CALLS.append("source")
    if p.get("fail"):
        raise ValueError(f"planted failure of source {p['value']}")
    if p.get("interrupt") and INTERRUPT:
        raise KeyboardInterrupt  # what Ctrl-C or a kill delivers in the middle of a run
    return _publish(ctx, f"fake-source-{p['label']}", {"value": p["value"]}, p["value"], {})


def run_add(ctx: Any, p: dict[str, Any]) -> list:
    """The sum of its inputs' values plus ``plus``."""
    CALLS.append("add")
    total = sum(ctx.store.read_table(ref)["value"][0] for ref in p["inputs"]) + p.get("plus", 0.0)
    return _publish(ctx, f"fake-add-{p['label']}", {"plus": p.get("plus", 0.0)}, total,
                    {f"in{i}": ref for i, ref in enumerate(p["inputs"])})


KINDS = {
    "source": Kind("source", "a constant", {"label": Param("str", required=True), "value": Param("float", required=True),
                                            "fail": Param("bool"), "interrupt": Param("bool")}, run_source, uses_generation=False),
    "add": Kind("add", "sum of inputs", {"label": Param("str", required=True), "inputs": Param("stages", required=True),
                                         "plus": Param("float")}, run_add, uses_generation=False),
}

GRAPH = {
    "a": {"kind": "source", "label": "a", "value": 1.0},
    "b": {"kind": "source", "label": "b", "value": 2.0},
    "ab": {"kind": "add", "label": "ab", "inputs": ["$a", "$b"]},
    "abb": {"kind": "add", "label": "abb", "inputs": ["$ab", "$b"], "plus": 10.0},
    "c": {"kind": "source", "label": "c", "value": 5.0},
    "cc": {"kind": "add", "label": "cc", "inputs": ["$c"]},
}


def write_catalog(folder: Path, stages: dict[str, Any], experiment: str = "toy") -> Path:
    """A catalog with one experiment of ``stages`` (variant instruct = the offline SmolLM2)."""
    data = {"models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
            "experiments": {experiment: {"variants": {"instruct": {"model": "smol"}}, "stages": stages}}}
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
