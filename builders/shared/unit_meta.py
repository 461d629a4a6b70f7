"""What a finished work unit reports (:class:`UnitMeta`, its ``done.json``) and the run info
the driver gathers from the units for the manifest summary.

A unit's attempt writes its files (see :mod:`builders.shared.units`), then ``done.json``:
where its table shards and array rows are, run info (worker pid and host, device, batch
size) and the stage's own numbers (``stats``: e.g. the responses' token counts). The driver
gets the same object back from the executor (a Ray actor pickles it) or, for a unit a killed
run finished, reads it from ``done.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# keys of done.json that are UnitMeta fields; every other key is one of the stage's stats
_RUN_INFO = ("pid", "host", "device", "batch_size")


@dataclass(frozen=True)
class TableEntry:
    """A table shard of the unit: its path (relative to the attempt folder and, once
    finalized, to the version) and row count."""

    path: str
    rows: int


@dataclass(frozen=True)
class ArrayEntry:
    """The unit's rows ``rows`` of an array: ``owned`` lie in whole Zarr chunks written as chunk
    files; each edge ``(lo, hi, path)`` is rows of a chunk shared with a neighbour, saved as
    ``.npy`` at ``path`` (relative to the attempt folder)."""

    rows: tuple[int, int]
    owned: tuple[int, int]
    edges: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True)
class UnitMeta:
    """One finished unit: index, attempt folder (relative to the build's scratch folder),
    its tables and arrays, run info (never part of a version) and the stage's ``stats``."""

    unit: int
    folder: str
    tables: dict[str, TableEntry] = field(default_factory=dict)
    arrays: dict[str, ArrayEntry] = field(default_factory=dict)
    pid: int | None = None
    host: str | None = None
    device: str | None = None
    batch_size: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """``done.json``: one flat object, keys sorted (stats beside the fixed keys)."""
        data: dict[str, Any] = dict(self.stats)
        data.update(unit=self.unit, folder=self.folder,
                    tables={name: {"path": t.path, "rows": t.rows} for name, t in self.tables.items()},
                    arrays={name: {"rows": list(a.rows), "owned": list(a.owned), "edges": [list(e) for e in a.edges]}
                            for name, a in self.arrays.items()})
        data.update({key: getattr(self, key) for key in _RUN_INFO if getattr(self, key) is not None})
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UnitMeta":
        data = json.loads(text)
        tables = {name: TableEntry(t["path"], t["rows"]) for name, t in data.pop("tables").items()}
        arrays = {name: ArrayEntry(tuple(a["rows"]), tuple(a["owned"]), tuple(tuple(e) for e in a["edges"]))
                  for name, a in data.pop("arrays").items()}
        run_info = {key: data.pop(key) for key in _RUN_INFO if key in data}
        return cls(unit=data.pop("unit"), folder=data.pop("folder"), tables=tables, arrays=arrays, **run_info,
                   stats=data)


def run_batch_sizes(metas: list[UnitMeta]) -> list[int]:
    """The distinct batch sizes the units used, for the manifest summary (run info, like
    the device; units finished before sizes were recorded have none)."""
    return sorted({m.batch_size for m in metas if m.batch_size})


def run_devices(metas: list[UnitMeta]) -> str | list[str] | None:
    """The device the units ran on (a list when they differed), for the manifest summary:
    run info, never part of a version id. Units finished before devices were recorded
    have none."""
    devices = sorted({m.device for m in metas if m.device})
    return devices[0] if len(devices) == 1 else (devices or None)
