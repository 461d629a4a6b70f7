"""Push store versions to a Hugging Face Hub dataset repo and pull them back.

Repo layout (what ``push`` writes, what ``pull`` reads)::

    README.md                          dataset card, regenerated at every push (dataset_card.py)
    <dataset>/_latest                  the version id of <dataset> pushed last
    <dataset>/<version>/manifest.json  the store's manifest, byte for byte
    <dataset>/<version>/data/train-0000i-of-0000n.parquet
    <dataset>/<version>/tables/<table>/...parquet
    <dataset>/<version>/arrays/<name>.zarr/...
    <dataset>/<version>/...            any other file of the version (e.g. safetensors)

One ``create_commit`` per version, with ``parent_commit`` = the head read before: if the
head moved meanwhile (HTTP 412/409) the remote state is re-read, the card regenerated and
the commit retried. A version already on the repo with the same content hash is a no-op.
Pull verifies every file's sha256 against the manifest before installing anything.

Tokens come from ``HF_TOKEN`` or huggingface_hub's login only and never reach manifests,
cards, logs or error messages. Nothing here runs unless a user asks to push or pull.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from .core import NAME_RE, Store, StoreError
from .importing import check_file_paths, verify_version_files
from .dataset_card import hub_location, render_card
from .manifest import MANIFEST, Manifest

if TYPE_CHECKING:
    from huggingface_hub import HfApi

log = logging.getLogger(__name__)

PUBLIC_ENDPOINT = "https://huggingface.co"
REPO_TYPE = "dataset"
LATEST_FILE = "_latest"
MAX_COMMIT_ATTEMPTS = 6
RETRY_BASE_SECONDS = 0.1  # backoff between commit attempts: base * 2**attempt, at most 2 s
DOWNLOAD_THREADS = 8


class HubError(StoreError):
    """A Hub problem, one line, safe to show (no token)."""


@dataclass
class PushResult:
    ref: str
    location: str
    commit: str | None  # None when the version was already on the repo (no-op)

    @property
    def pushed(self) -> bool:
        return self.commit is not None


@dataclass
class PullResult:
    ref: str
    installed: bool  # False when the store already had it (no-op)


@dataclass
class RemoteState:
    """Manifests (and ``_latest`` pointers) at one commit of a repo."""

    sha: str
    manifests: dict[str, Manifest] = field(default_factory=dict)  # ref -> manifest
    texts: dict[str, str] = field(default_factory=dict)  # ref -> manifest.json as stored
    latest: dict[str, str] = field(default_factory=dict)  # dataset -> version


def resolve_endpoint(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or PUBLIC_ENDPOINT).rstrip("/")


def _api(endpoint: str) -> "HfApi":
    from huggingface_hub import HfApi, constants

    if endpoint != constants.ENDPOINT.rstrip("/") and not constants.HF_HUB_DISABLE_TELEMETRY:
        # huggingface_hub builds its user agent with a registry fetched from its import-time
        # endpoint (huggingface.co by default): with another endpoint, talk to that one only
        log.debug("using %s: huggingface_hub telemetry headers disabled", endpoint)
        constants.HF_HUB_DISABLE_TELEMETRY = True
    return HfApi(endpoint=endpoint, library_name="traitstore")  # token: HF_TOKEN / login


def _redact(text: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    first = (text.strip().splitlines() or [""])[0]
    return first.replace(token, "***") if token else first


@contextmanager
def hub_errors(endpoint: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions into one-line :class:`HubError` s."""
    import httpx2
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        yield
    except StoreError:
        raise
    except RepositoryNotFoundError:
        raise HubError(f"dataset repo {repo_id!r} not found on {endpoint} (or no access: check HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"revision {revision!r} not found in dataset repo {repo_id!r}") from None
    except EntryNotFoundError as err:
        raise HubError(f"missing file in {repo_id!r}: {_redact(str(err))}") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        if status == 401:
            raise HubError(f"{endpoint} refused the credentials for {repo_id!r} (401): "
                           "set HF_TOKEN to a valid token") from None
        if status == 403:
            raise HubError(f"no write access to {repo_id!r} on {endpoint} (403)") from None
        raise HubError(f"Hub request for {repo_id!r} failed with HTTP {status}: {_redact(str(err))}") from None
    except HFValidationError as err:  # a malformed repo id, revision or path
        raise HubError(f"{repo_id!r}: {_redact(str(err))}") from None
    except OfflineModeIsEnabled:
        raise HubError("HF_HUB_OFFLINE is set: unset it to push or pull") from None
    except (httpx2.TransportError, ConnectionError, TimeoutError) as err:
        raise HubError(f"cannot reach {endpoint}: {type(err).__name__}: {_redact(str(err))}") from None


# ---- reading the repo ------------------------------------------------------------------
def head_sha(api: "HfApi", repo_id: str, revision: str) -> str:
    info = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision)
    assert info.sha is not None
    return info.sha


