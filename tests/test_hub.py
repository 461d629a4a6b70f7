"""Hub push/pull against a real HTTP server on loopback (tests/hub_server.py), never huggingface.co."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from store import BuildSpec, Store, StoreError
from store.cli import main
from store.manifest import MANIFEST
from tests.hub_server import FakeHub

TOKEN = "hf_TESTtokenNEVERwrite0123456789"
REPO = "me/traits"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any test whose code tries to resolve a host other than loopback (huggingface.co ...)."""
    outside: list[str] = []
    original = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if str(host) not in ("127.0.0.1", "localhost", "::1"):
            outside.append(str(host))
            raise OSError(f"test guard: no network beyond loopback ({host})")
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield
    assert not outside, f"tried to contact {sorted(set(outside))}"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with FakeHub(token=TOKEN, page_size=2) as server:  # small pages: listings paginate
        yield server


def produce_prompts(writer):
    from safetensors.numpy import save

    writer.write_table([{"prompt_id": f"p{i}", "text": f"prompt {i}", "polarity": "pos" if i % 2 else "neg"}
                        for i in range(5)])
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    writer.write_bytes("vectors/mean_diff.safetensors", save({"vectors": vectors}, metadata={"layer": "k"}))


def produce_responses(writer):
    writer.write_table([{"prompt_id": f"p{i}", "response": f"answer {i}", "score": i * 10.5} for i in range(5)])
    writer.write_table([{"layer": 0, "norm": 1.5}, {"layer": 1, "norm": 2.5}], table="stats")
    acts = writer.create_array("acts", (5, 2, 4), (5, 1, 4), ("sample", "layer", "d_model"))
    acts[:] = np.arange(40, dtype=np.float32).reshape(5, 2, 4) / 3


@pytest.fixture
def source(tmp_path):
    """A store with a two-level lineage: prompts-x <- responses-x."""
    store = Store(str(tmp_path / "src"))
    p = store.build(BuildSpec("prompts-x", "prompts", "builders.test", "1", {"n": 5, "seed": 3}, {},
                              {"trait": "evil"}), produce_prompts).manifest
    r = store.build(BuildSpec("responses-x", "responses", "builders.test", "2", {"temperature": 0.7},
                              {"prompts": p.ref}, {"model_id": "m"}), produce_responses).manifest
    return store, p, r


def extra_prompts(store: Store, n: int):
    spec = BuildSpec("prompts-x", "prompts", "builders.test", "1", {"n": n}, {}, {"trait": "evil"})
    return store.build(spec, lambda w: w.write_table([{"prompt_id": f"q{i}"} for i in range(n)])).manifest


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def push_cli(store: Store, *refs: str, repo: str = REPO, endpoint: str, extra: tuple[str, ...] = ()) -> int:
    return main(["--store", store.location.url, "push", *refs, "--repo", repo, "--endpoint", endpoint, *extra])


def pull_cli(root: str, repo: str = REPO, *, endpoint: str, extra: tuple[str, ...] = ()) -> int:
    return main(["--store", root, "pull", repo, "--endpoint", endpoint, *extra])


def card_of(hub: FakeHub, repo: str = REPO) -> tuple[dict, str]:
    text = hub.files(repo)["README.md"].decode()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


