"""The store on S3 (a moto S3 server on loopback, see tests/conftest.py): the real builders
produce the same versions, bytes and query results as on a local store; publishing is
safe with concurrent publishers and readers; leftovers of killed publishers are handled.

The store unit tests in tests/test_store.py also run against S3 (their ``store`` fixture).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store import BuildSpec, Store
from store.core import CLAIM_PREFIX
from store.manifest import MANIFEST

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 8
# the same queries, through `python -m store sql`, on both stores
QUERIES = [
    "SELECT dataset, version, kind, rows, content_hash, parents FROM catalog ORDER BY dataset",
    "SELECT prompt_id, rollout, response, token_ids, prompt_len FROM responses ORDER BY prompt_id, rollout",
    "SELECT dataset, count(*) AS n, sum(n_tokens) AS tokens FROM activations GROUP BY dataset ORDER BY dataset",
    "SELECT a.dataset, a.prompt_id, a.sample, a.n_tokens, r.response_len FROM activations a "
    "JOIN responses_demo_instruct_general r USING (prompt_id) ORDER BY a.dataset, a.sample",
    "SELECT layer, round(mean_norm, 3) AS mean_norm FROM activations__layer_stats ORDER BY dataset, layer",
]


def test_conditional_create_is_honoured_by_the_server(s3_url):
    """The publish protocol rests on S3's ``If-None-Match: *``; moto 5.2.5 honours it."""
    store = Store(s3_url)
    path = store.location.join("probe")
    store.fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        store.fs.pipe_file(path, b"second", mode="create")
    assert store.fs.cat(path) == b"first"


# ---- the real pipeline, local and S3 ------------------------------------------------------
def _build(root: str) -> list[str]:
    """prompts -> responses -> activations (pooled and per-token), as a user runs them."""
    from builders import activations, prompts, responses

    common = ["--store", root, "--quiet"]
    calls = [
        (prompts.cli, ["--set", "general"]),
        (responses.cli, ["--variant", "instruct", "--prompts", "general", "--max-new-tokens", str(MAX_NEW),
                         "--batch-size", "4"]),
        (activations.cli, ["--variant", "instruct", "--prompts", "general", "--position", "response[:]",
                           "--layers", "3,29"]),
        (activations.cli, ["--variant", "instruct", "--prompts", "general", "--position", "response[:]",
                           "--layers", "3,29", "--per-token"]),
    ]
    for cli, args in calls:
        assert cli([*args, *common]) == 0
    return [f"{cli.__module__} {' '.join(args)}" for cli, args in calls]