def _download(api: "HfApi", repo_id: str, path: str, sha: str, local_dir: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, path, repo_type=REPO_TYPE, revision=sha, local_dir=local_dir,
                           endpoint=api.endpoint, library_name="traitstore")


def read_remote(api: "HfApi", repo_id: str, sha: str, workdir: str,
                cache: dict[str, str] | None = None) -> RemoteState:
    """Every ``<dataset>/<version>/manifest.json`` and ``<dataset>/_latest`` at commit ``sha``.

    Lists two levels only (datasets, then versions), not the whole tree: an activations
    version can hold thousands of Zarr chunk files. ``cache`` maps manifest paths to their
    text (a version's manifest never changes once pushed).
    """
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    cache = cache if cache is not None else {}
    state = RemoteState(sha=sha)
    local = os.path.join(workdir, sha[:16])
    for top in api.list_repo_tree(repo_id, repo_type=REPO_TYPE, revision=sha):
        if not isinstance(top, RepoFolder) or not NAME_RE.match(top.path):
            continue
        for entry in api.list_repo_tree(repo_id, path_in_repo=top.path, repo_type=REPO_TYPE, revision=sha):
            base = entry.path.rsplit("/", 1)[-1]
            if isinstance(entry, RepoFile) and base == LATEST_FILE:
                with open(_download(api, repo_id, entry.path, sha, local), encoding="utf-8") as handle:
                    state.latest[top.path] = handle.read().strip()
            elif isinstance(entry, RepoFolder) and NAME_RE.match(base):
                path = f"{entry.path}/{MANIFEST}"
                if path not in cache:
                    try:
                        with open(_download(api, repo_id, path, sha, local), encoding="utf-8") as handle:
                            cache[path] = handle.read()
                    except (EntryNotFoundError, RemoteEntryNotFoundError):
                        log.warning("%s on %s has no manifest; ignored", entry.path, repo_id)
                        continue
                manifest = Manifest.from_json(cache[path])
                if manifest.ref != f"{top.path}@{base}":
                    log.warning("%s holds the manifest of %s; ignored", entry.path, manifest.ref)
                    continue
                state.manifests[manifest.ref] = manifest
                state.texts[manifest.ref] = cache[path]
    state.latest = {k: v for k, v in state.latest.items() if f"{k}@{v}" in state.manifests}
    return state


# ---- push ------------------------------------------------------------------------------
def _with_parents(store: Store, manifests: list[Manifest]) -> list[Manifest]:
    """``manifests`` plus their local ancestors, parents before children."""
    ordered: list[Manifest] = []
    seen: set[str] = set()

    def visit(m: Manifest) -> None:
        if m.ref in seen:
            return
        seen.add(m.ref)
        for ref in m.parents.values():
            name, _, version = ref.partition("@")
            parent = store.read_manifest(name, version) if NAME_RE.match(name) and version else None
            if parent is None:
                log.warning("parent %s of %s is not in %s; not pushed", ref, m.ref, store.location.url)
            else:
                visit(parent)
        ordered.append(m)

    for m in manifests:
        visit(m)
    return ordered


