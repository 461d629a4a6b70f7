"""Planning is pure: stage keys, selection, and which stages a change rebuilds."""
from __future__ import annotations

import copy

import pytest

from builders.graph.plan import BUILD, NOT_SELECTED, UP_TO_DATE, PlanError, descendants, plan, stage_keys
from builders.graph.spec import SpecError, parse_stages
from tests.graph_fakes import GRAPH, KINDS

VERSIONS = {name: 1 for name in KINDS}


def parsed(graph=GRAPH):
    return parse_stages(copy.deepcopy(graph), "experiments.toy.stages", {}, kinds=KINDS)


def rebuilt_after(change) -> set[str]:
    """Stages whose key differs after ``change(graph)``: what a run would rebuild."""
    before = stage_keys(parsed(), VERSIONS)
    graph = copy.deepcopy(GRAPH)
    change(graph)
    after = stage_keys(parsed(graph), VERSIONS)
    return {name for name in after if after[name] != before.get(name)}


def test_dependency_order_and_needs():
    stages = parsed({"late": GRAPH["abb"], **{k: v for k, v in GRAPH.items() if k != "abb"}})
    order = list(stages)
    assert order.index("late") > order.index("ab") > order.index("a")
    assert stages["late"].needs == ("ab", "b")


def test_changed_parameter_rebuilds_exactly_that_stage_and_its_descendants():
    def change_b(g):
        g["b"]["value"] = 3.0

    assert rebuilt_after(change_b) == {"b", "ab", "abb"}
    assert rebuilt_after(lambda g: g["abb"].update(plus=11.0)) == {"abb"}
    assert rebuilt_after(lambda g: g["c"].update(value=6.0)) == {"c", "cc"}
    assert rebuilt_after(lambda g: None) == set()
    # independent computation of "descendants" for every stage: stages whose inputs mention it, transitively
    stages = parsed()
    for name in stages:
        def change(g, name=name):
            g[name]["label"] = g[name]["label"] + "-x"
        reach = {name}
        while True:
            more = {s for s, spec in stages.items() if set(spec.needs) & reach} - reach
            if not more:
                break
            reach |= more
        assert rebuilt_after(change) == reach == {name} | descendants(stages, [name])


def test_keys_ignore_stage_names_and_after_order_but_not_facts_or_kind_versions():
    stages = parsed()
    keys = stage_keys(stages, VERSIONS)
    renamed = parsed({("x" if k == "c" else k): ({**v, "inputs": ["$x"]} if k == "cc" else v) for k, v in GRAPH.items()})
    assert stage_keys(renamed, VERSIONS)["cc"] == keys["cc"]
    assert stage_keys(stages, {**VERSIONS, "add": 2})["a"] == keys["a"]
    assert stage_keys(stages, {**VERSIONS, "add": 2})["ab"] != keys["ab"]
    facts = {"c": {"variant": {"model": "meta-llama/Llama-3.1-8B"}}}
    changed = stage_keys(stages, VERSIONS, facts)
    assert {n for n in keys if keys[n] != changed[n]} == {"c", "cc"}


def test_plan_up_to_date_until_only_force():
    stages = parsed()
    keys = stage_keys(stages, VERSIONS)
    actions = lambda entries: {e.stage: e.action for e in entries}  # noqa: E731
    assert set(actions(plan(stages, keys, set())).values()) == {BUILD}
    assert set(actions(plan(stages, keys, set(stages))).values()) == {UP_TO_DATE}
    assert set(actions(plan(stages, keys, set(stages), force=True)).values()) == {BUILD}
    until = actions(plan(stages, keys, {"a"}, until="ab"))
    assert until == {"a": UP_TO_DATE, "b": BUILD, "ab": BUILD, "abb": NOT_SELECTED, "c": NOT_SELECTED,
                     "cc": NOT_SELECTED}
    only = actions(plan(stages, keys, {"a", "b", "ab"}, only="abb"))
    assert only["abb"] == BUILD and [s for s, a in only.items() if a != NOT_SELECTED] == ["abb"]
    with pytest.raises(PlanError, match=r"--only abb: it needs \$ab"):
        plan(stages, keys, {"a", "b"}, only="abb")
    with pytest.raises(PlanError, match="--until: unknown stage 'nope'"):
        plan(stages, keys, set(), until="nope")


@pytest.mark.parametrize("graph, where, message", [
    ({"x": {"kind": "add", "label": "x", "inputs": ["$y"]}, "y": {"kind": "add", "label": "y", "inputs": ["$x"]}},
     "experiments.toy.stages.x", r"cycle: \$x -> \$y -> \$x"),
    ({"x": {"kind": "add", "label": "x", "inputs": ["$nope"]}}, "experiments.toy.stages.x.inputs",
     r"reference to a missing stage \$nope"),
    ({"x": {"kind": "source", "label": "x", "value": 1.0, "colour": "red"}}, "experiments.toy.stages.x.colour",
     "unknown parameter of a source stage"),
    ({"x": {"kind": "teleport"}}, "experiments.toy.stages.x.kind", "unknown stage kind 'teleport'"),
    ({"x": {"kind": "source", "label": "x"}}, "experiments.toy.stages.x.value", "missing"),
    ({"x": {"kind": "source", "label": "x", "value": "high"}}, "experiments.toy.stages.x.value",
     "expected a number"),
    ({"x": {"kind": "add", "label": "x", "inputs": "a"}}, "experiments.toy.stages.x.inputs",
     "expected a list of stage references"),
    ({"x": {"label": "x"}}, "experiments.toy.stages.x.kind", "missing"),
])
def test_bad_stages_name_stage_and_field(graph, where, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_stages(graph, "experiments.toy.stages", {}, kinds=KINDS)
    assert info.value.where == where
    assert "\n" not in str(info.value)


def test_matrix_expands_to_one_stage_per_combination_and_globs_collect_them():
    graph = {
        "src": {"kind": "source", "matrix": {"name": ["x", "y"]}, "label": "s-{name}", "value": 1.0},
        "pair": {"kind": "add", "matrix": {"name": ["x", "y"], "plus": ["1", "2"]}, "label": "p-{name}-{plus}",
                 "inputs": ["$src.{name}"]},
        "all": {"kind": "add", "label": "all", "inputs": ["$pair.*", "$src.x"]},
    }
    stages = parse_stages(graph, "experiments.toy.stages", {}, kinds=KINDS)
    assert list(stages)[:2] == ["src.x", "src.y"]
    assert {n for n in stages if n.startswith("pair.")} == {"pair.x.1", "pair.x.2", "pair.y.1", "pair.y.2"}
    assert stages["pair.y.2"].params["label"] == "p-y-2" and stages["pair.y.2"].needs == ("src.y",)
    assert stages["all"].needs == ("pair.x.1", "pair.x.2", "pair.y.1", "pair.y.2", "src.x")
    with pytest.raises(SpecError, match=r"\$nope\.\* matches no stage"):
        parse_stages({"all": {"kind": "add", "label": "a", "inputs": ["$nope.*"]}}, "s", {}, kinds=KINDS)
    with pytest.raises(SpecError, match="values become stage names"):
        parse_stages({"m": {"kind": "source", "matrix": {"v": ["a b"]}, "label": "x", "value": 1.0}}, "s", {},
                     kinds=KINDS)
