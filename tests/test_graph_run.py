"""``python -m builders.run`` on experiments of model-free stage kinds: records, no-op reruns,
failures that stop only their descendants, resuming, --until / --only / --dry-run, bad catalogs."""
from __future__ import annotations

import copy
import subprocess
import sys
import time

import pytest

from builders.run import cli
from store import Store
from tests import graph_fakes
from tests.graph_fakes import GRAPH, write_catalog


@pytest.fixture
def fake_kinds(monkeypatch):
    from builders.graph.kinds import _REGISTRY, registry

    registry()
    for name, kind in graph_fakes.KINDS.items():
        monkeypatch.setitem(_REGISTRY, name, kind)
    graph_fakes.CALLS.clear()
    return graph_fakes.CALLS


def run(tmp_path, graph, *flags):
    catalog = write_catalog(tmp_path, graph)
    return cli(["--store", str(tmp_path / "store"), "--catalog", str(catalog), "--experiment", "toy", "-q", *flags])


def values(tmp_path) -> dict[str, float]:
    store = Store(str(tmp_path / "store"))
    return {name.removeprefix("fake-"): store.read_table(store.latest(name))["value"][0]
            for name in store.datasets() if name.startswith("fake-")}


def test_runs_in_order_records_and_reruns_as_a_no_op(tmp_path, fake_kinds, capsys):
    assert run(tmp_path, GRAPH) == 0
    assert values(tmp_path) == {"source-a": 1.0, "source-b": 2.0, "add-ab": 3.0, "add-abb": 15.0, "source-c": 5.0,
                                "add-cc": 5.0}
    store = Store(str(tmp_path / "store"))
    record = store.read_table(store.latest("stage-toy-abb")).to_dicts()
    assert record[0]["output"] == store.latest("fake-add-abb").ref and record[0]["built"] is True
    fake_kinds.clear()
    started = time.time()
    assert run(tmp_path, GRAPH) == 0
    assert fake_kinds == [] and time.time() - started < 5
    assert "6 up to date, 0 to build" in capsys.readouterr().out


def test_a_changed_parameter_rebuilds_that_stage_and_its_descendants_only(tmp_path, fake_kinds, capsys):
    assert run(tmp_path, GRAPH) == 0
    graph = copy.deepcopy(GRAPH)
    graph["b"]["value"] = 4.0
    fake_kinds.clear()
    assert run(tmp_path, graph, "--dry-run") == 0 and fake_kinds == []
    plan = capsys.readouterr().out
    assert "3 up to date, 3 to build" in plan
    assert run(tmp_path, graph) == 0
    assert fake_kinds == ["source", "add", "add"]
    assert values(tmp_path)["add-abb"] == 4.0 + 1.0 + 4.0 + 10.0


def test_a_failing_stage_stops_its_descendants_only_and_the_rerun_resumes(tmp_path, fake_kinds, capsys):
    graph = copy.deepcopy(GRAPH)
    graph["b"]["fail"] = True
    assert run(tmp_path, graph) == 1
    out = capsys.readouterr().out
    assert "FAILED      b (source): ValueError: planted failure of source 2.0" in out
    assert "not run (they need a failed stage)" in out
    assert "blocked  ab (add): needs $b" in out and "blocked  abb (add): needs $ab" in out
    assert set(values(tmp_path)) == {"source-a", "source-c", "add-cc"}  # everything else was built
    store = Store(str(tmp_path / "store"))
    published = {m.ref for m in store.all_manifests()}
    fake_kinds.clear()
    graph["b"].pop("fail")
    assert run(tmp_path, graph) == 0
    assert fake_kinds == ["source", "add", "add"]  # a and c's branch were not redone
    assert published <= {m.ref for m in store.all_manifests()}  # every earlier version intact


def test_a_killed_run_resumes_from_its_finished_stages(tmp_path, fake_kinds, capsys):
    graph = copy.deepcopy(GRAPH)
    graph["c"]["interrupt"] = True
    graph_fakes.INTERRUPT.append(True)
    try:
        assert run(tmp_path, graph) == 130
    finally:
        graph_fakes.INTERRUPT.clear()
    assert "interrupted: finished work is kept" in capsys.readouterr().err
    assert set(values(tmp_path)) == {"source-a", "source-b", "add-ab", "add-abb"}
    fake_kinds.clear()
    assert run(tmp_path, graph) == 0
    assert fake_kinds == ["source", "add"]


def test_until_and_only(tmp_path, fake_kinds, capsys):
    assert run(tmp_path, GRAPH, "--until", "ab") == 0
    assert set(values(tmp_path)) == {"source-a", "source-b", "add-ab"}
    assert run(tmp_path, GRAPH, "--only", "abb") == 0
    assert "add-abb" in values(tmp_path) and "source-c" not in values(tmp_path)
    assert run(tmp_path, GRAPH, "--only", "cc") == 2
    assert "--only cc: it needs $c" in capsys.readouterr().err


def test_deleted_output_is_rebuilt(tmp_path, fake_kinds):
    import shutil

    assert run(tmp_path, GRAPH) == 0
    shutil.rmtree(tmp_path / "store" / "fake-add-cc")
    fake_kinds.clear()
    assert run(tmp_path, GRAPH) == 0
    assert fake_kinds == ["add"]


@pytest.mark.parametrize("stages, message", [
    ({"x": {"kind": "responses", "variant": "instruct", "prompt_set": "p", "after": ["$y"]},
      "y": {"kind": "responses", "variant": "instruct", "prompt_set": "p", "after": ["$x"]}},
     r"experiments\.toy\.stages\.x: cycle: \$x -> \$y -> \$x"),
    ({"x": {"kind": "steering", "vectors": "$nowhere", "method": "probe"}},
     r"experiments\.toy\.stages\.x\.vectors: reference to a missing stage \$nowhere"),
    ({"x": {"kind": "responses", "variant": "instruct", "prompt_set": "p", "temprature": 0.5}},
     r"experiments\.toy\.stages\.x\.temprature: unknown parameter of a responses stage"),
    ({"x": {"kind": "vectorz"}}, r"experiments\.toy\.stages\.x\.kind: unknown stage kind 'vectorz'"),
    ({"x": {"kind": "responses", "variant": "chat", "prompt_set": "p"}},
     r"experiments\.toy\.stages\.x\.variant: unknown variant 'chat' \(known: instruct\)"),
])
def test_bad_catalogs_one_line_exit_2(tmp_path, stages, message):
    catalog = write_catalog(tmp_path, stages)
    text = catalog.read_text().replace("experiments:", "prompt_sets:\n  p:\n    path: p.json\nexperiments:")
    catalog.write_text(text)
    done = subprocess.run([sys.executable, "-m", "builders.run", "--catalog", str(catalog), "--store",
                           str(tmp_path / "store"), "--experiment", "toy", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: catalog.yaml: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "store").exists()