# ---- round trip ------------------------------------------------------------------------
def test_push_pull_round_trips_bits_ids_manifests_and_lineage(hub, source, tmp_path, capsys):
    store, p, r = source
    assert push_cli(store, "responses-x", endpoint=hub.url, extra=("--with-parents",)) == 0
    out = capsys.readouterr().out
    assert f"{p.ref} -> hf://datasets/{REPO}/prompts-x/{p.version}  pushed" in out and r.ref in out
    assert len(hub.history(REPO)) == 3  # repo creation + one commit per version
    files = hub.files(REPO)
    assert f"responses-x/{r.version}/arrays/acts.zarr/zarr.json" in files
    assert files[f"prompts-x/{p.version}/{MANIFEST}"] == store.read_bytes(p, MANIFEST)

    fresh_root = str(tmp_path / "fresh")
    assert pull_cli(fresh_root, endpoint=hub.url) == 0
    assert "installed" in capsys.readouterr().out
    fresh = Store(fresh_root)
    assert fresh.datasets() == ["prompts-x", "responses-x"]
    for m in (p, r):
        pulled = fresh.resolve(m.ref)
        assert pulled.version == m.version and pulled == m
        src_dir, dst_dir = Path(store.path(m)), Path(fresh.path(pulled))
        assert tree_hashes(src_dir) == tree_hashes(dst_dir)  # every file bit-identical, manifest too
    assert any("cursor=" in path for _, path, _ in hub.requests)  # tree listings were paged
    assert [x.ref for x in fresh.parents(fresh.resolve(r.ref))] == [p.ref]
    assert [x.ref for x in fresh.children(fresh.resolve(p.ref))] == [r.ref]
    # the Zarr array and the safetensors file
    np.testing.assert_array_equal(fresh.open_array(r.ref, "acts")[:], store.open_array(r.ref, "acts")[:])
    from safetensors.numpy import load

    vec = load(fresh.read_bytes(p.ref, "vectors/mean_diff.safetensors"))["vectors"]
    np.testing.assert_array_equal(vec, np.arange(12, dtype=np.float32).reshape(3, 4) / 7)
    assert fresh.read_table(r.ref, "stats").equals(store.read_table(r.ref, "stats"))


def test_pull_into_an_fsspec_store(hub, source):
    store, p, r = source
    assert push_cli(store, p.ref, r.ref, endpoint=hub.url) == 0
    from store.hub import pull

    mem = Store("memory://hub-pull-test")
    results = pull(mem, REPO, refs=["responses-x"], endpoint=hub.url)
    assert [(x.ref, x.installed) for x in results] == [(r.ref, True)]
    assert mem.read_table(r.ref)["response"].to_list() == store.read_table(r.ref)["response"].to_list()
    assert mem.resolve(r.ref).parents == {"prompts": p.ref}


def test_push_from_an_fsspec_store_streams_verified_files(hub, source, tmp_path):
    """A version on an object store is pushed from a verified local copy, never from memory."""
    from store.hub import pull, push
    from store.importing import import_version

    store, p, r = source
    mem = Store("memory://hub-push-test")
    for m in (p, r):
        import_version(mem, m, store.path(m))
    assert [x.pushed for x in push(mem, [r.ref], REPO, endpoint=hub.url)] == [True]
    fresh = Store(str(tmp_path / "fresh"))
    pull(fresh, REPO, refs=[r.ref], endpoint=hub.url)
    assert tree_hashes(Path(fresh.path(fresh.resolve(r.ref)))) == tree_hashes(Path(store.path(r)))
    broken = mem.path(mem.resolve(p.ref), "vectors/mean_diff.safetensors")  # a file changed behind the store
    mem.fs.pipe_file(broken, b"changed")
    with pytest.raises(StoreError, match="sha256"):
        push(mem, [p.ref], REPO, endpoint=hub.url)


def test_pushed_parquet_loads_with_hf_datasets(hub, source, tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import snapshot_download

    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)  # its ping goes to S3
    store, p, r = source
    assert push_cli(store, "responses-x", endpoint=hub.url, extra=("--with-parents",)) == 0
    folder = snapshot_download(REPO, repo_type="dataset", endpoint=hub.url, local_dir=str(tmp_path / "snap"))
    expected = store.read_table(r.ref).to_dicts()
    for config in ("responses-x", f"responses-x--{r.version[:8]}"):
        loaded = datasets.load_dataset(folder, name=config, split="train")
        assert loaded.to_list() == expected
    stats = datasets.load_dataset(folder, name="responses-x--stats", split="train")
    assert stats.to_list() == store.read_table(r.ref, "stats").to_dicts()
    assert datasets.load_dataset(folder, name="prompts-x", split="train")["prompt_id"] == [f"p{i}" for i in range(5)]
    shards = [os.path.join(folder, "responses-x", r.version, s) for s in r.tables["data"]["splits"]["train"]["shards"]]
    direct = datasets.load_dataset("parquet", data_files={"train": shards}, split="train")
    assert direct.to_list() == expected


