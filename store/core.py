"""The store: immutable, content/lineage-addressed versions of named datasets.

Layout: ``<root>/<dataset>/<version>/`` holding data files and ``manifest.json``.
A version is published by writing into ``<root>/<dataset>/.tmp-<version>-<nonce>/``,
moving it into place and writing the manifest last: a folder without a manifest is
invisible to readers, so a killed build never shows a partial version.

How a finished folder is moved into place (atomic rename on local disk, a claim object
on object stores) is in :mod:`store.publishing`.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .atomic import move_folder, write_atomic
from .errors import StoreError
from .fs import Location, resolve_location
from .hashing import content_hash_of
from .leftovers import TMP_PREFIX, is_leftover, tmp_name
from .manifest import MANIFEST, Manifest, package_versions
from .publishing import CLAIM_PREFIX, Publishing
from .spec import NAME_RE, BuildResult, BuildSpec, match_version
from .writer import VersionWriter, open_zarr_store

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl
    import zarr

log = logging.getLogger(__name__)

LATEST = "_latest"
PARTIAL_PREFIX = ".partial-"
# a killed build's manifest-less folder older than this is garbage (a live one is seconds old)
DEFAULT_MIN_IDLE = 600.0


class Store(Publishing):
    """Readers and the publisher for one store root (a local folder or an fsspec URL)."""

    def __init__(self, url: str | None = None) -> None:
        self.location: Location = resolve_location(url)
        self.fs = self.location.fs
        self._writable = False  # checked once, by the first build

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

    def listing(self, path: str) -> list[tuple[str, bool]]:
        """(base name, is a folder) of each entry of ``path``; [] when it does not exist.
        Local disk: one ``scandir``, no ``stat`` per entry (what makes scans of thousands
        of folders cheap)."""
        if self.location.is_local:
            import os

            try:
                with os.scandir(path) as entries:
                    return [(e.name, e.is_dir()) for e in entries]
            except (FileNotFoundError, NotADirectoryError):
                return []
        return [(e["name"].rstrip("/").rsplit("/", 1)[-1], e["type"] == "directory") for e in self._ls(path)]

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
            manifest = self.read_manifest(name, base)
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def read_manifest(self, name: str, version: str) -> Manifest | None:
        """``name@version``'s manifest; None when that version is not published."""
        path = self.location.join(name, version, MANIFEST)
        self._fresh(path)
        try:
            with self.fs.open(path, "r", encoding="utf-8") as handle:
                return Manifest.from_json(handle.read())
        except FileNotFoundError:
            return None

    def has_version(self, name: str, version: str) -> bool:
        return self.read_manifest(name, version) is not None

    def latest(self, name: str) -> Manifest:
        """The version most recently built or confirmed up to date by a builder."""
        pointer = self.location.join(name, LATEST)
        self._fresh(pointer)
        try:
            with self.fs.open(pointer, "r", encoding="utf-8") as handle:
                manifest = self.read_manifest(name, handle.read().strip())
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
        versions = {m.version: m for m in self.versions(name)}
        return versions[match_version(name, prefix, versions, self.location.url)]

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
            move_folder(str(work), str(target))  # False: another process downloaded it meanwhile
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
            parent = self.read_manifest(name, version)
            if parent is not None:
                found.append(parent)
        return found

    def children(self, manifest: Manifest) -> list[Manifest]:
        """Every version built from ``manifest``: reads every manifest (``python -m store
        lineage`` uses the catalog index instead, :mod:`store.lineage`)."""
        return [m for m in self.all_manifests() if manifest.ref in m.parents.values()]

    # ---- publishing ----------------------------------------------------------------
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
        if not self._writable:
            self.location.require_writable()
            self._writable = True
        version = spec.version
        existing = self.read_manifest(spec.name, version)
        if existing is not None and not force:
            self._set_latest(spec.name, version)
            log.info("%s is up to date", existing.ref)
            return BuildResult(existing, built=False)

        tmp = self.location.join(spec.name, tmp_name(version))
        writer = VersionWriter(self.location, tmp, spec.name)
        try:
            produce(writer)
            files = writer.inventory()
        except BaseException as err:
            self._remove(tmp)
            # a concurrent builder of the same version may have finished first and cleared
            # the scratch area this one was reading: its version is the one asked for
            winner = self.read_manifest(spec.name, version) if isinstance(err, Exception) and not force else None
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
            created_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),  # orders versions built within a second
            content_hash=content_hash_of(files),
        )
        published = self._publish(tmp, manifest, manifest.to_json(), replace=existing is not None)
        if not published:
            # a concurrent publisher of the same version won: same id, same inputs; reuse it
            self._remove(tmp)
            winner = self.read_manifest(spec.name, version)
            assert winner is not None
            self._set_latest(spec.name, version)
            log.info("%s was published concurrently; reusing it", winner.ref)
            return BuildResult(winner, built=False)
        self._record_published(manifest)
        self._set_latest(spec.name, version)
        partial = self.location.join(spec.name, PARTIAL_PREFIX + version)
        self._remove(partial)
        log.info("published %s (%d rows, %d files)", manifest.ref, manifest.rows, len(files))
        return BuildResult(manifest, built=True)

    def _set_latest(self, name: str, version: str) -> None:
        pointer = self.location.join(name, LATEST)
        self._fresh(pointer)
        try:
            with self.fs.open(pointer, "r", encoding="utf-8") as handle:
                if handle.read().strip() == version:
                    return
        except FileNotFoundError:
            pass
        write_atomic(self.location, pointer, version)

    def _remove(self, path: str) -> None:
        self._fresh(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self._fresh(path)

    def garbage(self, min_idle: float = DEFAULT_MIN_IDLE) -> Iterator[str]:
        """Leftovers of killed builds: temporary folders, manifest-less versions and (object
        stores) stale claims without a manifest.

        Safe while builders run: a temporary folder whose owner process is alive on this
        host is never garbage; folders whose owner cannot be checked must have been idle
        for ``min_idle`` seconds (pass 0 when no builder can be running).
        """
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
                    if is_leftover(self.fs, sub["name"], base, min_idle):
                        yield sub["name"]
                elif base.startswith(PARTIAL_PREFIX):  # scratch a late concurrent builder left behind
                    published = self.has_version(name, base[len(PARTIAL_PREFIX):])
                    if published and is_leftover(self.fs, sub["name"], base, min_idle):
                        yield sub["name"]
                elif not base.startswith(".") and not self.has_version(name, base):
                    claim = self.location.join(name, CLAIM_PREFIX + base)
                    being_published = not self.location.is_local and self._claim_is_fresh(claim)
                    if not being_published and is_leftover(self.fs, sub["name"], base, min_idle):
                        yield sub["name"]

    def collect_garbage(self, min_idle: float = DEFAULT_MIN_IDLE) -> list[str]:
        removed = list(self.garbage(min_idle))
        for path in removed:
            self._remove(path)
        return removed

    # ---- importing (versions built elsewhere, e.g. pulled from the Hub) --------------
    def import_version(self, manifest: Manifest, source_dir: str, manifest_text: str | None = None,
                       verify: bool = True) -> BuildResult:
        """See :func:`store.importing.import_version`."""
        from .importing import import_version

        return import_version(self, manifest, source_dir, manifest_text, verify)
