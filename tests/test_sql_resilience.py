"""One bad version must not take SQL down: writers refuse column-less tables, and ``store sql``
skips (and names) a table it cannot read while every other view keeps working."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import BuildSpec, Store
from store.sql import query

REPO = Path(__file__).resolve().parents[1]


def spec(name: str, kind: str) -> BuildSpec:
    return BuildSpec(name, kind, "builders.test", "1", {}, {}, {})


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def publish_with_raw_table(store: Store, name: str, table: str, data: bytes) -> None:
    """Publish a version whose ``table`` shard holds ``data`` as it is, the way an older
    writer (or a damaged copy) left it: manifest, hashes and all, so it looks published."""
    def produce(writer) -> None:
        writer.write_table([{"layer": 0, "norm": 1.5}])  # a readable main table
        rel = f"tables/{table}/train-00000-of-00001.parquet"
        writer.write_bytes(rel, data)
        writer.tables[table] = {"rows": 0, "splits": {"train": {"rows": 0, "shards": [rel]}}, "schema": {}}

    store.build(spec(name, "weights"), produce)


@pytest.fixture
def broken(tmp_path) -> Store:
    store = Store(str(tmp_path / "root"))
    store.build(spec("prompts-a", "prompts"), lambda w: w.write_table([{"prompt_id": "x"}, {"prompt_id": "y"}]))
    publish_with_raw_table(store, "weights-x-instruct-instruct", "logit_lens", parquet_bytes(pa.table({})))
    publish_with_raw_table(store, "weights-x-instruct-damaged", "logit_lens", b"PAR1 not really parquet PAR1")

    def good(writer) -> None:
        writer.write_table([{"layer": 1, "norm": 2.5}])
        writer.write_table([{"token": "happy", "score": 0.9}], table="logit_lens")

    store.build(spec("weights-x-instruct-finetuned", "weights"), good)
    return store


@pytest.mark.parametrize("rows", [pa.table({}), []], ids=["arrow", "empty-list"])
def test_writer_refuses_a_table_without_columns(tmp_path, rows):
    store = Store(str(tmp_path / "root"))
    with pytest.raises(ValueError, match=r"weights-x: table 'logit_lens' has no columns"):
        store.build(spec("weights-x", "weights"),
                    lambda w: (w.write_table([{"layer": 0}]), w.write_table(rows, table="logit_lens")))
    assert store.datasets() == []  # nothing published


def test_writer_refuses_shards_registered_without_columns(tmp_path):
    store = Store(str(tmp_path / "root"))
    with pytest.raises(ValueError, match=r"weights-x: table 'data' has no columns"):
        store.build(spec("weights-x", "weights"), lambda w: w.add_table_shards([], 0, {}))
    assert store.datasets() == []


def test_sql_skips_unreadable_tables_and_names_them(broken, caplog):
    with caplog.at_level("WARNING", logger="store.sql"):
        assert query(broken, "SELECT count(*) AS n FROM prompts_a")["n"].to_list() == [2]
    assert not [m for m in caplog.messages if "skipped" in m]  # views are made for the tables a query names
    # the broken versions' readable tables and the kind view over the readable parts still work
    assert query(broken, "SELECT count(*) AS n FROM weights")["n"].to_list() == [3]
    with caplog.at_level("WARNING", logger="store.sql"):
        assert query(broken, "SELECT token FROM weights__logit_lens")["token"].to_list() == ["happy"]
    skipped = [m for m in caplog.messages if "skipped" in m]
    assert len(skipped) == 2 and all("\n" not in m for m in skipped)
    assert any("weights-x-instruct-instruct@" in m and "logit_lens" in m for m in skipped)
    assert any("weights-x-instruct-damaged@" in m and "logit_lens" in m for m in skipped)
    assert query(broken, "SELECT norm FROM weights_x_instruct_instruct")["norm"].to_list() == [1.5]
    # naming the skipped table is a clear error, not "table does not exist"
    with pytest.raises(duckdb.Error, match=r"weights-x-instruct-instruct@\w+ table 'logit_lens' .*unreadable"):
        query(broken, "SELECT * FROM weights_x_instruct_instruct__logit_lens")


def test_store_sql_cli_keeps_working_and_says_what_it_skipped(broken):
    run = subprocess.run([sys.executable, "-m", "store", "--store", broken.location.root, "sql",
                          "SELECT prompt_id FROM prompts_a ORDER BY 1", "--format", "csv"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["prompt_id", "x", "y"]
    assert run.stderr.strip() == ""  # the broken tables are not named: not read
    run = subprocess.run([sys.executable, "-m", "store", "--store", broken.location.root, "sql",
                          "SELECT token FROM weights__logit_lens", "--format", "csv"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["token", "happy"]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2 and all("logit_lens" in line for line in lines), run.stderr
    run = subprocess.run([sys.executable, "-m", "store", "--store", broken.location.root, "sql",
                          "SELECT * FROM weights_x_instruct_damaged__logit_lens"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: ") and "unreadable" in run.stderr
    assert "Traceback" not in run.stderr
