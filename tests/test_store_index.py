"""The catalog index (``<root>/_index``): kept current by publishing, rebuilt when missing or
damaged, reads that grow with the datasets a query names, pinned ``name@version`` tables,
no lost entries under concurrent publishers; plus the store's one atomic-write helper and
its import graph without a circle."""
from __future__ import annotations

import ast
import importlib.util
import multiprocessing as mp
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from store import BuildSpec, Store, StoreError
from store.atomic import write_atomic
from store.index import INDEX_DIR, CatalogIndex
from store.sql import query

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("store_scale", REPO / "benchmarks" / "store_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def publish(store: Store, name: str, kind: str, n: int, **params) -> str:
    spec = BuildSpec(name, kind, "builders.test", "1", {"n": n, **params}, {}, {})

    def produce(writer) -> None:
        writer.write_table([{"i": i, "name": name} for i in range(n)])
        writer.write_table([{"extra": n}], table="extra")

    return store.build(spec, produce).manifest.version


def answers(store: Store) -> list:
    return [query(store, "SELECT dataset, version, kind, is_latest, rows, params FROM catalog ORDER BY 1, 2").to_dicts(),
            query(store, "SELECT count(*) AS n FROM responses").to_dicts(),
            query(store, "SELECT sum(i) AS s FROM resp_a").to_dicts()]


@pytest.fixture
def small(tmp_path) -> Store:
    store = Store(str(tmp_path / "root"))
    publish(store, "resp-a", "responses", 3)
    publish(store, "resp-a", "responses", 4)
    publish(store, "resp-b", "responses", 2)
    publish(store, "acts-a", "activations", 5)
    return store


def test_publishing_keeps_the_index_current(small):
    entries, _, _ = CatalogIndex(small).load()
    assert {name: len(v) for name, v in entries.items()} == {"resp-a": 2, "resp-b": 1, "acts-a": 1}
    latest = small.latest("resp-a")
    entry = entries["resp-a"][latest.version]
    assert entry["kind"] == "responses" and entry["rows"] == 4 and entry["content_hash"] == latest.content_hash
    assert set(entry["tables"]) == {"data", "extra"}
    # a forced rebuild (same id, new content) replaces the entry
    spec = BuildSpec("acts-a", "activations", "builders.test", "1", {"n": 5}, {}, {})
    rebuilt = small.build(spec, lambda w: w.write_table([{"i": 9}]), force=True).manifest
    entry = CatalogIndex(small).load()[0]["acts-a"][rebuilt.version]
    assert entry["rows"] == 1 and entry["content_hash"] == rebuilt.content_hash
    assert query(small, "SELECT i FROM acts_a")["i"].to_list() == [9]


def test_a_deleted_or_corrupt_index_is_rebuilt_and_gives_the_same_answers(small, caplog):
    root = Path(small.location.root)
    expected = answers(small)
    assert expected[1] == [{"n": 6}] and len(expected[0]) == 4
    shutil.rmtree(root / INDEX_DIR)
    assert answers(small) == expected
    snapshots = sorted((root / INDEX_DIR).glob("snapshot-*.json"))  # the reader put it back
    assert snapshots and len(CatalogIndex(small).load()[0]) == 3
    snapshots[-1].write_text("{not json")
    (root / INDEX_DIR / "log").mkdir(exist_ok=True)
    (root / INDEX_DIR / "log" / "00000000000000000001-deadbeef.json").write_text('{"half": ')
    with caplog.at_level("WARNING", logger="store.index"):
        assert answers(small) == expected
    assert any("unreadable" in m for m in caplog.messages)
    run = subprocess.run([sys.executable, "-m", "store", "--store", str(root), "reindex"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip().startswith("indexed 4 version(s)"), run.stderr
    assert answers(small) == expected


def test_old_store_without_index_and_versions_the_index_lacks(tmp_path):
    """A store written before the index (or by a process that died before indexing) still
    answers; what the index lacked is folded in for the next reader."""
    root = tmp_path / "root"
    names = _bench().synthetic_store(root, datasets=10, per_dataset=3, index=False)
    store = Store(str(root))
    assert query(store, "SELECT count(*) AS n FROM responses")["n"].to_list() == [2 * 3]
    assert sum(len(v) for v in CatalogIndex(store).load()[0].values()) == 30
    # a version that appears without an index entry, in a dataset the index knows
    publish(store, names[0], "responses", 7)
    shutil.rmtree(root / INDEX_DIR / "log")
    assert query(store, f"SELECT count(*) AS n FROM {names[0].replace('-', '_')}")["n"].to_list() == [7]
    assert len(CatalogIndex(store).load()[0][names[0]]) == 4


def _reads(root: Path, sql: str, use_index: bool = True) -> int:
    bench = _bench()
    return bench.reads_for(root, sql, use_index)


def test_reads_for_a_one_dataset_query_do_not_grow_with_versions(tmp_path):
    bench = _bench()
    counts = {}
    for size in (100, 1000):
        root = tmp_path / f"s{size}"
        names = bench.synthetic_store(root, datasets=size // 5, per_dataset=5)
        one = f"SELECT count(*) FROM {names[3].replace('-', '_')}"
        assert query(Store(str(root)), one).item() == 3
        counts[size] = _reads(root, one)
    assert counts[1000] == counts[100] <= 10, counts


def test_pinned_versions_are_queryable(small):
    first, second = (m.version for m in small.versions("resp-a"))
    assert query(small, "SELECT count(*) AS n FROM resp_a")["n"].to_list() == [4]  # latest
    assert query(small, f'SELECT count(*) AS n FROM "resp-a@{first}"')["n"].to_list() == [3]
    assert query(small, f'SELECT extra FROM "resp-a@{second[:6]}__extra"')["extra"].to_list() == [4]
    joined = query(small, f'SELECT count(*) AS n FROM "resp-a@{first}" a JOIN resp_a b USING (i)')
    assert joined["n"].to_list() == [3]
    with pytest.raises(StoreError, match=r"no version of 'resp-a' matches 'ffff'"):
        query(small, 'SELECT * FROM "resp-a@ffff"')
    with pytest.raises(StoreError, match=r"has no table 'nope'"):
        query(small, f'SELECT * FROM "resp-a@{first}__nope"')
    run = subprocess.run([sys.executable, "-m", "store", "--store", small.location.root, "sql",
                          'SELECT * FROM "resp-b@zz"'], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip() == \
        f"error: no version of 'resp-b' matches 'zz' in {small.location.root}"


def test_sql_without_table_names_still_sees_every_view(small):
    views = query(small, "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1")["view_name"]
    assert {"resp_a", "resp_a__extra", "resp_b", "acts_a", "responses", "responses__extra", "activations",
            "catalog"} <= set(views.to_list())


def _publish_many(root: str, worker: int, count: int, barrier) -> None:
    store = Store(root)
    barrier.wait()
    for i in range(count):
        publish(store, f"w{worker}-d{i}", "test", 1 + i % 3)


def test_concurrent_publishers_keep_every_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(CatalogIndex, "compact_at", 4)  # inherited by the forked publishers
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_publish_many, args=(str(tmp_path), w, 12, barrier)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * 4
    store = Store(str(tmp_path))
    entries, generation, _ = CatalogIndex(store).load()
    assert generation >= 3  # compactions raced and happened
    assert sorted(entries) == sorted(f"w{w}-d{i}" for w in range(4) for i in range(12))
    # the entries alone (no listing) hold every version: nothing lost
    assert query(store, "SELECT count(*) AS n FROM test")["n"].to_list() == [sum(1 + i % 3 for i in range(12)) * 4]


def test_index_on_s3(s3_url):
    store = Store(s3_url)
    first = publish(store, "resp-s3", "responses", 2)
    publish(store, "resp-s3", "responses", 5)
    assert sorted(CatalogIndex(store).load()[0]["resp-s3"]) == sorted(m.version for m in store.versions("resp-s3"))
    assert query(store, f'SELECT count(*) AS n FROM "resp-s3@{first}"')["n"].to_list() == [2]
    assert query(store, "SELECT count(*) AS n FROM resp_s3")["n"].to_list() == [5]
    assert CatalogIndex(store).compact() and CatalogIndex(store).load()[1] == 0


@pytest.mark.parametrize("url", ["local", "memory"])
def test_write_atomic_replaces_whole_and_exclusive_refuses(tmp_path, url):
    store = Store(str(tmp_path / "r") if url == "local" else f"memory://atomic-{uuid.uuid4().hex[:8]}")
    target = store.location.join("sub", "f.txt")
    assert write_atomic(store.location, target, "one")
    assert write_atomic(store.location, target, lambda h: h.write(b"two"))
    assert not write_atomic(store.location, target, b"three", exclusive=True)
    assert store.fs.cat_file(target) == b"two"
    assert store.list_names(store.location.join("sub")) == ["f.txt"]  # no temporary left behind


def _imports(path: Path) -> set[str]:
    """Modules of the ``store`` package that ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in skip and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_move_folder_refuses_a_folder_with_files(tmp_path):
    from store.atomic import move_folder

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    assert not move_folder(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b" / "f").read_text() == "b" and (tmp_path / "a").is_dir()
    assert move_folder(str(tmp_path / "a"), str(tmp_path / "c"))
    assert (tmp_path / "c" / "f").read_text() == "a" and not (tmp_path / "a").exists()


def test_store_has_no_import_circle_and_one_atomic_writer():
    graph = {p.stem: _imports(p) for p in (REPO / "store").glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph.get(start, ()))

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert circles == [], f"import circle through {circles}"
    # files go through write_atomic, folders through move_folder (os.rename was in core and publishing)
    renames = [p.name for p in (REPO / "store").glob("*.py") if p.name != "atomic.py"
               and any(s in p.read_text() for s in ("fs.mv(", "os.replace(", "os.rename(", ".tmp\""))]
    assert renames == [], f"temp-then-rename outside store/atomic.py: {renames}"


def _cli_out(capsys, root: Path, *argv: str) -> str:
    from store.cli import main

    assert main(["--store", str(root), *argv]) == 0
    return capsys.readouterr().out


def test_ls_and_lineage_reads_do_not_grow_with_versions(tmp_path):
    """``ls`` and ``lineage`` read the index: per dataset one listing (and ``_latest``), no
    manifest for ``ls``, only the walked version and its ancestors for ``lineage``. Before,
    both read every manifest of every version, some twice (20 datasets, 2 versions each: ls
    100 manifest reads, lineage 82; 20 versions each: 820 and 802)."""
    bench = _bench()
    counts = {}
    for per in (2, 20):
        root = tmp_path / f"p{per}"
        names = bench.synthetic_store(root, datasets=20, per_dataset=per)
        counts[per] = {"ls": bench.command_reads(root, "ls"),
                       "lineage": bench.command_reads(root, "lineage", names[1]),
                       "lineage_full": bench.command_reads(root, "lineage", names[1], use_index=False)}
    assert counts[2]["ls"] == counts[20]["ls"] and counts[2]["lineage"] == counts[20]["lineage"], counts
    assert counts[20]["ls"]["manifests"] == 0, counts
    assert counts[20]["lineage"]["manifests"] == 2, counts  # names[1]'s latest and its parent
    assert counts[20]["lineage_full"]["manifests"] > 20 * 20, counts  # --no-index: as before


def test_ls_and_lineage_print_the_same_with_and_without_the_index(tmp_path, capsys):
    bench = _bench()
    root = tmp_path / "root"
    names = bench.synthetic_store(root, datasets=12, per_dataset=3)
    store = Store(str(root))
    # a version the index lacks (published by older code, or pulled): found by listing
    publish(store, names[11], "responses", 2, source=names[10])
    shutil.rmtree(root / INDEX_DIR / "log")
    prefix = bench.latest_of(names[0], 3)[:8]
    for argv in (["ls"], ["lineage", names[0]], ["lineage", f"{names[0]}@{prefix}"], ["lineage", names[5]]):
        with_index = _cli_out(capsys, root, *argv)
        assert with_index == _cli_out(capsys, root, *argv, "--no-index"), argv
    listing = _cli_out(capsys, root, "ls")
    assert f"{names[11]}" in listing and listing.count("synthetic") == 12
    downstream = _cli_out(capsys, root, "lineage", names[0]).split("downstream")[1]
    assert downstream.count(names[1] + "@") == 3 and names[10] not in downstream
    assert "(none)" in _cli_out(capsys, root, "lineage", names[5]).split("downstream")[1]


def test_ls_and_lineage_rebuild_a_missing_index(tmp_path, capsys):
    bench = _bench()
    root = tmp_path / "root"
    names = bench.synthetic_store(root, datasets=12, per_dataset=3)
    before = _cli_out(capsys, root, "ls")
    shutil.rmtree(root / INDEX_DIR)
    assert bench.command_reads(root, "ls")["manifests"] == 36  # read once, folded back in
    assert bench.command_reads(root, "ls")["manifests"] == 0
    shutil.rmtree(root / INDEX_DIR)
    assert bench.command_reads(root, "lineage", names[0])["manifests"] >= 36
    assert bench.command_reads(root, "lineage", names[0])["manifests"] == 1
    assert _cli_out(capsys, root, "ls") == before
