"""The store: versions, atomic publish, references, lineage, formats, on disk, in memory and on S3."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from store import BuildSpec, Store, StoreError
from store.hashing import canonical_json, sha256_stream, version_id
from store.manifest import MANIFEST


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "root"))
    if request.param == "s3":  # a moto S3 server on loopback (tests/conftest.py)
        return Store(request.getfixturevalue("s3_url"))
    return Store(f"memory://ts-{uuid.uuid4().hex[:8]}")


def spec(name="prompts-x", params=None, parents=None, kind="prompts") -> BuildSpec:
    return BuildSpec(name, kind, "builders.test", "1", params or {"n": 3}, parents or {}, {"model_id": "m"})


def write_rows(n: int):
    def produce(writer):
        writer.write_table([{"i": i, "text": f"row {i}"} for i in range(n)])
        acts = writer.create_array("acts", (n, 2, 4), (n, 1, 4), ("sample", "layer", "d_model"))
        acts[:] = np.arange(n * 8, dtype=np.float32).reshape(n, 2, 4)
    return produce


def test_version_id_is_canonical_and_input_sensitive():
    a = version_id("b", "1", {"x": 1, "y": [1.0, 2]}, {"p": "d@1"})
    assert a == version_id("b", "1", {"y": [1, 2.0], "x": 1}, {"p": "d@1"})
    assert a != version_id("b", "2", {"x": 1, "y": [1, 2]}, {"p": "d@1"})
    assert a != version_id("b", "1", {"x": 1, "y": [1, 2]}, {"p": "d@2"})
    assert a != version_id("b", "1", {"x": 1, "y": [1, 2]}, {"p": "d@1"}, {"model_revision": "r"})
    assert canonical_json({"b": 1, "a": 2.0}) == '{"a":2,"b":1}'


def _old_block_loop(handle) -> str:  # what sha256_stream was before hashlib.file_digest
    import hashlib

    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 17])
def test_file_hashes_are_the_block_loop_ones(tmp_path, size):
    import fsspec

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(data)
    memory = fsspec.filesystem("memory")
    in_memory = f"/hash-{uuid.uuid4().hex[:8]}"
    memory.pipe_file(in_memory, data)
    opens = [lambda: open(tmp_path / "blob", "rb"), lambda: fsspec.filesystem("file").open(str(tmp_path / "blob"), "rb"),
             lambda: memory.open(in_memory, "rb")]
    for opener in opens:  # a builtin file, an fsspec local file, an in-memory one (S3-like)
        with opener() as a, opener() as b:
            assert sha256_stream(a) == _old_block_loop(b)


def test_publish_read_and_rebuild_is_noop(store):
    first = store.build(spec(), write_rows(3))
    assert first.built
    m = first.manifest
    assert store.read_table("prompts-x")["i"].to_list() == [0, 1, 2]
    assert store.open_array("prompts-x", "acts")[2, 1, 3] == 23.0
    assert m.rows == 3 and m.tables["data"]["schema"]["i"] == "int64"
    assert m.arrays["acts"]["dimension_names"] == ["sample", "layer", "d_model"]
    assert set(m.files) >= {"data/train-00000-of-00001.parquet", "arrays/acts.zarr/zarr.json"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in m.files.values())
    assert m.packages["pyarrow"] and m.created_at

    calls = []
    again = store.build(spec(), lambda w: calls.append(w))
    assert not again.built and not calls and again.manifest.version == m.version

    forced = store.build(spec(), write_rows(3), force=True)
    assert forced.built and forced.manifest.version == m.version
    assert forced.manifest.content_hash == m.content_hash  # same inputs, same bytes


def test_references_latest_and_prefixes(store):
    a = store.build(spec(params={"n": 1}), write_rows(1)).manifest
    b = store.build(spec(params={"n": 2}), write_rows(2)).manifest
    assert store.resolve("prompts-x").version == b.version
    assert store.resolve(f"prompts-x@{a.version[:6]}").version == a.version
    store.build(spec(params={"n": 1}), write_rows(1))  # confirming an old build makes it latest
    assert store.resolve("prompts-x").version == a.version
    with pytest.raises(StoreError, match="no version"):
        store.resolve("prompts-x@ffffffffff")
    with pytest.raises(StoreError, match="no published version"):
        store.resolve("nothing")


def test_ambiguous_prefix_is_refused(tmp_path):
    store = Store(str(tmp_path))
    # 17 versions: two must share their first hex digit (pigeonhole)
    versions = [store.build(spec(params={"n": n}), write_rows(1)).manifest.version for n in range(17)]
    first = next(v[0] for v in versions if sum(w[0] == v[0] for w in versions) > 1)
    with pytest.raises(StoreError, match="ambiguous"):
        store.resolve(f"prompts-x@{first}")


def test_failed_build_leaves_nothing(store):
    def broken(writer):
        writer.write_table([{"i": 1}])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.build(spec(), broken)
    assert store.datasets() == []
    assert list(store.garbage()) == []


def test_folder_without_manifest_is_invisible(store):
    m = store.build(spec(), write_rows(2)).manifest
    store.fs.rm(store.path(m, MANIFEST))
    assert store.versions("prompts-x") == []
    with pytest.raises(StoreError):
        store.resolve("prompts-x")
    assert list(store.garbage()) == []  # too fresh: could be a build about to write it
    assert len(list(store.garbage(min_idle=0))) == 1
    rebuilt = store.build(spec(), write_rows(2))  # the leftover is replaced, same id and bytes
    assert rebuilt.built and rebuilt.manifest.version == m.version
    assert rebuilt.manifest.content_hash == m.content_hash


def test_lineage_both_ways(store):
    p = store.build(spec(), write_rows(2)).manifest
    r = store.build(spec("responses-x", parents={"prompts": p.ref}, kind="responses"), write_rows(1)).manifest
    a = store.build(spec("activations-x", parents={"responses": r.ref}, kind="activations"), write_rows(1)).manifest
    assert [m.ref for m in store.parents(a)] == [r.ref]
    assert [m.ref for m in store.children(p)] == [r.ref]
    assert [m.ref for m in store.children(r)] == [a.ref]


def test_bad_names_are_refused(store):
    with pytest.raises(StoreError, match="bad dataset name"):
        store.build(spec("../escape"), write_rows(1))
    with pytest.raises(StoreError, match="bad dataset reference"):
        store.resolve("a b@1")


def test_sql_views_per_dataset_per_kind_and_catalog(store):
    from store.sql import query

    p = store.build(spec(), write_rows(3)).manifest
    store.build(spec("responses-x", parents={"prompts": p.ref}, kind="responses"), write_rows(2))
    assert query(store, "SELECT count(*) AS n FROM prompts_x")["n"][0] == 3
    kinds = query(store, "SELECT dataset, count(*) AS n FROM responses GROUP BY dataset")
    assert kinds.to_dicts() == [{"dataset": "responses-x", "n": 2}]
    cat = query(store, "SELECT dataset, version, parents FROM catalog ORDER BY dataset")
    assert cat["dataset"].to_list() == ["prompts-x", "responses-x"]
    assert cat["parents"].to_list()[1] == [p.ref]


def test_parquet_shards_load_with_hf_datasets(tmp_path):
    import datasets

    store = Store(str(tmp_path))
    m = store.build(spec(), write_rows(5)).manifest
    direct = datasets.load_dataset(str(tmp_path / m.name / m.version), split="train")
    assert direct["i"] == [0, 1, 2, 3, 4]
    assert store.load_dataset(m)["train"]["text"][4] == "row 4"


def test_manifest_is_valid_json_with_params_and_parents(store):
    p = store.build(spec(), write_rows(1)).manifest
    r = store.build(spec("responses-x", parents={"prompts": p.ref}), write_rows(1)).manifest
    data = json.loads(store.read_bytes(r, MANIFEST))
    assert data["parents"] == {"prompts": p.ref} and data["params"] == {"n": 3}
    assert data["identity"] == {"model_id": "m"}


def test_judge_score_cache_persists_and_survives_gc(store):
    from builders.shared.judge_cache import StoreScoreCache

    cache = StoreScoreCache(store)
    key = ("judge-model", "tmplhash", "question?", "answer.")
    assert cache.get_many([key]) == {}
    cache.put_many([(key, 73.5), (("j", "t", "q", "none"), None)])
    fresh = StoreScoreCache(store)  # a new process sees what the last one kept
    assert fresh.get_many([key, ("j", "t", "q", "none"), ("j", "t", "q", "other")]) == {
        key: 73.5, ("j", "t", "q", "none"): None}
    assert store.collect_garbage() == [] and len(StoreScoreCache(store)) == 2
    assert store.datasets() == []


def test_kind_views_cover_extra_tables(store):
    from store.sql import query

    def produce(writer):
        writer.write_table([{"i": 1}])
        writer.write_table([{"layer": 0, "norm": 1.5}, {"layer": 1, "norm": 2.5}], table="stats")

    store.build(spec("activations-a", kind="activations"), produce)
    store.build(spec("activations-b", kind="activations", params={"n": 4}), produce)
    out = query(store, "SELECT dataset, sum(norm) AS s FROM activations__stats GROUP BY 1 ORDER BY 1")
    assert out.to_dicts() == [{"dataset": "activations-a", "s": 4.0}, {"dataset": "activations-b", "s": 4.0}]
    assert query(store, "SELECT count(*) AS n FROM activations_a__stats")["n"][0] == 2
