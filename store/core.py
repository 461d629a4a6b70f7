"""The store: immutable, content/lineage-addressed versions of named datasets.

Layout: ``<root>/<dataset>/<version>/`` holding data files and ``manifest.json``.
A version is published by writing into ``<root>/<dataset>/.tmp-<version>-<nonce>/``,
moving it into place and writing the manifest last: a folder without a manifest is
invisible to readers, so a killed build never shows a partial version.

Local disk: the folder is moved with one atomic ``os.rename`` that refuses an existing
folder, and the manifest is written via temp file + rename.

Object stores (S3, ``memory://`` ...) have no atomic rename. There a publisher first
creates the claim object ``<dataset>/.claim-<version>`` with a conditional create (S3
``If-None-Match: *``): exactly one publisher gets it and only that one copies its files
(server-side) into ``<dataset>/<version>/``; the others wait for its manifest and reuse
it. The manifest is the commit point: written last, also with a conditional create.
The claim holder refreshes the claim while it copies and deletes it after the commit; a
publisher that gets the claim and then finds a manifest releases it and reuses that
version. A claim not refreshed for ``Store.claim_stale_after`` seconds is the leftover
of a killed publisher and is taken over.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .fs import Location, resolve_location
from .hashing import canonical_json, sha256_text, version_id
from .manifest import MANIFEST, Manifest, package_versions
from .writer import VersionWriter, open_zarr_store

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl
    import zarr

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
LATEST = "_latest"
PARTIAL_PREFIX = ".partial-"
TMP_PREFIX = ".tmp-"
CLAIM_PREFIX = ".claim-"  # object stores: ``<dataset>/.claim-<version>``, see the module doc


class StoreError(Exception):
    """A store problem with a one-line message meant for the user."""


@dataclass(frozen=True)
class BuildSpec:
    """Everything that determines a version: its id is a hash of these fields."""

    name: str
    kind: str
    builder: str
    code_version: str
    params: dict[str, Any]
    parents: dict[str, str]  # role -> "dataset@version"
    identity: dict[str, Any]

    @property
    def version(self) -> str:
        return version_id(self.builder, self.code_version, self.params, self.parents, self.identity)


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    built: bool  # False when the version already existed ("up to date")


class Store:
    """Readers and the publisher for one store root (a local folder or an fsspec URL)."""

    def __init__(self, url: str | None = None) -> None:
        self.location: Location = resolve_location(url)
        self.fs = self.location.fs

    def __repr__(self) -> str:
        return f"Store({self.location.url!r})"

    # ---- reading -------------------------------------------------------------------
    def _fresh(self, path: str) -> None:
        """Forget cached listings of ``path`` (s3fs caches them; other processes publish)."""
        if not self.location.is_local:
            self.fs.invalidate_cache(path)

    def _ls(self, path: str) -> list[dict[str, Any]]:
        """Entries of folder ``path``; [] when missing (object stores have no empty folders)."""
        self._fresh(path)
        try:
            return self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_names(self, path: str) -> list[str]:
        """Base names in folder ``path`` (files and folders); [] when it does not exist."""
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._ls(path)]

    def datasets(self) -> list[str]:
        names = []
        for entry in self._ls(self.location.root):
            base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] == "directory" and NAME_RE.match(base) and self.versions(base):
                names.append(base)
        return sorted(names)

    def versions(self, name: str) -> list[Manifest]:
        """Published versions of ``name``, oldest first."""
        found = []
        for entry in self._ls(self.location.join(name)):
            base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] != "directory" or base.startswith("."):
                continue
            manifest = self._read_manifest(name, base)
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def _read_manifest(self, name: str, version: str) -> Manifest | None:
        path = self.location.join(name, version, MANIFEST)
        self._fresh(path)
        try:
            with self.fs.open(path, "r", encoding="utf-8") as handle:
                return Manifest.from_json(handle.read())
        except FileNotFoundError:
            return None

    def has_version(self, name: str, version: str) -> bool:
        return self._read_manifest(name, version) is not None

    def latest(self, name: str) -> Manifest:
        """The version most recently built or confirmed up to date by a builder."""
        pointer = self.location.join(name, LATEST)
        self._fresh(pointer)
        try:
            with self.fs.open(pointer, "r", encoding="utf-8") as handle:
                manifest = self._read_manifest(name, handle.read().strip())
            if manifest is not None:
                return manifest
        except FileNotFoundError:
            pass
        versions = self.versions(name)
        if not versions:
            raise StoreError(f"no published version of dataset {name!r} in {self.location.url}")
        return versions[-1]

    def resolve(self, ref: str) -> Manifest:
        """``name`` (latest) or ``name@<version id or unique prefix>``."""
        name, _, prefix = ref.partition("@")
        if not NAME_RE.match(name):
            raise StoreError(f"bad dataset reference {ref!r}: expected name or name@version")
        if not prefix:
            return self.latest(name)
        matches = [m for m in self.versions(name) if m.version.startswith(prefix)]
        if not matches:
            raise StoreError(f"no version of {name!r} matches {prefix!r} in {self.location.url}")
        if len(matches) > 1:
            ids = ", ".join(m.version for m in matches)
            raise StoreError(f"version prefix {prefix!r} of {name!r} is ambiguous: {ids}")
        return matches[0]

    def path(self, manifest: Manifest, relpath: str = "") -> str:
        return self.location.join(manifest.name, manifest.version, relpath)

    def table_files(self, manifest: Manifest, table: str = "data") -> list[str]:
        if table not in manifest.tables:
            have = ", ".join(manifest.tables) or "none"
            raise StoreError(f"{manifest.ref} has no table {table!r} (tables: {have})")
        shards = [s for split in manifest.tables[table]["splits"].values() for s in split["shards"]]
        return [self.path(manifest, s) for s in shards]

    def table_uris(self, manifest: Manifest, table: str = "data") -> list[str]:
        return [self.location.uri(p) for p in self.table_files(manifest, table)]

    def read_table(self, ref: str | Manifest, table: str = "data") -> "pl.DataFrame":
        import polars as pl
        import pyarrow.parquet as pq

        manifest = self.resolve(ref) if isinstance(ref, str) else ref
        frames = []
        for path in self.table_files(manifest, table):
            with self.fs.open(path, "rb") as handle:
                frames.append(pl.from_arrow(pq.read_table(handle)))
        return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]

    def open_array(self, ref: str | Manifest, name: str) -> "zarr.Array":
        import zarr

        manifest = self.resolve(ref) if isinstance(ref, str) else ref
        if name not in manifest.arrays:
            raise StoreError(f"{manifest.ref} has no array {name!r} (arrays: {', '.join(manifest.arrays) or 'none'})")
        store = open_zarr_store(self.location, self.path(manifest, manifest.arrays[name]["path"]), read_only=True)
        return zarr.open_array(store, mode="r")

    def read_bytes(self, ref: str | Manifest, relpath: str) -> bytes:
        manifest = self.resolve(ref) if isinstance(ref, str) else ref
        with self.fs.open(self.path(manifest, relpath), "rb") as handle:
            return handle.read()

    def local_dir(self, ref: str | Manifest, relpath: str) -> "Path":
        """A local folder holding the version's files under ``relpath`` (e.g. an adapter for
        PEFT). Local stores: the folder itself. Other stores: a verified download into a
        cache folder keyed by the version's content hash (versions are immutable)."""
        import hashlib
        import os
        import shutil
        import tempfile
        from pathlib import Path

        manifest = self.resolve(ref) if isinstance(ref, str) else ref
        if self.location.is_local:
            return Path(self.path(manifest, relpath))
        prefix = relpath.strip("/") + "/"
        wanted = {rel: info for rel, info in manifest.files.items() if rel.startswith(prefix)}
        if not wanted:
            raise StoreError(f"{manifest.ref} has no files under {relpath!r}")
        base = Path(os.environ.get("TRAITSTORE_DOWNLOADS") or Path(tempfile.gettempdir()) / "traitstore-downloads")
        target = base / f"{manifest.name}@{manifest.version}-{manifest.content_hash[:16]}" / relpath.strip("/")
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            for rel, info in sorted(wanted.items()):
                local = work / rel[len(prefix):]
                local.parent.mkdir(parents=True, exist_ok=True)
                data = self.read_bytes(manifest, rel)
                if hashlib.sha256(data).hexdigest() != info["sha256"]:
                    raise StoreError(f"{manifest.ref}: {rel} does not match its manifest sha256")
                local.write_bytes(data)
            try:
                os.rename(work, target)
            except OSError:  # another process downloaded it meanwhile
                pass
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def load_dataset(self, ref: str | Manifest, table: str = "data") -> Any:
        """The table as a Hugging Face ``datasets.Dataset`` (local stores)."""
        import datasets

        manifest = self.resolve(ref) if isinstance(ref, str) else ref
        files = {split: [self.location.uri(self.path(manifest, s)) for s in info["shards"]]
                 for split, info in manifest.tables[table]["splits"].items()}
        return datasets.load_dataset("parquet", data_files=files)

    # ---- lineage -------------------------------------------------------------------
    def all_manifests(self) -> list[Manifest]:
        return [m for name in self.datasets() for m in self.versions(name)]

    def parents(self, manifest: Manifest) -> list[Manifest]:
        found = []
        for ref in manifest.parents.values():
            name, _, version = ref.partition("@")
            parent = self._read_manifest(name, version)
            if parent is not None:
                found.append(parent)
        return found

    def children(self, manifest: Manifest) -> list[Manifest]:
        return [m for m in self.all_manifests() if manifest.ref in m.parents.values()]

    # ---- publishing ----------------------------------------------------------------
    #: object stores: a claim not refreshed for this long, without a manifest, is taken over
    claim_stale_after: float = 120.0
    #: object stores: files copied per batch between claim refreshes
    copy_batch: int = 64

    def partial_dir(self, spec: BuildSpec) -> str:
        """A per-version scratch folder that survives crashes, for resumable builders.
        On object stores it exists once a file is written into it: list it with
        :meth:`list_names`, which returns [] for a missing folder."""
        path = self.location.join(spec.name, PARTIAL_PREFIX + spec.version)
        if self.location.is_local:
            self.fs.makedirs(path, exist_ok=True)
        return path

    def build(
        self,
        spec: BuildSpec,
        produce: Callable[[VersionWriter], None],
        force: bool = False,
    ) -> BuildResult:
        """Publish ``spec``'s version by calling ``produce(writer)``, unless it exists.

        Same spec, same version id: an unchanged rebuild is a no-op ("up to date").
        ``force`` rebuilds and replaces the version (same id, new content check).
        """
        if not NAME_RE.match(spec.name):
            raise StoreError(f"bad dataset name {spec.name!r}: letters, digits, '_', '-', '.' only")
        version = spec.version
        existing = self._read_manifest(spec.name, version)
        if existing is not None and not force:
            self._set_latest(spec.name, version)
            log.info("%s is up to date", existing.ref)
            return BuildResult(existing, built=False)

        tmp = self.location.join(spec.name, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
        writer = VersionWriter(self.location, tmp)
        try:
            produce(writer)
            files = writer.inventory()
        except BaseException:
            self._remove(tmp)
            raise
        manifest = Manifest(
            name=spec.name, version=version, kind=spec.kind, builder=spec.builder,
            code_version=str(spec.code_version), params=spec.params, parents=spec.parents,
            identity=spec.identity, files=files, tables=writer.tables, arrays=writer.arrays,
            summary=writer.summary, packages=package_versions(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            content_hash=sha256_text(canonical_json({k: v["sha256"] for k, v in files.items()})),
        )
        final = self.location.join(spec.name, version)
        if self.location.is_local:
            published = self._claim(tmp, final, replace=existing is not None)
            if published:
                self._write_manifest(final, manifest)
        else:
            try:
                published = self._publish_objects(spec.name, version, tmp, final, manifest,
                                                   replace=existing is not None)
            finally:
                self._remove(tmp)
        if not published:
            # a concurrent publisher of the same version won: same id, same inputs; reuse it
            self._remove(tmp)
            winner = self._read_manifest(spec.name, version)
            assert winner is not None
            self._set_latest(spec.name, version)
            log.info("%s was published concurrently; reusing it", winner.ref)
            return BuildResult(winner, built=False)
        self._set_latest(spec.name, version)
        partial = self.location.join(spec.name, PARTIAL_PREFIX + version)
        self._remove(partial)
        log.info("published %s (%d rows, %d files)", manifest.ref, manifest.rows, len(files))
        return BuildResult(manifest, built=True)

    # -- local disk: atomic rename
    def _claim(self, tmp: str, final: str, replace: bool) -> bool:
        """Move the finished ``tmp`` folder to ``final``. False when another publisher's
        complete version is already there. On local disk the rename is atomic and refuses
        an existing folder; a folder that gets no manifest within a few seconds is the
        leftover of a killed build and is replaced."""
        if replace:  # a forced rebuild: hide the old version (manifest first), then replace it
            self.fs.rm(f"{final}/{MANIFEST}")
            self._remove(final)
        import os

        for _ in range(3):
            try:
                os.rename(tmp, final)
                return True
            except OSError:
                if self._wait_for_manifest(final):
                    return False
                self._remove(final)
        raise StoreError(f"could not publish {final}: another process keeps replacing it")

    def _wait_for_manifest(self, final: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fs.exists(f"{final}/{MANIFEST}"):
                return True
            if not self.fs.exists(final):
                return False
            time.sleep(0.02)
        return self.fs.exists(f"{final}/{MANIFEST}")

    def _write_manifest(self, final: str, manifest: Manifest) -> None:
        """Write to a temporary name, then rename: a reader never sees half a manifest."""
        tmp = f"{final}/.{MANIFEST}.{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "w", encoding="utf-8") as handle:
            handle.write(manifest.to_json())
        self.fs.mv(tmp, f"{final}/{MANIFEST}")

    # -- object stores: conditional-create claim, server-side copy, manifest as commit point
    def _publish_objects(self, name: str, version: str, tmp: str, final: str, manifest: Manifest,
                         replace: bool) -> bool:
        """Copy ``tmp`` into ``final`` and commit the manifest, or return False when another
        publisher's manifest for this version is (or becomes) visible."""
        claim = self.location.join(name, CLAIM_PREFIX + version)
        if replace:  # a forced rebuild: hide the old version (manifest first)
            self._remove(f"{final}/{MANIFEST}")
        while True:
            token = uuid.uuid4().hex
            if not self._take_claim(name, version, claim, token):
                return False
            outcome = None  # True: committed; False: another manifest won; None: claim lost
            try:
                self._remove(final)  # no manifest and we hold the claim: a leftover, or the replaced version
                rels = sorted(manifest.files)
                refreshed = time.monotonic()
                for i in range(0, len(rels), self.copy_batch):
                    batch = rels[i:i + self.copy_batch]
                    self.fs.copy([f"{tmp}/{r}" for r in batch], [f"{final}/{r}" for r in batch])
                    if time.monotonic() - refreshed > self.claim_stale_after / 4:
                        if not self._refresh_claim(claim, token):
                            break
                        refreshed = time.monotonic()
                else:
                    if self._claim_token(claim) == token:
                        try:  # the commit point: readers see the version once this object exists
                            self.fs.pipe_file(f"{final}/{MANIFEST}", manifest.to_json().encode("utf-8"),
                                              mode="create")
                            outcome = True
                        except FileExistsError:
                            outcome = False
            finally:
                if self._claim_token(claim) == token:
                    if not outcome and self._read_manifest(name, version) is None:
                        self._remove(final)  # our copies: nobody else writes here while we hold the claim
                    self._remove(claim)  # released: a later publisher claims, then sees the manifest
                self._fresh(self.location.join(name))
            if outcome is not None:
                return outcome
            log.warning("lost the claim on %s@%s (it went stale); waiting for the new holder", name, version)

    def _claim_payload(self, token: str) -> bytes:
        import os
        import socket

        return json.dumps({"token": token, "time": time.time(), "host": socket.gethostname(),
                           "pid": os.getpid()}).encode("utf-8")

    def _read_claim(self, claim: str) -> dict[str, Any] | None:
        self._fresh(claim)
        try:
            with self.fs.open(claim, "rb") as handle:
                return json.loads(handle.read())
        except (FileNotFoundError, ValueError):
            return None

    def _claim_token(self, claim: str) -> str | None:
        held = self._read_claim(claim)
        return None if held is None else held.get("token")

    def _claim_is_fresh(self, claim: str) -> bool:
        held = self._read_claim(claim)
        return held is not None and time.time() - float(held.get("time", 0)) < self.claim_stale_after

    def _take_claim(self, name: str, version: str, claim: str, token: str) -> bool:
        """Create ``claim`` conditionally. While another publisher holds a fresh claim, wait
        for its manifest (False once it is there); take over a stale claim."""
        while True:
            try:
                self.fs.pipe_file(claim, self._claim_payload(token), mode="create")
            except FileExistsError:
                pass
            else:
                if self._claim_token(claim) != token:  # a server ignoring If-None-Match: the last writer wins
                    continue
                if self._read_manifest(name, version) is not None:  # published, claim released
                    self._remove(claim)
                    return False
                return True
            if self._read_manifest(name, version) is not None:
                return False
            held = self._read_claim(claim)
            if held is None:  # released meanwhile: try again
                continue
            if time.time() - float(held.get("time", 0)) >= self.claim_stale_after:
                log.warning("taking over the stale claim on %s@%s (held by %s pid %s)",
                            name, version, held.get("host"), held.get("pid"))
                if self._claim_token(claim) == held.get("token"):
                    self._remove(self.location.join(name, version))
                    self._remove(claim)
                continue
            time.sleep(0.05)

    def _refresh_claim(self, claim: str, token: str) -> bool:
        """Renew our claim's timestamp; False when it is no longer ours."""
        if self._claim_token(claim) != token:
            return False
        self.fs.pipe_file(claim, self._claim_payload(token))
        return True

    def _set_latest(self, name: str, version: str) -> None:
        pointer = self.location.join(name, LATEST)
        self._fresh(pointer)
        try:
            with self.fs.open(pointer, "r", encoding="utf-8") as handle:
                if handle.read().strip() == version:
                    return
        except FileNotFoundError:
            pass
        if not self.location.is_local:  # one object PUT replaces the pointer atomically
            self.fs.pipe_file(pointer, version.encode("utf-8"))
            return
        tmp = f"{pointer}.{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "w", encoding="utf-8") as handle:
            handle.write(version)
        self.fs.mv(tmp, pointer)

    def _remove(self, path: str) -> None:
        self._fresh(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self._fresh(path)

    def garbage(self) -> Iterator[str]:
        """Leftovers of killed builds: temporary folders, manifest-less versions and (object
        stores) stale claims without a manifest."""
        for entry in self._ls(self.location.root):
            if entry["type"] != "directory":
                continue
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if not NAME_RE.match(name):  # `_cache` and other non-dataset folders
                continue
            for sub in self._ls(entry["name"]):
                base = sub["name"].rstrip("/").rsplit("/", 1)[-1]
                if base.startswith(CLAIM_PREFIX) and sub["type"] != "directory":
                    claimed = base[len(CLAIM_PREFIX):]
                    if not self.has_version(name, claimed) and not self._claim_is_fresh(sub["name"]):
                        yield sub["name"]
                    continue
                if sub["type"] != "directory":
                    continue
                if base.startswith(TMP_PREFIX):
                    yield sub["name"]
                elif not base.startswith(".") and not self.has_version(name, base):
                    claim = self.location.join(name, CLAIM_PREFIX + base)
                    if self.location.is_local or not self._claim_is_fresh(claim):  # not being published
                        yield sub["name"]

    def collect_garbage(self) -> list[str]:
        removed = list(self.garbage())
        for path in removed:
            self._remove(path)
        return removed
