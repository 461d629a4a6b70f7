"""Append-only keyed caches inside a store (``<root>/_cache/<name>/``), for work that is
expensive to redo and not itself a dataset: judge scores, steered generations.

Entries are rows of small Parquet files, one per flush, written to a temporary name and
renamed (object stores: written with one PUT, which is atomic), so a reader never sees
half a file and a process killed halfway keeps every flushed entry. Keys are strings hashed with sha256; values are rows of fixed columns.
Folders starting with ``_`` are not datasets (``Store.datasets`` and ``gc`` skip them).
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .atomic import write_atomic
from .core import Store

log = logging.getLogger(__name__)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyedCache:
    """``get_many(keys) -> {key: row}`` / ``put_many([(key, row)])`` over Parquet files.

    ``columns`` are the value columns every row carries; ``extra`` columns (e.g. the judge
    model) are stored for people browsing the files but not returned.
    """

    def __init__(self, store: Store, name: str, columns: Sequence[str]) -> None:
        self.store = store
        self.folder = store.location.join("_cache", name)
        self.columns = tuple(columns)
        self._rows: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._rows is None:
            import pyarrow.parquet as pq

            rows: dict[str, dict[str, Any]] = {}
            fs = self.store.fs
            self.store._fresh(self.folder)
            if fs.exists(self.folder):
                for path in sorted(fs.find(self.folder)):
                    if not path.endswith(".parquet"):
                        continue
                    with fs.open(path, "rb") as handle:
                        table = pq.read_table(handle, columns=["key", *self.columns]).to_pylist()
                    rows.update((r.pop("key"), r) for r in table)
            self._rows = rows
        return self._rows

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        rows = self._load()
        out = {}
        for key in keys:
            hit = rows.get(digest(key))
            if hit is not None:
                out[key] = hit
        return out

    def put_many(self, items: Iterable[tuple[str, Mapping[str, Any]]],
                 schema: Mapping[str, Any] | None = None, extra: Mapping[str, list[Any]] | None = None) -> None:
        """Append ``(key, row)`` items in one file. ``schema``: pyarrow types per column,
        for columns whose type cannot be inferred from the values (e.g. all ``None``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        items = [(k, dict(v)) for k, v in items]
        if not items:
            return
        columns: dict[str, Any] = {"key": [digest(k) for k, _ in items]}
        for col in self.columns:
            values = [row.get(col) for _, row in items]
            columns[col] = pa.array(values, type=(schema or {}).get(col))
        for col, values in (extra or {}).items():
            columns[col] = values
        table = pa.table(columns)
        # a reader never sees half a file; a killed writer keeps every earlier flush
        write_atomic(self.store.location, f"{self.folder}/{uuid.uuid4().hex}.parquet",
                     lambda handle: pq.write_table(table, handle))
        rows = self._load()
        for key, row in items:
            rows[digest(key)] = {col: row.get(col) for col in self.columns}
        log.debug("cached %d entries in %s", len(items), self.folder)

    def __len__(self) -> int:
        return len(self._load())
