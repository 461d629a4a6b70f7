"""``--executor ray`` builds the same versions, byte for byte, as ``--executor local``.

A local Ray cluster (2 CPUs, no dashboard) is started by the module fixture; its workers
import this worktree's code through ``PYTHONPATH`` (the venv's editable install may point
elsewhere). Responses and activations (pooled and per token) are built with the real
SmolLM2 model, greedy, in two stores, and compared file by file.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builders.stages.activations import capture_activations
from builders.shared.catalog import load_catalog
from builders.shared.executors import Executor, RayExecutor
from builders.stages.responses import generate_responses
from store import BuildSpec, Store

REPO = Path(__file__).resolve().parents[1]
GEN = {"max_new_tokens": 8, "batch_size": 2, "unit_size": 4, "temperature": 0.0}  # 10 prompts -> 3 units


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        yield ray
    finally:
        ray.shutdown()


def _build_all(store: Store, executor: Executor) -> dict[str, object]:
    catalog = load_catalog()
    out = {"responses": generate_responses(store, catalog, "instruct", "general", "demo", GEN, quiet=True,
                                           executor=executor).manifest}
    out["pooled"] = capture_activations(store, catalog, "instruct", "general", "response[:]", "all", batch_size=2,
                                        unit_size=4, quiet=True, executor=executor).manifest
    out["per_token"] = capture_activations(store, catalog, "instruct", "general", "all[:]", "3,29", per_token=True,
                                           batch_size=2, unit_size=4, quiet=True, executor=executor).manifest
    return out


def test_ray_and_local_build_identical_versions(ray_cluster, tmp_path, caplog, monkeypatch):
    import builders.stages.activations

    monkeypatch.setattr(builders.stages.activations, "TOKEN_CHUNK", 7)  # owned chunks and shared edge chunks
    caplog.set_level(logging.INFO, logger="builders.shared.executors")
    local = _build_all(Store(str(tmp_path / "local")), Executor())
    local_pids = {pid for r in caplog.records for pid in getattr(r, "unit_pids", [])}
    caplog.clear()
    with RayExecutor() as executor:
        assert executor.workers == 2
        remote = _build_all(Store(str(tmp_path / "ray")), executor)
    runs = [r for r in caplog.records if hasattr(r, "unit_pids")]
    assert [r.units for r in runs] == [3, 3, 3]
    ray_pids = {pid for r in runs for pid in r.unit_pids}
    assert len(ray_pids) > 1, f"units ran in one process only: {ray_pids}"
    assert not ray_pids & local_pids

    for key, mine in local.items():
        theirs = remote[key]
        assert mine.version == theirs.version, key
        assert mine.files == theirs.files, key  # every file's sha256, zarr metadata included
        assert mine.content_hash == theirs.content_hash, key
        assert mine.tables == theirs.tables and mine.arrays == theirs.arrays and mine.summary == theirs.summary
    assert sum(p.startswith("data/train-") for p in local["responses"].files) == 3
    assert "executor" not in json.dumps(local["responses"].params)
    assert local["responses"].params["generation"]["temperature"] == 0  # greedy

    store = Store(str(tmp_path / "ray"))
    rows = store.read_table(remote["per_token"]).to_dicts()
    assert [r["sample"] for r in rows] == list(range(10))
    assert [(r["token_start"], r["token_end"]) for r in rows][0][0] == 0
    assert all(a["token_end"] == b["token_start"] for a, b in zip(rows, rows[1:]))  # sample order, no gaps
    acts = store.open_array(remote["per_token"], "acts")
    assert acts.chunks == (7, 1, 576) and acts.shape[0] == rows[-1]["token_end"]
    pooled = store.open_array(remote["pooled"], "acts")[:]
    assert pooled.shape == (10, 30, 576) and np.isfinite(pooled).all()
    assert not list((tmp_path / "ray").glob("*/.partial-*"))  # scratch removed on publish


def _spec(name: str) -> BuildSpec:
    return BuildSpec(name=name, kind="test", builder="tests", code_version="1", params={}, parents={}, identity={})


def _fake_units(store: Store, scratch: str, arrays) -> tuple[list, np.ndarray, np.ndarray]:
    import pyarrow as pa

    from builders.shared.units import UnitOutput, plan_units

    rng = np.random.default_rng(0)
    counts = [int(c) for c in rng.integers(0, 9, size=11)]
    units = plan_units(11, 3, counts)
    pooled, tokens = arrays
    data_p = rng.standard_normal(pooled.shape).astype(np.float32)
    data_t = rng.standard_normal(tokens.shape).astype(np.float32)
    metas = []
    for unit in units:
        out = UnitOutput(store.location, scratch, unit)
        out.write_table(pa.table({"sample": pa.array(range(unit.start, unit.end), pa.int64())}))
        out.write_array(pooled, unit.start, data_p[unit.start:unit.end])
        rows = out.array_rows(tokens, unit.token_start, unit.token_end)
        for lo in reversed(range(unit.token_start, unit.token_end, 2)):  # rows in any order
            rows.write(lo, data_t[lo:min(lo + 2, unit.token_end)])
        rows.close()
        metas.append(out.finish())
    return metas, data_p, data_t


def test_finalize_ignores_unit_order(tmp_path):
    from builders.shared.units import ArraySpec, finalize, mark_scratch

    results = []
    for order in ("forward", "reversed"):
        store = Store(str(tmp_path / order))
        spec = _spec("units-test")
        scratch = store.partial_dir(spec)
        mark_scratch(store.location, scratch)
        pooled = ArraySpec("pooled", (11, 2, 4), (3, 1, 4), ("sample", "layer", "d"), attributes={"a": 1})
        rng = np.random.default_rng(0)
        total = int(sum(rng.integers(0, 9, size=11)))
        tokens = ArraySpec("tokens", (total, 2, 4), (5, 1, 4), ("token", "layer", "d"))
        metas, data_p, data_t = _fake_units(store, scratch, (pooled, tokens))
        given = metas if order == "forward" else list(reversed(metas))
        manifest = store.build(spec, lambda w: finalize(w, store.location, scratch, given, [pooled, tokens])).manifest
        np.testing.assert_array_equal(store.open_array(manifest, "pooled")[:], data_p)
        np.testing.assert_array_equal(store.open_array(manifest, "tokens")[:], data_t)
        assert store.read_table(manifest)["sample"].to_list() == list(range(11))
        results.append(manifest)
    assert results[0].files == results[1].files and results[0].content_hash == results[1].content_hash
    assert len(results[0].tables["data"]["splits"]["train"]["shards"]) == 4


def _cli(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builders.responses", "--store", str(root), "--variant", "instruct",
                           "--prompts", "general", "--quiet", *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("extra, message", [
    (["--executor", "dask"], "unknown executor 'dask'"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach 127.0.0.1:1"),
    (["--executor", "ray", "--ray-address", "ray://127.0.0.1:1"], "cannot reach 127.0.0.1:1"),
    (["--ray-address", "auto"], "need --executor ray"),
    (["--workers", "0"], "need --executor ray"),
    (["--executor", "ray", "--workers", "0"], "--workers must be >= 1"),
    (["--unit-size", "0"], "--unit-size: unit size must be >= 1"),
    (["--rollouts", "0"], "--rollouts must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_executor_is_one_line_and_touches_nothing(tmp_path, extra, message):
    root = tmp_path / "store"
    out = _cli(root, *extra)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not root.exists()


class _CountingJob:
    """A unit job without a model: records which units ran."""

    label = "fake"

    def __init__(self, store: Store, scratch: str) -> None:
        self.store, self.scratch, self.ran = store, scratch, []

    def run_unit(self, unit):
        import pyarrow as pa

        from builders.shared.units import UnitOutput

        self.ran.append(unit.index)
        out = UnitOutput(self.store.location, self.scratch, unit)
        out.write_table(pa.table({"sample": pa.array(range(unit.start, unit.end), pa.int64())}))
        return out.finish()


def test_finished_units_are_not_redone(tmp_path):
    import pyarrow as pa

    from builders.shared.executors import run_units
    from builders.shared.units import UnitOutput, mark_scratch, plan_units

    store = Store(str(tmp_path / "s"))
    scratch = store.partial_dir(_spec("resume-test"))
    units = plan_units(10, 3)
    mark_scratch(store.location, scratch)
    first = _CountingJob(store, scratch)
    first.run_unit(units[2])  # a killed run finished unit 2 only
    started = UnitOutput(store.location, scratch, units[1])  # and started unit 1: files, no done.json
    started.write_table(pa.table({"sample": pa.array([99], pa.int64())}))
    started.save_npy("edges/x.npy", np.zeros(3))
    again = _CountingJob(store, scratch)
    metas = run_units(Executor(threads=1), again, store.location, scratch, units, quiet=True)
    assert again.ran == [0, 1, 3] and [m.unit for m in metas] == [0, 1, 2, 3]


def test_ray_actor_pool_runs_each_unit_once_reuses_workers_and_reraises(ray_cluster):
    """The Ray executor's queue (``ray.util.ActorPool``): every unit once, on long-lived
    workers (the same processes across calls), a unit's own exception re-raised as itself,
    and a fresh set of workers after a failure."""
    import os
    import time

    from builders.shared.units import plan_units

    class Job:  # defined here so that Ray pickles it by value (workers need not import tests)
        label = "fake"

        def __init__(self, fail_at: int | None = None) -> None:
            self.fail_at = fail_at

        def run_unit(self, unit):
            if unit.index == self.fail_at:
                raise KeyError(f"unit {unit.index} failed")
            time.sleep(0.05 * (unit.index % 3))  # finish out of order
            return {"unit": unit.index, "pid": os.getpid()}

    units = plan_units(9, 1)
    with RayExecutor(workers=2) as executor:
        first: list[dict] = []
        executor.map_units(Job(), units, first.append)
        assert sorted(m["unit"] for m in first) == list(range(9))
        pids = {m["pid"] for m in first}
        assert len(pids) == 2 and os.getpid() not in pids
        second: list[dict] = []
        executor.map_units(Job(), units[:4], second.append)
        assert {m["pid"] for m in second} <= pids  # models stay loaded: the same worker processes
        with pytest.raises(KeyError, match="unit 5 failed"):
            executor.map_units(Job(fail_at=5), units, lambda meta: None)
        third: list[dict] = []
        executor.map_units(Job(), units[:3], third.append)
        assert sorted(m["unit"] for m in third) == [0, 1, 2] and not {m["pid"] for m in third} & pids


def test_builders_run_executor_ray_builds_what_local_builds(ray_cluster, tmp_path, capsys):
    """``python -m builders.run --executor ray``: a declared responses stage runs its units on Ray,
    and its version (id and content) is the one ``--executor local`` builds."""
    import yaml

    from builders.run import cli

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"general": {"path": str(REPO / "datasets" / "inference" / "general.json")}},
        "experiments": {"toy": {"variants": {"instruct": {"model": "smol"}}, "stages": {
            "answers": {"kind": "responses", "variant": "instruct", "prompt_set": "general", "max_new_tokens": 4,
                        "batch_size": 2}}}}}))
    refs = {}
    for executor in ("ray", "local"):
        root = tmp_path / executor
        assert cli(["--store", str(root), "--catalog", str(catalog), "--experiment", "toy", "-q",
                    "--executor", executor]) == 0
        store = Store(str(root))
        refs[executor] = store.latest("responses-toy-instruct-general")
    assert refs["ray"].ref == refs["local"].ref
    assert refs["ray"].content_hash == refs["local"].content_hash
    assert refs["ray"].summary["responses"] == 10