def _sql_json(root: str, query: str, capsys) -> list[dict]:
    from store.cli import main

    capsys.readouterr()
    assert main(["--store", root, "sql", query, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def both(tmp_path_factory, s3_endpoint):
    import uuid

    from builders.stages import activations

    local = str(tmp_path_factory.mktemp("local-store"))
    s3 = f"s3://traitstore-test/pipeline-{uuid.uuid4().hex[:8]}"
    patch = pytest.MonkeyPatch()
    patch.setattr(activations, "TOKEN_CHUNK", 7)  # per-token: many chunk writes while capturing
    try:
        timings = {}
        for root in (local, s3):
            start = time.perf_counter()
            _build(root)
            timings[root] = time.perf_counter() - start
    finally:
        patch.undo()
    print(f"\nbuild timings: local {timings[local]:.1f}s, s3 {timings[s3]:.1f}s")
    return Store(local), Store(s3)


def test_same_versions_hashes_and_files_on_local_and_s3(both):
    local, s3 = both
    names = local.datasets()
    assert len(names) == 4 and s3.datasets() == names
    for name in names:
        a, b = local.latest(name), s3.latest(name)
        assert (a.version, a.content_hash) == (b.version, b.content_hash), name
        assert a.files == b.files and a.tables == b.tables and a.arrays == b.arrays, name
        for rel, info in b.files.items():  # the bytes on S3 are the ones the manifest names
            assert hashlib.sha256(s3.read_bytes(b, rel)).hexdigest() == info["sha256"], f"{name}/{rel}"
    listed = {p.rsplit("/", 1)[-1] for p in s3.fs.ls(s3.location.join(names[0]))}
    assert not [p for p in listed if p.startswith((".tmp-", ".partial-", CLAIM_PREFIX))]  # nothing left over
    assert s3.collect_garbage() == []


def test_zarr_arrays_read_identically(both):
    import numpy as np

    local, s3 = both
    for name in (n for n in local.datasets() if n.startswith("activations-")):
        a, b = local.open_array(name, "acts"), s3.open_array(name, "acts")
        assert a.shape == b.shape and a.chunks == b.chunks
        np.testing.assert_array_equal(a[:], b[:])


def test_same_sql_results_on_local_and_s3(both, capsys):
    local, s3 = both
    for query in QUERIES:
        expected = _sql_json(local.location.root, query, capsys)
        assert expected, query
        assert _sql_json(s3.location.url, query, capsys) == expected, query


def test_duckdb_reads_s3_through_fsspec_without_httpfs(both):
    from store.sql import connect

    _, s3 = both
    con = connect(s3)
    assert con.sql("SELECT count(*) FROM responses").fetchall() == [(10,)]
    assert "s3" in con.list_filesystems()
    loaded = con.sql("SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchall()
    assert loaded in ([], [(False,)])


def test_rebuild_on_s3_is_a_noop(both):
    _, s3 = both
    before = {m.ref: m.content_hash for m in s3.all_manifests()}
    assert len(_build(s3.location.url)) == 4  # in-process: every stage says "up to date"
    # a fresh process finds the endpoint through the environment alone
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "builders.responses", "--store", s3.location.url, "--variant",
                          "instruct", "--prompts", "general", "--max-new-tokens", str(MAX_NEW), "--batch-size", "4"],
                         cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("up to date: responses-demo-instruct-general@"), out.stdout
    assert {m.ref: m.content_hash for m in s3.all_manifests()} == before
    assert elapsed < 10.0, f"no-op rebuild on S3 took {elapsed:.1f}s"


def test_store_cli_sql_in_a_fresh_process(both):
    local, s3 = both
    query = "SELECT count(*) AS n, sum(response_len) AS tokens FROM responses"
    outs = [subprocess.run([sys.executable, "-m", "store", "--store", root, "sql", query, "--format", "csv"],
                           cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
            for root in (local.location.root, s3.location.url)]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.startswith("n,tokens\n10,")


# ---- publishing on S3 ---------------------------------------------------------------------
def _race_spec(round_: int) -> BuildSpec:
    return BuildSpec(f"race-{round_}", "test", "test", "1", {"round": round_}, {}, {})


def _race_produce(round_: int, pid_salt: bool):
    def produce(writer) -> None:
        writer.write_table([{"i": i, "round": round_} for i in range(200)])
        # each publisher's blob differs: interleaved files would not match either manifest
        writer.write_bytes("blob.bin", (f"{os.getpid()}" if pid_salt else "").encode() + bytes(range(256)) * 64)
        writer.write_bytes("more/notes.txt", b"x" * 1000)
    return produce


def _publish(root: str, round_: int, barrier, out) -> None:
    store = Store(root)
    barrier.wait()
    result = store.build(_race_spec(round_), _race_produce(round_, pid_salt=True))
    out.put((result.manifest.version, result.built))


def _check_visible(store: Store, name: str) -> int:
    """Every manifest a reader can see parses and names files that exist with their bytes."""
    seen = 0
    for manifest in store.versions(name):
        for rel, info in manifest.files.items():
            data = store.read_bytes(manifest, rel)  # FileNotFoundError = a file missing behind a manifest
            assert hashlib.sha256(data).hexdigest() == info["sha256"], f"{rel} does not match the manifest"
        seen += 1
    return seen


def test_five_rounds_of_two_concurrent_publishers(s3_url):
    ctx = mp.get_context("fork")
    reader = Store(s3_url)
    polls = visible = 0
    for round_ in range(5):
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_publish, args=(s3_url, round_, barrier, out)) for _ in range(2)]
        for proc in procs:
            proc.start()
        while any(proc.is_alive() for proc in procs):
            visible += _check_visible(reader, f"race-{round_}")
            polls += 1
        for proc in procs:
            proc.join()
        assert all(proc.exitcode == 0 for proc in procs)
        results = [out.get(timeout=30) for _ in procs]
        versions = [version for version, _ in results]
        assert versions[0] == versions[1]
        assert sorted(built for _, built in results) == [False, True]  # one published, one reused it
        assert [m.version for m in reader.versions(f"race-{round_}")] == [versions[0]]
        assert _check_visible(reader, f"race-{round_}") == 1
        assert reader.read_table(f"race-{round_}").height == 200
        names = reader.list_names(reader.location.join(f"race-{round_}"))
        assert sorted(names) == sorted(["_latest", versions[0]]), names  # no tmp prefix, no claim left
        assert reader.collect_garbage() == []
    assert polls > 0


def test_a_waiting_publisher_reuses_the_claim_holders_version(s3_url):
    """A claim held by another publisher: wait for its manifest, then reuse its version."""
    import threading

    store, other = Store(s3_url), Store(s3_url + "-holder")
    spec = _race_spec(99)
    claim = store.location.join(spec.name, CLAIM_PREFIX + spec.version)
    store.fs.pipe_file(claim, store._claim_payload("someone-else"), mode="create")
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=store.build(spec, _race_produce(99, True))))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and not store.versions(spec.name)  # waiting on the claim, nothing visible
    # the holder publishes: its files, then its manifest (the commit point), then releases the claim
    winner = other.build(spec, _race_produce(99, False)).manifest
    src, dst = other.path(winner), store.path(winner)
    rels = sorted(winner.files)
    store.fs.copy([f"{src}/{r}" for r in rels], [f"{dst}/{r}" for r in rels])
    store.fs.copy(f"{src}/{MANIFEST}", f"{dst}/{MANIFEST}")
    store.fs.rm(claim)
    thread.join(30)
    assert not result["r"].built and result["r"].manifest.content_hash == winner.content_hash
    assert store.read_bytes(spec.name, "blob.bin")[:1] == b"\x00"  # the winner's bytes, not ours


