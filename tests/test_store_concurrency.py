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