def _operations(store: Store, m: Manifest, source: str, repo_id: str, state: RemoteState) -> list:
    """The commit's files, read from the local folder ``source`` (never all held in memory)."""
    from huggingface_hub import CommitOperationAdd

    folder = f"{m.name}/{m.version}"
    ops = []
    for rel in sorted(m.files):
        path = os.path.join(source, *rel.split("/"))
        ops.append(CommitOperationAdd(path_in_repo=f"{folder}/{rel}", path_or_fileobj=path))
    ops.append(CommitOperationAdd(path_in_repo=f"{folder}/{MANIFEST}", path_or_fileobj=store.read_bytes(m, MANIFEST)))
    ops.append(CommitOperationAdd(path_in_repo=f"{m.name}/{LATEST_FILE}", path_or_fileobj=m.version.encode()))
    manifests = [x for x in state.manifests.values() if x.ref != m.ref] + [m]
    card = render_card(repo_id, manifests, {**state.latest, m.name: m.version})
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    return ops


def _verified_source(store: Store, m: Manifest, staging: str) -> str:
    """A local folder with ``m``'s files, each checked against its manifest sha256 (a
    version whose files changed is refused). Object stores: streamed down into ``staging``."""
    if store.location.is_local:
        folder = store.path(m)
    else:
        folder = os.path.join(staging, m.name, m.version)
        for rel in sorted(m.files):
            target = os.path.join(folder, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            store.fs.get_file(store.path(m, rel), target)
    verify_version_files(m, folder)
    return folder


def push_version(api: "HfApi", store: Store, m: Manifest, source: str, repo_id: str, revision: str,
                 workdir: str, cache: dict[str, str]) -> PushResult:
    """One commit for version ``m``, retried while the branch head keeps moving."""
    from huggingface_hub.errors import HfHubHTTPError

    location = hub_location(repo_id, m)
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        head = head_sha(api, repo_id, revision)
        state = read_remote(api, repo_id, head, workdir, cache)
        there = state.manifests.get(m.ref)
        if there is not None:
            if there.content_hash != m.content_hash:
                raise HubError(f"{m.ref} is already on {repo_id} with different content "
                               f"({there.content_hash[:12]} there, {m.content_hash[:12]} here)")
            log.info("%s is already on %s", m.ref, repo_id)
            return PushResult(m.ref, location, None)
        ops = _operations(store, m, source, repo_id, state)
        try:
            info = api.create_commit(
                repo_id, ops, commit_message=f"Add {m.ref} ({m.kind})",
                commit_description=f"traitstore version {m.ref}, content hash {m.content_hash}",
                repo_type=REPO_TYPE, revision=revision, parent_commit=head)
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status not in (409, 412):
                raise
            log.warning("%s moved while pushing %s (HTTP %s); re-reading it (attempt %d of %d)",
                        repo_id, m.ref, status, attempt, MAX_COMMIT_ATTEMPTS)
            time.sleep(min(RETRY_BASE_SECONDS * 2 ** attempt, 2.0))
            continue
        log.info("pushed %s to %s (commit %s)", m.ref, location, info.oid[:12])
        return PushResult(m.ref, location, info.oid)
    raise HubError(f"gave up pushing {m.ref}: {repo_id} kept changing during {MAX_COMMIT_ATTEMPTS} attempts")


def push(store: Store, refs: Sequence[str], repo_id: str, *, private: bool = False,
         revision: str = "main", endpoint: str | None = None, with_parents: bool = False) -> list[PushResult]:
    """Push versions (``name`` or ``name@version``) to the dataset repo ``repo_id``."""
    manifests = [store.resolve(ref) for ref in refs]
    if with_parents:
        manifests = _with_parents(store, manifests)
    endpoint = resolve_endpoint(endpoint)
    with tempfile.TemporaryDirectory(prefix="traitstore-push-") as work:
        sources = {m.ref: _verified_source(store, m, os.path.join(work, "files")) for m in manifests}
        with hub_errors(endpoint, repo_id, revision):
            results = _push_all(_api(endpoint), store, manifests, sources, repo_id, private, revision, work)
    return results


def _push_all(api: "HfApi", store: Store, manifests: list[Manifest], sources: dict[str, str], repo_id: str,
              private: bool, revision: str, work: str) -> list[PushResult]:
    api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=private)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
    cache: dict[str, str] = {}
    return [push_version(api, store, m, sources[m.ref], repo_id, revision, work, cache) for m in manifests]


