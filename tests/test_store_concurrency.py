"""Two processes publishing the same version at once, 20 rounds: one wins, the other reuses
it; a reader polling meanwhile never sees a half-written manifest or a missing file."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
from pathlib import Path

from store import BuildSpec, Store


def _publish(root: str, round_: int, barrier, out) -> None:
    store = Store(root)
    spec = BuildSpec(f"race-{round_}", "test", "test", "1", {"round": round_}, {}, {})

    def produce(writer) -> None:
        writer.write_table([{"i": i, "round": round_} for i in range(200)])
        writer.write_bytes("blob.bin", bytes(range(256)) * 64)

    barrier.wait()
    out.put(store.build(spec, produce).manifest.version)


def _check_visible(root: Path, name: str) -> None:
    for manifest_path in root.glob(f"{name}/*/manifest.json"):
        data = json.loads(manifest_path.read_text())  # a half-written manifest would not parse
        for rel, info in data["files"].items():
            f = manifest_path.parent / rel
            assert f.exists(), f"{rel} missing while the manifest is visible"
            assert hashlib.sha256(f.read_bytes()).hexdigest() == info["sha256"]


def test_twenty_rounds_of_two_concurrent_publishers(tmp_path):
    ctx = mp.get_context("fork")
    for round_ in range(20):
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_publish, args=(str(tmp_path), round_, barrier, out)) for _ in range(2)]
        for proc in procs:
            proc.start()
        while any(proc.is_alive() for proc in procs):
            _check_visible(tmp_path, f"race-{round_}")
            time.sleep(0.001)
        assert all(proc.exitcode == 0 for proc in procs)
        versions = [out.get(timeout=10) for _ in procs]
        assert versions[0] == versions[1]
        store = Store(str(tmp_path))
        assert [m.version for m in store.versions(f"race-{round_}")] == [versions[0]]
        assert store.read_table(f"race-{round_}").height == 200
        _check_visible(tmp_path, f"race-{round_}")
        assert store.collect_garbage() == []


def _publish_rounds(root: str, name: str, rounds: int, barrier) -> None:
    store = Store(root)
    barrier.wait()
    for round_ in range(rounds):
        spec = BuildSpec(name, "test", "test", "1", {"round": round_}, {}, {})

        def produce(writer, round_=round_) -> None:
            writer.write_table([{"i": i, "round": round_, "name": name} for i in range(100)])
            writer.write_bytes("blob.bin", bytes([round_]) * 4096)

        store.build(spec, produce)


def _collect_garbage_forever(root: str, stop) -> None:
    store = Store(root)
    while not stop.is_set():
        store.collect_garbage()


def test_different_datasets_at_once_with_gc_running(tmp_path):
    """Two builders publish different datasets, 20 versions each, while `gc` runs in a loop
    and a reader lists and queries: every version ends complete, nothing a builder is still
    writing is collected, and a listed version is always readable."""
    from store.sql import query

    ctx = mp.get_context("fork")
    barrier, stop = ctx.Barrier(2), ctx.Event()
    builders = [ctx.Process(target=_publish_rounds, args=(str(tmp_path), name, 20, barrier))
                for name in ("left", "right")]
    collector = ctx.Process(target=_collect_garbage_forever, args=(str(tmp_path), stop))
    collector.start()
    for proc in builders:
        proc.start()
    reader = Store(str(tmp_path))
    while any(proc.is_alive() for proc in builders):
        for name in ("left", "right"):
            _check_visible(tmp_path, name)
            for manifest in reader.versions(name):
                assert reader.read_table(manifest).height == 100
    stop.set()
    collector.join(timeout=30)
    assert all(proc.exitcode == 0 for proc in builders) and collector.exitcode == 0
    for name in ("left", "right"):
        rounds = sorted(reader.read_table(m)["round"][0] for m in reader.versions(name))
        assert rounds == list(range(20)), f"{name}: versions missing"
        _check_visible(tmp_path, name)
    counts = query(reader, "SELECT name, count(*) AS n FROM test GROUP BY name ORDER BY name")
    assert counts.to_dicts() == [{"name": "left", "n": 100}, {"name": "right", "n": 100}]
    assert reader.collect_garbage(min_idle=0) == []


def test_gc_removes_a_dead_builders_folder_at_once_and_spares_a_live_one(tmp_path):
    import os
    import subprocess
    import sys

    from store.leftovers import tmp_name

    store = Store(str(tmp_path))
    store.build(BuildSpec("d", "test", "test", "1", {}, {}, {}), lambda w: w.write_table([{"i": 1}]))
    live = tmp_path / "d" / tmp_name("ab" * 8)  # owned by this (live) process
    live.mkdir()
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    dead = tmp_path / "d" / tmp_name("cd" * 8).replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    dead.mkdir()
    (tmp_path / "d" / "0123456789abcdef").mkdir()  # manifest-less, fresh: maybe about to be published
    assert store.collect_garbage() == [str(dead)]
    assert live.exists()
    assert sorted(store.collect_garbage(min_idle=0)) == [str(tmp_path / "d" / "0123456789abcdef")]


def _publish_with_scratch(root: str, round_: int, delay: float, barrier, out) -> None:
    """A resumable builder: work goes to the version's scratch folder, then is read back."""
    import os

    store = Store(root)
    spec = BuildSpec(f"scratch-{round_}", "test", "test", "1", {"round": round_}, {}, {})

    def produce(writer) -> None:
        scratch = store.partial_dir(spec)
        with open(f"{scratch}/part-{os.getpid()}", "w") as handle:
            handle.write("done")
        time.sleep(delay)  # the other builder may publish and clear the scratch folder meanwhile
        rows = [{"part": p.rsplit("/", 1)[-1][:4]} for p in sorted(store.fs.ls(scratch, detail=False))]
        writer.write_table(rows[:1])

    barrier.wait()
    out.put(store.build(spec, produce).manifest.version)


def test_a_builder_whose_scratch_was_cleared_by_the_winner_reuses_its_version(tmp_path):
    ctx = mp.get_context("fork")
    for round_ in range(5):
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_publish_with_scratch, args=(str(tmp_path), round_, delay, barrier, out))
                 for delay in (0.0, 1.5)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=30)
        assert [proc.exitcode for proc in procs] == [0, 0]
        assert len({out.get(timeout=5), out.get(timeout=5)}) == 1
        assert len(Store(str(tmp_path)).versions(f"scratch-{round_}")) == 1


def test_gc_collects_scratch_left_beside_a_published_version_only(tmp_path):
    store = Store(str(tmp_path))
    spec = BuildSpec("d", "test", "test", "1", {}, {}, {})
    store.build(spec, lambda w: w.write_table([{"i": 1}]))
    late = Path(store.partial_dir(spec))  # a losing builder wrote scratch after the winner cleared it
    (late / "unit-00000").mkdir(parents=True)
    pending = Path(store.partial_dir(BuildSpec("d", "test", "test", "1", {"other": 1}, {}, {})))  # resumable work
    (pending / "batch-00000.parquet").write_bytes(b"x")
    assert store.collect_garbage() == []  # fresh: maybe still being written
    assert store.collect_garbage(min_idle=0) == [str(late)]
    assert pending.exists()