def test_stale_claim_of_a_killed_publisher_is_taken_over_and_collected(s3_url):
    store = Store(s3_url)
    spec = _race_spec(7)
    name, version = spec.name, spec.version
    claim = store.location.join(name, CLAIM_PREFIX + version)
    # a publisher killed mid-copy: its claim (old timestamp) and some copied files, no manifest
    payload = json.loads(store._claim_payload("dead"))
    payload["time"] -= 3600
    store.fs.pipe_file(claim, json.dumps(payload).encode(), mode="create")
    store.fs.pipe_file(store.location.join(name, version, "data", "junk.parquet"), b"half")
    assert store.versions(name) == []
    assert sorted(p.rsplit("/", 1)[-1] for p in store.garbage(min_idle=0)) == sorted([CLAIM_PREFIX + version, version])

    fresh = Store(s3_url)
    fresh.claim_stale_after = 3600 * 2  # while a claim is fresh, gc leaves the version alone
    assert list(fresh.garbage(min_idle=0)) == []

    built = store.build(spec, _race_produce(7, False))
    assert built.built
    assert set(built.manifest.files) == {"data/train-00000-of-00001.parquet", "blob.bin", "more/notes.txt"}
    assert not store.fs.exists(store.location.join(name, version, "data", "junk.parquet"))
    assert not store.fs.exists(claim) and store.collect_garbage() == []


def test_forced_rebuild_on_s3_replaces_the_version(s3_url):
    store = Store(s3_url)
    first = store.build(_race_spec(3), _race_produce(3, False)).manifest
    forced = store.build(_race_spec(3), _race_produce(3, False), force=True)
    assert forced.built and forced.manifest.content_hash == first.content_hash
    assert [m.version for m in store.versions("race-3")] == [first.version]


# ---- files libraries write locally: upload a folder, download it for reading ---------------
def test_put_dir_and_local_dir_round_trip(s3_url, tmp_path):
    source = tmp_path / "adapter"
    (source / "sub").mkdir(parents=True)
    (source / "adapter_config.json").write_text('{"r": 4}')
    (source / "sub" / "weights.bin").write_bytes(os.urandom(5000))
    store = Store(s3_url)
    spec = BuildSpec("ft-x", "finetune", "test", "1", {}, {}, {})
    m = store.build(spec, lambda w: w.put_dir(source, "adapter")).manifest
    assert set(m.files) == {"adapter/adapter_config.json", "adapter/sub/weights.bin"}
    folder = store.local_dir(m, "adapter")
    assert folder.is_dir() and folder != source
    for path in source.rglob("*"):
        if path.is_file():
            assert (folder / path.relative_to(source)).read_bytes() == path.read_bytes()
    assert store.local_dir(m, "adapter") == folder  # cached by content hash


def test_resumable_builder_scratch_on_s3(s3_url):
    """``partial_dir`` on an object store: no folder until the first file, listed as []."""
    store = Store(s3_url)
    spec = _race_spec(5)
    scratch = store.partial_dir(spec)
    assert store.list_names(scratch) == []
    store.fs.pipe_file(f"{scratch}/batch-00000.parquet", b"x")
    assert store.list_names(scratch) == ["batch-00000.parquet"]
    store.build(spec, _race_produce(5, False))
    assert store.list_names(scratch) == []  # removed once the version is published


@pytest.mark.parametrize("module", [["store", "ls"], ["builders.responses", "--variant", "instruct", "--prompts", "general"],
                                    ["analyses.steering"]])
def test_unreachable_object_storage_is_one_line(module):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
    name, *rest = module
    out = subprocess.run([sys.executable, "-m", name, "--store", "s3://nowhere/x", *rest], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: storage: EndpointConnectionError"), out.stderr
    assert f"127.0.0.1:{port}" in lines[0]