def test_card_has_configs_version_params_and_parent_locations(hub, source):
    store, p, r = source
    assert push_cli(store, "responses-x", endpoint=hub.url, extra=("--with-parents",)) == 0
    front, body = card_of(hub)
    configs = {c["config_name"]: c["data_files"] for c in front["configs"]}
    assert set(configs) == {"prompts-x", f"prompts-x--{p.version[:8]}", "responses-x", "responses-x--stats",
                            f"responses-x--{r.version[:8]}", f"responses-x--{r.version[:8]}--stats"}
    assert configs["responses-x"] == [{"split": "train",
                                       "path": [f"responses-x/{r.version}/data/train-00000-of-00001.parquet"]}]
    stats_shard = f"responses-x/{r.version}/tables/stats/train-00000-of-00001.parquet"
    assert configs["responses-x--stats"][0]["path"] == [stats_shard]
    assert f"- version id: `{r.version}`" in body and "- kind: `responses`" in body
    assert f"content hash: `{r.content_hash}`" in body and "builders.test" in body
    assert '"temperature": 0.7' in body and '"seed": 3' in body
    assert f"- prompts: `{p.ref}` — `hf://datasets/{REPO}/prompts-x/{p.version}`" in body

    # a child pushed alone to another repo: its parent is "not on the Hub" there
    assert push_cli(store, r.ref, repo="me/alone", endpoint=hub.url) == 0
    front, body = card_of(hub, "me/alone")
    assert f"- prompts: `{p.ref}` — not on the Hub" in body
    assert [c["config_name"] for c in front["configs"]][0] == "responses-x"


def test_latest_config_follows_the_last_pushed_version(hub, source):
    store, p, _ = source
    p2 = extra_prompts(store, 2)
    assert push_cli(store, p2.ref, endpoint=hub.url) == 0
    assert push_cli(store, p.ref, endpoint=hub.url) == 0
    front, body = card_of(hub)
    configs = {c["config_name"]: c["data_files"] for c in front["configs"]}
    assert configs["prompts-x"][0]["path"][0].startswith(f"prompts-x/{p.version}/")
    assert f"prompts-x--{p2.version[:8]}" in configs and f"`{p.ref}` (latest)" in body
    assert hub.files(REPO)["prompts-x/_latest"] == p.version.encode()


# ---- concurrency and no-ops ------------------------------------------------------------
def test_stale_parent_commit_gets_412_then_the_push_rereads_and_succeeds(hub, source):
    store, p, _ = source
    assert push_cli(store, p.ref, endpoint=hub.url) == 0  # the repo exists
    p2 = extra_prompts(store, 2)
    fired = []

    def someone_else_commits(repo_id):
        if not fired:
            fired.append(hub.external_commit(repo_id, "notes/other.txt", b"a concurrent writer"))

    hub.before_commit = someone_else_commits
    assert push_cli(store, p2.ref, endpoint=hub.url) == 0
    assert hub.commit_statuses[-2:] == [412, 200]
    files = hub.files(REPO)
    assert files["notes/other.txt"] == b"a concurrent writer"  # the other writer's commit survives
    assert f"prompts-x/{p2.version}/{MANIFEST}" in files and f"prompts-x/{p.version}/{MANIFEST}" in files
    history = hub.history(REPO)
    assert history[0].parent == fired[0]  # the retried commit sits on top of the concurrent one
    front, _ = card_of(hub)
    names = {c["config_name"] for c in front["configs"]}
    assert {f"prompts-x--{p.version[:8]}", f"prompts-x--{p2.version[:8]}"} <= names


