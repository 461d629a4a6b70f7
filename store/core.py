"""The store: immutable, content/lineage-addressed versions of named datasets.

Layout: ``<root>/<dataset>/<version>/`` holding data files and ``manifest.json``.
A version is published by writing into ``<root>/<dataset>/.tmp-<version>-<nonce>/``,
renaming that folder into place and writing the manifest last: a folder without a
manifest is invisible to readers, so a killed build never shows a partial version.
"""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .fs import Location, resolve_location
from .hashing import content_hash_of, version_id
from .leftovers import TMP_PREFIX, is_leftover, tmp_name
from .manifest import MANIFEST, Manifest, package_versions
from .writer import VersionWriter, open_zarr_store

if TYPE_CHECKING:
    import polars as pl
    import zarr

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
LATEST = "_latest"
PARTIAL_PREFIX = ".partial-"
# a killed build's manifest-less folder older than this is garbage (a live one is seconds old)
DEFAULT_MIN_IDLE = 600.0


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
    def datasets(self) -> list[str]:
        if not self.fs.exists(self.location.root):
            return []
        names = []
        for entry in self.fs.ls(self.location.root, detail=True):
            base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] == "directory" and NAME_RE.match(base) and self.versions(base):
                names.append(base)
        return sorted(names)

    def versions(self, name: str) -> list[Manifest]:
        """Published versions of ``name``, oldest first."""
        folder = self.location.join(name)
        if not self.fs.exists(folder):
            return []
        found = []
        for entry in self.fs.ls(folder, detail=True):
            base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] != "directory" or base.startswith("."):
                continue
            manifest = self._read_manifest(name, base)
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def _read_manifest(self, name: str, version: str) -> Manifest | None:
        path = self.location.join(name, version, MANIFEST)
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
    def partial_dir(self, spec: BuildSpec) -> str:
        """A per-version scratch folder that survives crashes, for resumable builders."""
        path = self.location.join(spec.name, PARTIAL_PREFIX + spec.version)
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

        tmp = self.location.join(spec.name, tmp_name(version))
        writer = VersionWriter(self.location, tmp)
        try:
            produce(writer)
            files = writer.inventory()
        except BaseException as err:
            self._remove(tmp)
            # a concurrent builder of the same version may have finished first and cleared
            # the scratch area this one was reading: its version is the one asked for
            winner = self._read_manifest(spec.name, version) if isinstance(err, Exception) and not force else None
            if winner is None:
                raise
            self._set_latest(spec.name, version)
            log.info("%s was published concurrently while this build failed (%s); reusing it", winner.ref, err)
            return BuildResult(winner, built=False)
        manifest = Manifest(
            name=spec.name, version=version, kind=spec.kind, builder=spec.builder,
            code_version=str(spec.code_version), params=spec.params, parents=spec.parents,
            identity=spec.identity, files=files, tables=writer.tables, arrays=writer.arrays,
            summary=writer.summary, packages=package_versions(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            content_hash=content_hash_of(files),
        )
        final = self.location.join(spec.name, version)
        if not self._claim(tmp, final, replace=existing is not None):
            # a concurrent publisher of the same version won: same id, same inputs; reuse it
            self._remove(tmp)
            winner = self._read_manifest(spec.name, version)
            assert winner is not None
            self._set_latest(spec.name, version)
            log.info("%s was published concurrently; reusing it", winner.ref)
            return BuildResult(winner, built=False)
        self._write_manifest(final, manifest.to_json())
        self._set_latest(spec.name, version)
        partial = self.location.join(spec.name, PARTIAL_PREFIX + version)
        if self.fs.exists(partial):
            self._remove(partial)
        log.info("published %s (%d rows, %d files)", manifest.ref, manifest.rows, len(files))
        return BuildResult(manifest, built=True)

    def _claim(self, tmp: str, final: str, replace: bool) -> bool:
        """Move the finished ``tmp`` folder to ``final``. False when another publisher's
        complete version is already there. On local disk the rename is atomic and refuses
        an existing folder; a folder that gets no manifest within a few seconds is the
        leftover of a killed build and is replaced."""
        if replace:  # a forced rebuild: hide the old version (manifest first), then replace it
            self.fs.rm(f"{final}/{MANIFEST}")
            self._remove(final)
        if not self.location.is_local:
            if self.fs.exists(final):
                if self._wait_for_manifest(final):
                    return False
                self._remove(final)
            self.fs.mv(tmp, final, recursive=True)
            return True
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
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fs.exists(f"{final}/{MANIFEST}"):
                return True
            if not self.fs.exists(final):
                return False
            time.sleep(0.02)
        return self.fs.exists(f"{final}/{MANIFEST}")

    def _write_manifest(self, final: str, text: str) -> None:
        """Write to a temporary name, then rename: a reader never sees half a manifest."""
        tmp = f"{final}/.{MANIFEST}.{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.fs.mv(tmp, f"{final}/{MANIFEST}")

    def _set_latest(self, name: str, version: str) -> None:
        pointer = self.location.join(name, LATEST)
        try:
            with self.fs.open(pointer, "r", encoding="utf-8") as handle:
                if handle.read().strip() == version:
                    return
        except FileNotFoundError:
            pass
        tmp = f"{pointer}.{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "w", encoding="utf-8") as handle:
            handle.write(version)
        self.fs.mv(tmp, pointer)

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def garbage(self, min_idle: float = DEFAULT_MIN_IDLE) -> Iterator[str]:
        """Leftovers of killed builds: temporary folders and manifest-less versions.

        Safe while builders run: a temporary folder whose owner process is alive on this
        host is never garbage; folders whose owner cannot be checked must have been idle
        for ``min_idle`` seconds (pass 0 when no builder can be running).
        """
        for entry in self.fs.ls(self.location.root, detail=True) if self.fs.exists(self.location.root) else []:
            if entry["type"] != "directory":
                continue
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if not NAME_RE.match(name):  # `_cache` and other non-dataset folders
                continue
            for sub in self.fs.ls(entry["name"], detail=True):
                base = sub["name"].rstrip("/").rsplit("/", 1)[-1]
                if sub["type"] != "directory":
                    continue
                candidate = base.startswith(TMP_PREFIX) or (
                    not base.startswith(".") and not self.has_version(name, base))
                if candidate and is_leftover(self.fs, sub["name"], base, min_idle):
                    yield sub["name"]

    def collect_garbage(self, min_idle: float = DEFAULT_MIN_IDLE) -> list[str]:
        removed = list(self.garbage(min_idle))
        for path in removed:
            self._remove(path)
        return removed

    # ---- importing (versions built elsewhere, e.g. pulled from the Hub) --------------
    def import_version(
        self,
        manifest: Manifest,
        source_dir: str,
        manifest_text: str | None = None,
        verify: bool = True,
    ) -> BuildResult:
        """Install a version whose files sit in the local folder ``source_dir``, keeping its
        id, manifest and lineage exactly (``manifest_text`` is written verbatim if given).

        Same protocol as :meth:`build`: temporary folder, rename into place, manifest last.
        An existing version with the same content hash is a no-op; with another content
        hash, or a file that does not match its manifest hash, nothing is installed.
        """
        if not NAME_RE.match(manifest.name) or not NAME_RE.match(manifest.version):
            raise StoreError(f"bad version reference {manifest.ref!r} in an imported manifest")
        existing = self._read_manifest(manifest.name, manifest.version)
        if existing is not None:
            if existing.content_hash != manifest.content_hash:
                raise StoreError(f"{manifest.ref} already exists in {self.location.url} with different content "
                                 f"({existing.content_hash[:12]} here, {manifest.content_hash[:12]} imported)")
            log.info("%s is already here", manifest.ref)
            return BuildResult(existing, built=False)
        if verify:
            verify_version_files(manifest, source_dir)
        import os

        tmp = self.location.join(manifest.name, tmp_name(manifest.version))
        try:
            self.fs.makedirs(tmp, exist_ok=True)
            for rel in sorted(manifest.files):
                target = f"{tmp}/{rel}"
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(os.path.join(source_dir, *rel.split("/")), target)
        except BaseException:
            self._remove(tmp)
            raise
        final = self.location.join(manifest.name, manifest.version)
        if not self._claim(tmp, final, replace=False):
            self._remove(tmp)
            winner = self._read_manifest(manifest.name, manifest.version)
            assert winner is not None
            if winner.content_hash != manifest.content_hash:
                raise StoreError(f"{manifest.ref} was published concurrently with different content")
            return BuildResult(winner, built=False)
        self._write_manifest(final, manifest_text if manifest_text is not None else manifest.to_json())
        log.info("imported %s (%d files)", manifest.ref, len(manifest.files))
        return BuildResult(manifest, built=True)


def verify_version_files(manifest: Manifest, source_dir: str) -> None:
    """Check every file of ``manifest`` in the local folder ``source_dir`` (size, sha256),
    and the manifest's own content hash; raise a one-line :class:`StoreError` otherwise."""
    import hashlib
    import os
    from pathlib import PurePosixPath

    if content_hash_of(manifest.files) != manifest.content_hash:
        raise StoreError(f"{manifest.ref}: manifest content hash does not match its file list")
    for rel, info in sorted(manifest.files.items()):
        parts = PurePosixPath(rel).parts
        if not parts or rel.startswith("/") or ".." in parts or rel == MANIFEST:
            raise StoreError(f"{manifest.ref}: unsafe file path {rel!r} in manifest")
        path = os.path.join(source_dir, *parts)
        if not os.path.isfile(path):
            raise StoreError(f"{manifest.ref}: file {rel} is missing")
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        got = digest.hexdigest()
        if got != info["sha256"] or os.path.getsize(path) != info["size"]:
            raise StoreError(f"{manifest.ref}: {rel} has sha256 {got[:12]}..., the manifest says "
                             f"{info['sha256'][:12]}...; nothing installed")
