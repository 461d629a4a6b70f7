"""What is published, for readers that must not read every manifest (SQL views,
``python -m store ls`` and ``lineage``).

The catalog index (:mod:`store.index`) says which versions exist and what they hold; it is
checked, cheaply, against the storage itself: one listing of the root (datasets the index
does not know, e.g. published by older code or pulled, or deleted ones) and one listing
plus the ``_latest`` pointer of each dataset actually used (versions it lacks or that are
gone). Manifests are read only for what the index lacks, and those entries are folded back
into the index, so the next reader does not read them again. Without the index
(``use_index=False``) every manifest is read, as before the index existed.
"""
from __future__ import annotations

import logging

from .core import LATEST, Store
from .errors import StoreError, storage_errors
from .index import CatalogIndex, Entries, Entry, entry_of
from .spec import NAME_RE, match_version

log = logging.getLogger(__name__)


class Published:
    """Datasets and their versions (as index entries), checked against listings on use."""

    def __init__(self, store: Store, use_index: bool = True) -> None:
        self.store = store
        self.use_index = use_index
        self.index = CatalogIndex(store)
        self.entries: Entries = self.index.load()[0] if use_index else {}
        self.repaired: list[Entry] = []
        self._checked: dict[str, tuple[dict[str, Entry], str | None]] = {}
        folders = {base for base, is_dir in store.listing(store.location.root) if is_dir and NAME_RE.match(base)}
        for gone in set(self.entries) - folders:
            del self.entries[gone]
        for name in sorted(folders - set(self.entries)):  # not indexed: read its manifests
            self.dataset(name)

    def names(self) -> list[str]:
        """Datasets with at least one version (per the index, before their check)."""
        return sorted(name for name, versions in self.entries.items() if versions)

    def dataset(self, name: str) -> tuple[dict[str, Entry], str | None]:
        """``name``'s published versions (oldest first) and its latest version id, checked
        against a listing of its folder: versions the index lacks are read and added."""
        if name in self._checked:
            return self._checked[name]
        store = self.store
        known = self.entries.get(name, {})
        versions: dict[str, Entry] = {}
        has_pointer = False
        for base, is_dir in store.listing(store.location.join(name)):
            if not is_dir:
                has_pointer = has_pointer or base == LATEST
                continue
            if base.startswith("."):
                continue
            if base in known:
                versions[base] = known[base]
                continue
            manifest = store.read_manifest(name, base)  # not indexed (or a build still running)
            if manifest is not None:
                versions[base] = entry_of(manifest)
                self.repaired.append(versions[base])
        ordered = dict(sorted(versions.items(), key=lambda kv: (kv[1]["created_at"], kv[0])))
        latest = None
        if has_pointer:
            pointer = store.location.join(name, LATEST)
            store._fresh(pointer)
            try:
                with store.fs.open(pointer, "r", encoding="utf-8") as handle:
                    latest = handle.read().strip()
            except FileNotFoundError:
                pass
        if latest not in ordered:
            latest = next(reversed(ordered)) if ordered else None
        self.entries[name] = ordered
        self._checked[name] = (ordered, latest)
        return ordered, latest

    def resolve(self, ref: str) -> Entry:
        """The entry of ``name`` (its latest version) or ``name@<version id or unique prefix>``."""
        name, _, prefix = ref.partition("@")
        if not NAME_RE.match(name):
            raise StoreError(f"bad dataset reference {ref!r}: expected name or name@version")
        versions, latest = self.dataset(name)
        if not prefix:
            if latest is None:
                raise StoreError(f"no published version of dataset {name!r} in {self.store.location.url}")
            return versions[latest]
        return versions[match_version(name, prefix, versions, self.store.location.url)]

    def save_repairs(self) -> None:
        """Fold what was read from manifests into the index (best effort: a read-only store
        keeps working, only without the speed-up)."""
        if not self.use_index or not self.repaired:
            return
        try:
            self.index.compact(extra=self.repaired)
            log.info("catalog index: added %d versions it lacked", len(self.repaired))
        except (OSError, ValueError, *storage_errors()) as err:
            log.info("catalog index not updated (%s): later readers will read those manifests again", err)
        self.repaired = []