def test_a_head_that_never_settles_is_a_bounded_one_line_error(hub, source, capsys, monkeypatch):
    import store.hub

    store_, p, _ = source
    assert push_cli(store_, p.ref, endpoint=hub.url) == 0
    monkeypatch.setattr(store.hub, "RETRY_BASE_SECONDS", 0.0)
    hub.before_commit = lambda repo_id: hub.external_commit(repo_id, "busy.txt", os.urandom(8))
    capsys.readouterr()
    assert push_cli(store_, extra_prompts(store_, 2).ref, endpoint=hub.url) == 2
    assert f"during {store.hub.MAX_COMMIT_ATTEMPTS} attempts" in one_line_error(capsys)
    assert hub.commit_statuses.count(412) == store.hub.MAX_COMMIT_ATTEMPTS


def test_two_concurrent_pushes_of_different_versions_both_land(hub, source):
    from store.hub import push

    store, p, r = source
    p2 = extra_prompts(store, 2)
    push(store, [p.ref], REPO, endpoint=hub.url)
    gate = threading.Barrier(2)
    arrivals: list[str] = []

    def hold_first_two_commits(repo_id):  # both pushers have read the same head: one must lose
        arrivals.append(repo_id)
        if len(arrivals) <= 2:
            gate.wait(timeout=20)

    hub.before_commit = hold_first_two_commits
    errors: list[BaseException] = []

    def run(ref):
        try:
            push(store, [ref], REPO, endpoint=hub.url)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(ref,)) for ref in (p2.ref, r.ref)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert hub.commit_statuses[1:] == [200, 412, 200]  # the loser re-read the head and retried
    files = hub.files(REPO)
    for m in (p, p2, r):
        assert f"{m.name}/{m.version}/{MANIFEST}" in files
    front, body = card_of(hub)  # the last commit's card was regenerated from every manifest
    names = {c["config_name"] for c in front["configs"]}
    assert {f"prompts-x--{p2.version[:8]}", f"responses-x--{r.version[:8]}", f"prompts-x--{p.version[:8]}"} <= names
    assert f"`hf://datasets/{REPO}/prompts-x/{p.version}`" in body


def test_repush_and_repull_are_noops(hub, source, tmp_path, capsys):
    store, p, r = source
    assert push_cli(store, r.ref, endpoint=hub.url, extra=("--with-parents",)) == 0
    commits = len(hub.history(REPO))
    capsys.readouterr()
    assert push_cli(store, r.ref, endpoint=hub.url, extra=("--with-parents",)) == 0
    assert capsys.readouterr().out.count("already there") == 2
    assert len(hub.history(REPO)) == commits and hub.commit_statuses.count(200) == 2

    root = str(tmp_path / "fresh")
    assert pull_cli(root, endpoint=hub.url) == 0
    stamp = {f: os.stat(f).st_mtime_ns for f in map(str, Path(root).rglob("*"))}
    capsys.readouterr()
    assert pull_cli(root, endpoint=hub.url) == 0
    assert capsys.readouterr().out.count("already here") == 2
    assert {f: os.stat(f).st_mtime_ns for f in map(str, Path(root).rglob("*"))} == stamp


