"""The catalog index: one summary per published version, so SQL need not read every manifest.

Layout under ``<root>/_index/`` (a folder starting with ``_`` is not a dataset)::

    snapshot-<generation>.json   every entry at one point, written once, never changed
    log/<time_ns>-<nonce>.json   one entry per publish since then, written once

An entry is what SQL needs of a version: dataset, version, kind, builder, code version,
created_at, parents, params, rows, content hash and the shard paths of each table, plus a
``stamp`` (publish time, ns): two entries for one version (a forced rebuild) keep the
later one, so entries merge in any order and merging twice changes nothing.

Publishing appends a log entry (a new name: concurrent publishers never overwrite each
other). Once the log holds :attr:`CatalogIndex.compact_at` entries a publisher folds them
into snapshot ``generation + 1``, created with an exclusive write (``os.link`` / S3
conditional create): of two compactors exactly one succeeds, the other leaves its entries
in the log, so no entry is ever lost; only folded log entries and snapshots older than
the previous one are deleted. A reader lists the log, then the snapshots, reads the newest
snapshot and the listed log entries, and starts over if a file vanished meanwhile.

The index is a cache of the manifests, never the truth: readers check it against a
listing of the root and of each dataset a query names (:mod:`store.published`), read the
manifests it lacks and fold them in (SQL, ``python -m store ls`` and ``lineage``);
``python -m store reindex`` rebuilds it from scratch.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterable

from .atomic import write_atomic
from .errors import StoreError
from .manifest import Manifest

if TYPE_CHECKING:
    from .core import Store

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
SNAPSHOT_PREFIX = "snapshot-"
FORMAT = 1
Entry = dict[str, Any]
Entries = dict[str, dict[str, Entry]]  # dataset -> version -> entry


def entry_of(manifest: Manifest, stamp: int | None = None) -> Entry:
    """The index entry of a published version (what SQL views and ``catalog`` need)."""
    return {
        "dataset": manifest.name, "version": manifest.version, "kind": manifest.kind,
        "builder": manifest.builder, "code_version": manifest.code_version,
        "created_at": manifest.created_at, "parents": sorted(manifest.parents.values()),
        "params": json.dumps(manifest.params, sort_keys=True), "rows": manifest.rows,
        "content_hash": manifest.content_hash,
        "tables": {table: [s for split in info["splits"].values() for s in split["shards"]]
                   for table, info in manifest.tables.items()},
        "stamp": time.time_ns() if stamp is None else stamp,
    }


def merge(into: Entries, entries: Iterable[Entry]) -> Entries:
    """Add ``entries`` to ``into``; of two entries for one version the later stamp wins."""
    for entry in entries:
        versions = into.setdefault(entry["dataset"], {})
        have = versions.get(entry["version"])
        if have is None or entry["stamp"] >= have["stamp"]:
            versions[entry["version"]] = entry
    return into


def _generation(snapshot_name: str) -> int:
    return int(snapshot_name[len(SNAPSHOT_PREFIX):-len(".json")])


class CatalogIndex:
    """Reading, appending to and compacting ``<root>/_index`` of one :class:`Store`."""

    #: log entries that make a publisher fold the log into a new snapshot
    compact_at: int = 64
    #: times a reader starts over when a file it listed was compacted away meanwhile
    read_attempts: int = 5

    def __init__(self, store: "Store") -> None:
        self.store = store
        self.location = store.location
        self.root = store.location.join(INDEX_DIR)
        self.log_dir = store.location.join(INDEX_DIR, "log")

    # ---- reading ---------------------------------------------------------------------
    def _names(self, folder: str) -> list[str]:
        return sorted(n for n in self.store.list_names(folder) if not n.startswith("."))

    def _read_json(self, path: str) -> Any:
        self.store._fresh(path)
        with self.store.fs.open(path, "rb") as handle:
            return json.loads(handle.read())

    def _snapshots(self) -> list[str]:
        names = [n for n in self._names(self.root) if n.startswith(SNAPSHOT_PREFIX) and n.endswith(".json")]
        return sorted((n for n in names if n[len(SNAPSHOT_PREFIX):-len(".json")].isdigit()), key=_generation)

    def load(self) -> tuple[Entries, int, list[str]]:
        """(entries, newest snapshot generation or -1, log entry names read)."""
        snapshot, logged, generation, logs = self._load()
        return merge(snapshot, logged), generation, logs

    def _load(self) -> tuple[Entries, list[Entry], int, list[str]]:
        for attempt in range(self.read_attempts):
            try:
                return self._load_once(strict=attempt < self.read_attempts - 1)
            except FileNotFoundError:  # compacted away between listing and reading
                continue
        raise AssertionError("unreachable: the last attempt tolerates missing files")

    def _load_once(self, strict: bool) -> tuple[Entries, list[Entry], int, list[str]]:
        logs = [n for n in self._names(self.log_dir) if n.endswith(".json")]  # before the snapshots
        snapshot: Entries = {}
        snapshots = self._snapshots()
        # the next snapshot follows the newest name, readable or not (a damaged one is skipped)
        generation = _generation(snapshots[-1]) if snapshots else -1
        for name in reversed(snapshots):  # the newest readable one
            try:
                merge(snapshot, self._read_json(self.location.join(INDEX_DIR, name))["entries"])
                break
            except FileNotFoundError:
                if strict:
                    raise
            except (ValueError, KeyError, TypeError) as err:
                log.warning("catalog index snapshot %s is unreadable (%s): ignored", name, err)
        logged = []
        for name in logs:
            try:
                entry = self._read_json(f"{self.log_dir}/{name}")
                if not isinstance(entry, dict) or not {"dataset", "version", "stamp"} <= entry.keys():
                    raise ValueError("not an index entry")
                logged.append(entry)
            except FileNotFoundError:
                if strict:
                    raise
            except ValueError as err:
                log.warning("catalog index entry %s is unreadable (%s): ignored", name, err)
        return snapshot, logged, generation, logs

    # ---- writing ---------------------------------------------------------------------
    def record(self, manifest: Manifest) -> None:
        """Append ``manifest``'s entry (after its manifest is committed); fold the log into a
        snapshot when it has grown long."""
        entry = entry_of(manifest)
        name = f"{entry['stamp']:020d}-{uuid.uuid4().hex[:8]}.json"
        write_atomic(self.location, f"{self.log_dir}/{name}", json.dumps(entry, sort_keys=True))
        if len(self._names(self.log_dir)) >= self.compact_at:
            self.compact()

    def compact(self, extra: Iterable[Entry] = (), replace: Entries | None = None) -> bool:
        """Write the next snapshot: the current entries plus ``extra`` (or exactly
        ``replace``, for a rebuild). False when another process wrote that generation first
        (its snapshot or the log keeps every entry; nothing is lost)."""
        snapshot, logged, generation, logs = self._load()
        # a rebuild keeps the log too: an entry published during its scan must not be lost
        entries = merge({d: dict(v) for d, v in (snapshot if replace is None else replace).items()}, logged)
        merge(entries, extra)
        flat = [e for versions in entries.values() for e in versions.values()]
        text = json.dumps({"format": FORMAT, "generation": generation + 1, "entries": flat}, sort_keys=True)
        target = self.location.join(INDEX_DIR, f"{SNAPSHOT_PREFIX}{generation + 1:012d}.json")
        if not write_atomic(self.location, target, text, exclusive=True):
            return False
        # folded: every snapshot from now on holds these, so the log copies can go, and
        # snapshots older than the previous one (a reader may still be reading that one)
        for name in logs:
            self._delete(f"{self.log_dir}/{name}")
        for name in self._snapshots():
            if _generation(name) < generation:
                self._delete(self.location.join(INDEX_DIR, name))
        log.debug("catalog index snapshot %d: %d versions", generation + 1, len(flat))
        return True

    def rebuild(self) -> int:
        """Read every manifest and write a snapshot of exactly what is published; returns the
        number of versions. ``python -m store reindex``."""
        entries: Entries = {}
        for manifest in self.store.all_manifests():
            merge(entries, [entry_of(manifest)])
        for _ in range(10):
            if self.compact(replace=entries):
                return sum(len(v) for v in entries.values())
            # another compactor won that generation: build on the next one
        raise StoreError(f"could not rebuild the catalog index of {self.location.url}: other writers keep winning")

    def _delete(self, path: str) -> None:
        try:
            self.store.fs.rm(path)
        except FileNotFoundError:
            pass