# ---- pull ------------------------------------------------------------------------------
def _select(state: RemoteState, repo_id: str, refs: Sequence[str] | None, path_in_repo: str | None,
            with_parents: bool) -> list[Manifest]:
    chosen = list(state.manifests.values())
    if path_in_repo:
        prefix = path_in_repo.strip("/")
        chosen = [m for m in chosen if prefix in (m.name, f"{m.name}/{m.version}")
                  or f"{m.name}/{m.version}".startswith(prefix + "/") or prefix.startswith(f"{m.name}/{m.version}/")]
        if not chosen:
            raise HubError(f"no version under {path_in_repo!r} in {repo_id!r}")
    if refs:
        picked = []
        for ref in refs:
            name, _, prefix = ref.partition("@")
            found = sorted((m for m in chosen if m.name == name and m.version.startswith(prefix)),
                           key=lambda m: (m.created_at, m.version))
            if not prefix and name in state.latest:
                found = [m for m in found if m.version == state.latest[name]] or found[-1:]
            if not found:
                raise HubError(f"no version matching {ref!r} in {repo_id!r}")
            if len(found) > 1 and prefix:
                raise HubError(f"version prefix {prefix!r} of {name!r} is ambiguous in {repo_id!r}")
            picked.extend(found[-1:] if not prefix else found)
        chosen = picked
    if with_parents:
        queue, seen = list(chosen), {m.ref for m in chosen}
        while queue:
            for ref in queue.pop().parents.values():
                if ref in state.manifests and ref not in seen:
                    seen.add(ref)
                    chosen.append(state.manifests[ref])
                    queue.append(state.manifests[ref])
    # parents first, so a pulled child never sits in the store before its pulled parent
    depth: dict[str, int] = {}

    def level(m: Manifest) -> int:
        if m.ref not in depth:
            depth[m.ref] = 0
            depth[m.ref] = 1 + max([level(state.manifests[r]) for r in m.parents.values()
                                    if r in state.manifests] or [-1])
        return depth[m.ref]

    return sorted({m.ref: m for m in chosen}.values(), key=lambda m: (level(m), m.ref))


def pull(store: Store, repo: str, *, refs: Sequence[str] | None = None, path_in_repo: str | None = None,
         endpoint: str | None = None, with_parents: bool = False) -> list[PullResult]:
    """Install versions from ``repo`` (``user/name`` or ``user/name@revision``) into ``store``."""
    from concurrent.futures import ThreadPoolExecutor

    repo_id, _, revision = repo.partition("@")
    revision = revision or "main"
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo_id):
        raise HubError(f"bad repo id {repo_id!r}: expected user/name[@revision]")
    endpoint = resolve_endpoint(endpoint)
    api = _api(endpoint)
    with hub_errors(endpoint, repo_id, revision), tempfile.TemporaryDirectory(prefix="traitstore-pull-") as work:
        sha = head_sha(api, repo_id, revision)
        state = read_remote(api, repo_id, sha, os.path.join(work, "meta"))
        if not state.manifests:
            raise HubError(f"no store versions in {repo_id!r} at {revision}")
        selected = _select(state, repo_id, refs, path_in_repo, with_parents)
        todo = []
        for m in selected:
            here = store.read_manifest(m.name, m.version)
            if here is not None and here.content_hash != m.content_hash:
                raise HubError(f"{m.ref} already exists in {store.location.url} with different content; "
                               "nothing installed")
            if here is None:
                todo.append(m)
        files = os.path.join(work, "files")
        for m in todo:
            check_file_paths(m)  # before any download: a path may not leave its version folder
        jobs = [f"{m.name}/{m.version}/{rel}" for m in todo for rel in m.files]
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(lambda path: _download(api, repo_id, path, sha, files), jobs))
        for m in todo:  # every file of every version checks out before anything is installed
            verify_version_files(m, os.path.join(files, m.name, m.version))
        results = []
        for m in selected:
            if m in todo:
                store.import_version(m, os.path.join(files, m.name, m.version), state.texts[m.ref], verify=False)
                log.info("pulled %s from %s@%s", m.ref, repo_id, sha[:12])
            results.append(PullResult(m.ref, installed=m in todo))
    return results