# ---- selection and revisions -----------------------------------------------------------
def test_pull_selects_by_ref_path_and_pinned_revision(hub, source, tmp_path):
    from store.hub import push

    store, p, r = source
    first = push(store, [p.ref], REPO, endpoint=hub.url)[0].commit
    p2 = extra_prompts(store, 2)
    push(store, [p2.ref, r.ref], REPO, endpoint=hub.url)

    hub.external_commit(REPO, "prompts-x/0123456789abcdef/data/half-pushed.parquet", b"no manifest")
    pinned = str(tmp_path / "pinned")
    assert pull_cli(pinned, f"{REPO}@{first}", endpoint=hub.url) == 0
    assert [m.version for m in Store(pinned).versions("prompts-x")] == [p.version]
    assert Store(pinned).datasets() == ["prompts-x"]

    by_ref = str(tmp_path / "by-ref")
    assert pull_cli(by_ref, endpoint=hub.url, extra=("--ref", "responses-x", "--with-parents")) == 0
    assert {m.ref for m in Store(by_ref).all_manifests()} == {p.ref, r.ref}

    by_path = str(tmp_path / "by-path")
    assert pull_cli(by_path, endpoint=hub.url, extra=("--path-in-repo", f"prompts-x/{p2.version}")) == 0
    assert {m.ref for m in Store(by_path).all_manifests()} == {p2.ref}


def test_push_to_a_branch(hub, source, tmp_path):
    store, p, _ = source
    assert push_cli(store, p.ref, endpoint=hub.url, extra=("--revision", "dev", "--private")) == 0
    assert hub.repos[REPO].private
    assert f"prompts-x/{p.version}/{MANIFEST}" not in hub.files(REPO, "main")
    assert f"prompts-x/{p.version}/{MANIFEST}" in hub.files(REPO, "dev")
    root = str(tmp_path / "fresh")
    assert pull_cli(root, f"{REPO}@dev", endpoint=hub.url) == 0
    assert Store(root).resolve("prompts-x").version == p.version


# ---- tokens and errors -----------------------------------------------------------------
def test_token_is_never_written_or_logged(hub, source, tmp_path, capsys, caplog):
    store, p, r = source
    for name in (None, "huggingface_hub", "httpx2", "httpcore", "store"):
        caplog.set_level(logging.DEBUG, logger=name)
    root = str(tmp_path / "fresh")
    assert push_cli(store, r.ref, endpoint=hub.url, extra=("--with-parents",)) == 0
    assert pull_cli(root, endpoint=hub.url) == 0
    assert pull_cli(root, "me/missing", endpoint=hub.url) == 2
    written = [f.read_bytes() for base in (store.location.root, root) for f in Path(base).rglob("*") if f.is_file()]
    written += list(hub.files(REPO).values())
    assert written and not any(TOKEN.encode() in blob for blob in written)
    captured = capsys.readouterr()
    assert caplog.records and TOKEN not in caplog.text and TOKEN not in captured.out + captured.err
    assert TOKEN not in json.dumps([rec.getMessage() for rec in caplog.records])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors_are_one_line_exit_2_and_leave_the_store_untouched(hub, source, tmp_path, capsys, monkeypatch):
    store, p, r = source
    root = tmp_path / "fresh"
    assert push_cli(store, p.ref, endpoint=hub.url) == 0
    capsys.readouterr()
    before = tree_hashes(Path(store.location.root))

    assert pull_cli(str(root), "me/missing", endpoint=hub.url) == 2
    assert "'me/missing' not found" in one_line_error(capsys)
    assert pull_cli(str(root), endpoint=hub.url, extra=("--ref", "nothing")) == 2
    assert "no version matching 'nothing'" in one_line_error(capsys)
    assert pull_cli(str(root), f"{REPO}@no-such-branch", endpoint=hub.url) == 2
    assert "revision 'no-such-branch' not found" in one_line_error(capsys)
    assert push_cli(store, "nothing", endpoint=hub.url) == 2
    assert "no published version of dataset 'nothing'" in one_line_error(capsys)
    assert push_cli(store, p.ref, repo="bad id!", endpoint=hub.url) == 2
    assert "'bad id!'" in one_line_error(capsys)

    dead = f"http://127.0.0.1:{closed_port()}"
    assert pull_cli(str(root), endpoint=dead) == 2
    assert "cannot reach" in one_line_error(capsys)
    assert push_cli(store, p.ref, endpoint=dead) == 2
    assert "cannot reach" in one_line_error(capsys)

    monkeypatch.setenv("HF_TOKEN", "hf_wrongWRONGwrong")
    assert push_cli(store, r.ref, endpoint=hub.url) == 2
    line = one_line_error(capsys)
    assert "401" in line and "HF_TOKEN" in line and "hf_wrong" not in line
    assert pull_cli(str(root), endpoint=hub.url) == 2
    assert "hf_wrong" not in one_line_error(capsys)
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    # a file changed on the Hub: its sha256 no longer matches the manifest, nothing installed
    shard = f"prompts-x/{p.version}/data/train-00000-of-00001.parquet"
    hub.external_commit(REPO, shard, b"tampered")
    assert pull_cli(str(root), endpoint=hub.url) == 2
    assert "sha256" in one_line_error(capsys)
    assert not root.exists()  # no failed pull left anything behind, not even a folder
    assert tree_hashes(Path(store.location.root)) == before  # failed pushes did not touch the source


