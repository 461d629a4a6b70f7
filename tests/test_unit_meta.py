"""A work unit's metadata as a typed object (``UnitMeta``) with the same ``done.json`` on disk,
and the unit's files written whole or not at all (``store.atomic.write_atomic``)."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from builders.shared.unit_meta import ArrayEntry, TableEntry, UnitMeta, run_batch_sizes, run_devices
from builders.shared.units import ArraySpec, UnitOutput, finished_units, mark_scratch, plan_units
from store import BuildSpec, Store

# done.json as the dict-based units code wrote it (json.dumps(meta, sort_keys=True)): stats
# flat beside the fixed keys, edges as lists
OLD_DONE = json.dumps({
    "unit": 1, "folder": "unit-00001/attempt-1a2b3c4d",
    "tables": {"data": {"path": "data/train-00001-of-00004.parquet", "rows": 3}},
    "arrays": {"acts": {"rows": [3, 9], "owned": [5, 5], "edges": [[3, 9, "edges/acts-3-9.npy"]]}},
    "responses": 3, "response_tokens": 40, "finished_by_eos": 1, "tokenizer": {"vocabulary_fingerprint": "v"},
    "model_id": "m", "device": "cpu", "batch_size": 4, "pid": 123, "host": "h",
}, sort_keys=True)


def test_done_json_reads_typed_and_writes_back_the_same_bytes():
    meta = UnitMeta.from_json(OLD_DONE)
    assert meta.unit == 1 and meta.folder == "unit-00001/attempt-1a2b3c4d"
    assert meta.tables == {"data": TableEntry("data/train-00001-of-00004.parquet", 3)}
    assert meta.arrays == {"acts": ArrayEntry((3, 9), (5, 5), ((3, 9, "edges/acts-3-9.npy"),))}
    assert (meta.pid, meta.host, meta.device, meta.batch_size) == (123, "h", "cpu", 4)
    assert meta.stats == {"responses": 3, "response_tokens": 40, "finished_by_eos": 1,
                          "tokenizer": {"vocabulary_fingerprint": "v"}, "model_id": "m"}
    assert meta.to_json() == OLD_DONE


def test_run_info_of_units_finished_before_it_was_recorded():
    old = UnitMeta.from_json(json.dumps({"unit": 0, "folder": "f", "tables": {}, "arrays": {}, "pid": 1, "host": "h"}))
    assert old.device is None and old.batch_size is None and old.stats == {}
    new = UnitMeta(unit=1, folder="g", device="cpu", batch_size=8)
    assert run_devices([old, new]) == "cpu" and run_batch_sizes([old, new]) == [8]
    assert run_devices([new, UnitMeta(unit=2, folder="h", device="cuda:0")]) == ["cpu", "cuda:0"]
    assert run_devices([old]) is None and run_batch_sizes([old]) == []


def _spec(name: str) -> BuildSpec:
    return BuildSpec(name=name, kind="test", builder="tests", code_version="1", params={}, parents={}, identity={})


def test_finish_returns_what_a_resumed_run_reads(tmp_path):
    store = Store(str(tmp_path / "s"))
    scratch = store.partial_dir(_spec("meta-test"))
    mark_scratch(store.location, scratch)
    unit = plan_units(10, 4, [2] * 10)[1]
    out = UnitOutput(store.location, scratch, unit)
    out.write_table(pa.table({"sample": pa.array(range(unit.start, unit.end), pa.int64())}))
    out.write_array(ArraySpec("acts", (20, 1, 2), (3, 1, 2), ("token", "layer", "d")), unit.token_start,
                    np.ones((unit.token_end - unit.token_start, 1, 2), dtype=np.float32))
    meta = out.finish(device="cpu", batch_size=4, responses=4)
    assert isinstance(meta, UnitMeta) and meta.stats == {"responses": 4} and meta.pid == os.getpid()
    assert meta.arrays["acts"].rows == (8, 16) and meta.arrays["acts"].owned == (9, 15)
    assert finished_units(store.location, scratch, [unit]) == {1: meta}
    with open(f"{scratch}/{meta.folder}/done.json", encoding="utf-8") as handle:
        assert handle.read() == meta.to_json()


def test_a_failed_table_write_leaves_no_file(tmp_path, monkeypatch):
    """A writer that dies halfway leaves nothing a resumed run or finalize could pick up
    (the hand-written temp-then-rename left its temp file behind)."""
    import pyarrow.parquet as pq

    store = Store(str(tmp_path / "s"))
    scratch = store.partial_dir(_spec("atomic-test"))
    mark_scratch(store.location, scratch)
    out = UnitOutput(store.location, scratch, plan_units(3, 3)[0])
    before = sorted(os.listdir(out.folder))

    def half_written(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_written)
    with pytest.raises(OSError, match="disk full"):
        out.write_table(pa.table({"sample": pa.array([0, 1, 2], pa.int64())}))
    left = [os.path.relpath(os.path.join(d, f), out.folder) for d, _, files in os.walk(out.folder) for f in files]
    assert left == [] and sorted(os.listdir(out.folder)) == before + ["data"]
    assert "data" not in out.meta.tables