def test_version_with_other_content_is_refused_both_ways(hub, source, tmp_path, capsys):
    store, p, _ = source
    assert push_cli(store, p.ref, endpoint=hub.url) == 0
    other = Store(str(tmp_path / "other"))  # same spec, different bytes: same id, other content hash
    spec = BuildSpec("prompts-x", "prompts", "builders.test", "1", {"n": 5, "seed": 3}, {}, {"trait": "evil"})
    q = other.build(spec, lambda w: w.write_table([{"prompt_id": "different"}])).manifest
    assert q.version == p.version and q.content_hash != p.content_hash
    capsys.readouterr()
    assert push_cli(other, q.ref, endpoint=hub.url) == 2
    assert "different content" in one_line_error(capsys)
    assert pull_cli(str(tmp_path / "other"), endpoint=hub.url) == 2
    assert "different content" in one_line_error(capsys)
    assert other.read_table(q.ref)["prompt_id"].to_list() == ["different"]


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("TRAITSTORE_LIVE_HUB_REPO")),
                    reason="live Hub test: set HF_TOKEN and TRAITSTORE_LIVE_HUB_REPO (user/name) to run it")
def test_live_hub_round_trip(tmp_path):  # pragma: no cover - needs the network and a token
    from store.hub import pull, push

    repo = os.environ["TRAITSTORE_LIVE_HUB_REPO"]
    store = Store(str(tmp_path / "src"))
    m = store.build(BuildSpec("live-prompts", "prompts", "builders.test", "1", {"n": 3}, {}, {}),
                    lambda w: w.write_table([{"i": i} for i in range(3)])).manifest
    push(store, [m.ref], repo, private=True)
    fresh = Store(str(tmp_path / "fresh"))
    pull(fresh, repo, refs=[m.ref])
    assert tree_hashes(Path(fresh.path(m))) == tree_hashes(Path(store.path(m)))


def test_a_manifest_naming_files_outside_its_folder_is_refused_before_download(hub, source, tmp_path, capsys):
    from dataclasses import replace

    from store.hashing import content_hash_of

    store, p, _ = source
    assert push_cli(store, p.ref, endpoint=hub.url) == 0
    capsys.readouterr()
    files = {"../../outside.txt": {"size": 1, "sha256": "0" * 64}}
    evil = replace(p, name="evil-x", files=files, content_hash=content_hash_of(files))
    hub.external_commit(REPO, f"evil-x/{p.version}/{MANIFEST}", evil.to_json().encode())
    root = tmp_path / "fresh"
    assert pull_cli(str(root), endpoint=hub.url, extra=("--ref", "evil-x")) == 2
    assert "unsafe file path '../../outside.txt'" in one_line_error(capsys)
    assert not root.exists() and not (tmp_path / "outside.txt").exists()
    assert not any("outside" in path for _, path, _ in hub.requests)
