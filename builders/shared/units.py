"""Work units of a build and the finalize step that assembles them into one version.

A build that runs a model over many samples (responses, activations) is split into units:
unit k owns the contiguous sample ids ``[start, end)`` (and, for a per-token array, the
token rows ``[token_start, token_end)``). Each attempt at a unit writes into its own folder
``<partial dir>/unit-0000k/attempt-<nonce>/`` of the store (so a killed attempt's leftovers,
or a concurrent builder of the same version, never mix with it):

- its table rows as the finished Parquet shard ``data/train-0000k-of-0000K.parquet``;
- for each array, every Zarr chunk that lies wholly inside its rows, encoded exactly as the
  published array encodes it, and the rows of chunks it shares with a neighbour ("edges")
  as ``.npy`` pieces (only ragged per-token arrays have edges: pooled arrays are chunked
  one unit deep along the sample axis);
- ``done.json`` last: the unit's small metadata (:class:`~builders.shared.unit_meta.UnitMeta`:
  row counts, edges, stats, worker pid, its attempt folder). A unit with an attempt holding
  ``done.json`` is finished and never redone, so a killed run resumes. Work a unit
  checkpoints within itself (the responses builder's batch files) sits beside the attempts
  in ``unit-0000k/``. Every file that must appear whole is written with
  :func:`store.atomic.write_atomic`.

:func:`finalize` runs on the driver inside ``Store.build``: it places the units' files into
the version by hard link (local) or server-side copy (remote) without changing a byte,
writes each array's metadata, and assembles the shared chunks from the edge pieces.
Units are taken in index order whatever order they finished in, so the version's bytes
do not depend on the executor, the number of workers or the completion order.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from store.atomic import write_atomic
from store.writer import (VersionWriter, create_zarr_array, open_zarr_store, shard_name, table_dir,
                          write_parquet_to)

from builders.shared.unit_meta import ArrayEntry, TableEntry, UnitMeta

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from store.fs import Location

log = logging.getLogger(__name__)

T = TypeVar("T")
DONE = "done.json"
SCRATCH_MARKER = "units.txt"


# samples finished inside the running unit, for the driver's progress bar (local executor only:
# a Ray worker has no bar to feed, so there it stays None)
_progress: Callable[[int], None] | None = None


@contextmanager
def progress_hook(callback: Callable[[int], None]) -> Iterator[None]:
    global _progress
    previous, _progress = _progress, callback
    try:
        yield
    finally:
        _progress = previous


def report_progress(samples: int) -> None:
    """Called by a unit as batches finish; a no-op unless the driver listens."""
    if _progress is not None:
        _progress(samples)


@dataclass(frozen=True)
class Unit:
    """Samples ``[start, end)`` (and token rows ``[token_start, token_end)``) of a build."""

    index: int
    count: int
    start: int
    end: int
    token_start: int = 0
    token_end: int = 0

    @property
    def name(self) -> str:
        return f"unit-{self.index:05d}"

    def shard(self, table: str = "data", split: str = "train") -> str:
        """The unit's table shard, relative to the version folder (and to the unit folder)."""
        return f"{table_dir(table)}/{shard_name(split, self.index, self.count)}"


@dataclass(frozen=True)
class ArraySpec:
    """An array of the version; axis 0 is split between units (sample or token rows)."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dimension_names: tuple[str, ...]
    dtype: str = "float32"
    attributes: dict[str, Any] = field(default_factory=dict)


def round_unit_size(unit_size: int, batch_size: int | str, *, cpu_batch: int | None = None) -> int:
    """Units are a whole number of batches, so batching inside a unit does not depend on
    who runs it. ``auto`` rounds to ``cpu_batch`` (what it is on the CPU; default
    :data:`~transforms.batching.CPU_BATCH`); on CUDA it resolves to a power of two dividing
    the unit (see :func:`run_batched`)."""
    from transforms.batching import AUTO, CPU_BATCH

    if unit_size < 1:
        raise ValueError(f"unit size must be >= 1, got {unit_size}")
    multiple = (cpu_batch or CPU_BATCH) if batch_size == AUTO else int(batch_size)
    return -(-unit_size // multiple) * multiple


# job scratch folder -> the batch size an out-of-memory error brought one of its units down to
# (per process): the job's later units start there instead of running out of memory first again
_FITTING: dict[str, int] = {}


def run_batched(scratch: str, what: str, batch_size: int, unit_size: int,
                work: Callable[[int], T]) -> tuple[T, int]:
    """``(work(size), size)``: ``work`` at ``batch_size`` (or the smaller size an earlier unit of
    the job fell back to), retried whole at smaller sizes dividing ``unit_size`` on
    out-of-memory (:func:`transforms.batching.with_backoff`), so every batch keeps the global
    index a run at that size from the start gives it."""
    from transforms.batching import halving_divisor, with_backoff

    start = min(batch_size, _FITTING.get(scratch, batch_size))
    result, used = with_backoff(work, start, what=what, smaller=halving_divisor(unit_size))
    if used < start:
        _FITTING[scratch] = used
    return result, used


def plan_units(n_samples: int, unit_size: int, token_counts: list[int] | None = None) -> list[Unit]:
    """Contiguous units of ``unit_size`` samples (at least one unit, possibly empty);
    ``token_counts`` (per sample) gives each unit its rows of a per-token array."""
    count = max(1, -(-n_samples // unit_size))
    offsets = [0]
    for n in token_counts or []:
        offsets.append(offsets[-1] + n)
    units = []
    for k in range(count):
        start, end = k * unit_size, min((k + 1) * unit_size, n_samples)
        tok = (offsets[start], offsets[end]) if token_counts is not None else (0, 0)
        units.append(Unit(k, count, start, end, *tok))
    return units


def owned_rows(lo: int, hi: int, chunk: int, total: int) -> tuple[int, int]:
    """The rows ``[a, b)`` of ``[lo, hi)`` covered by chunks lying wholly inside it
    (``a == b`` when there are none)."""
    first = -(-lo // chunk)
    last = -(-total // chunk) if hi == total else hi // chunk
    if first >= last:
        return hi, hi
    return first * chunk, min(last * chunk, total)


class UnitOutput:
    """What one unit writes into its folder (worker side)."""

    def __init__(self, location: "Location", scratch: str, unit: Unit) -> None:
        self.location = location
        self.unit = unit
        self.unit_folder = f"{scratch}/{unit.name}"
        attempt = f"{unit.name}/attempt-{uuid.uuid4().hex[:8]}"
        self.folder = f"{scratch}/{attempt}"
        self.meta = UnitMeta(unit=unit.index, folder=attempt)
        if not location.fs.exists(f"{scratch}/{SCRATCH_MARKER}"):
            raise RuntimeError(f"{location.url}: this worker ({socket.gethostname()}) does not see the build's "
                               f"scratch folder {scratch}; workers need the store on shared storage (e.g. s3://)")
        location.fs.makedirs(self.folder, exist_ok=True)

    def path(self, relpath: str) -> str:
        """A file of this attempt."""
        return f"{self.folder}/{relpath}"

    def unit_path(self, relpath: str) -> str:
        """A checkpoint file shared by every attempt at this unit (write it with ``write_atomic``)."""
        return f"{self.unit_folder}/{relpath}"

    def write_table(self, table: "pa.Table", name: str = "data") -> None:
        rel = self.unit.shard(name)
        self.location.fs.makedirs(self.path(rel).rsplit("/", 1)[0], exist_ok=True)
        write_atomic(self.location, self.path(rel), lambda handle: write_parquet_to(handle, table))
        self.meta.tables[name] = TableEntry(rel, table.num_rows)

    def write_array(self, spec: ArraySpec, lo: int, data: "np.ndarray") -> None:
        """Write rows ``[lo, lo + len(data))`` of ``spec`` at once (see :meth:`array_rows`)."""
        rows = self.array_rows(spec, lo, lo + data.shape[0])
        rows.write(lo, data)
        rows.close()

    def array_rows(self, spec: ArraySpec, lo: int, hi: int) -> "ArrayRows":
        """A writer of the unit's rows ``[lo, hi)`` of ``spec``, in any order."""
        return ArrayRows(self, spec, lo, hi)

    def save_npy(self, relpath: str, data: "np.ndarray") -> None:
        import numpy as np

        self.location.fs.makedirs(self.path(relpath).rsplit("/", 1)[0], exist_ok=True)
        with self.location.fs.open(self.path(relpath), "wb") as handle:
            np.save(handle, np.ascontiguousarray(data), allow_pickle=False)

    def discard(self) -> None:
        """Remove this attempt's folder (an attempt abandoned for a retry writes nothing that stays)."""
        if self.location.fs.exists(self.folder):
            self.location.fs.rm(self.folder, recursive=True)

    def finish(self, device: str | None = None, batch_size: int | None = None, **stats: Any) -> UnitMeta:
        """Record the unit as done (``done.json``, written last) and return its metadata:
        ``device`` and ``batch_size`` it ran with, and the stage's own ``stats``."""
        self.meta = dataclasses.replace(self.meta, pid=os.getpid(), host=socket.gethostname(), device=device,
                                        batch_size=batch_size, stats=stats)
        write_atomic(self.location, self.path(DONE), self.meta.to_json())
        return self.meta


class ArrayRows:
    """Rows ``[lo, hi)`` of one array written by one unit: rows inside whole chunks go to
    Zarr chunk files as they come, the rest (edges) are buffered and saved as ``.npy`` on
    :meth:`close` for :func:`finalize`. Chunk bytes depend only on their final content."""

    def __init__(self, output: UnitOutput, spec: ArraySpec, lo: int, hi: int) -> None:
        import numpy as np

        self.output, self.spec, self.lo, self.hi = output, spec, lo, hi
        self.a, self.b = owned_rows(lo, hi, spec.chunks[0], spec.shape[0])
        self.array = None
        if self.a < self.b:
            store = open_zarr_store(output.location, output.path(f"arrays/{spec.name}.zarr"), read_only=False)
            self.array = create_zarr_array(store, spec.shape, spec.chunks, spec.dimension_names, spec.dtype)
        self.edges = [(e_lo, e_hi, np.zeros((e_hi - e_lo, *spec.shape[1:]), dtype=spec.dtype))
                      for e_lo, e_hi in (((lo, self.a), (self.b, hi)) if self.a < self.b else ((lo, hi),))
                      if e_lo < e_hi]

    def write(self, row: int, data: "np.ndarray") -> None:
        end = row + data.shape[0]
        if not self.lo <= row <= end <= self.hi:
            raise ValueError(f"rows [{row}, {end}) outside the unit's [{self.lo}, {self.hi})")
        a, b = max(row, self.a), min(end, self.b)
        if a < b and self.array is not None:
            self.array[a:b] = data[a - row:b - row]
        for e_lo, e_hi, buffer in self.edges:
            a, b = max(row, e_lo), min(end, e_hi)
            if a < b:
                buffer[a - e_lo:b - e_lo] = data[a - row:b - row]

    def close(self) -> None:
        edges = []
        for e_lo, e_hi, buffer in self.edges:
            rel = f"edges/{self.spec.name}-{e_lo}-{e_hi}.npy"
            self.output.save_npy(rel, buffer)
            edges.append((e_lo, e_hi, rel))
        self.output.meta.arrays[self.spec.name] = ArrayEntry((self.lo, self.hi), (self.a, self.b), tuple(edges))


def mark_scratch(location: "Location", scratch: str) -> None:
    """Written by the driver before units run: a worker that cannot see it is on another
    machine than a local-folder store, and says so instead of writing where nobody reads."""
    location.fs.makedirs(scratch, exist_ok=True)
    with location.fs.open(f"{scratch}/{SCRATCH_MARKER}", "wb") as handle:
        handle.write(b"units of this build are written below this folder\n")


def finished_units(location: "Location", scratch: str, units: list[Unit]) -> dict[int, UnitMeta]:
    """Metadata of the units a previous (killed) run finished (the first finished attempt)."""
    if not location.is_local:
        location.fs.invalidate_cache(scratch)
    done = {}
    for unit in units:
        for path in sorted(location.fs.glob(f"{scratch}/{unit.name}/attempt-*/{DONE}")):
            with location.fs.open(path, "r", encoding="utf-8") as handle:
                done[unit.index] = UnitMeta.from_json(handle.read())
            break
    return done


def load_npy(location: "Location", path: str) -> "np.ndarray":
    import numpy as np

    with location.fs.open(path, "rb") as handle:
        return np.load(handle, allow_pickle=False)


def finalize(writer: VersionWriter, location: "Location", scratch: str, metas: list[UnitMeta],
             arrays: list[ArraySpec]) -> None:
    """Assemble the units' outputs into ``writer``'s version. ``metas`` may come in any
    order; every unit of the plan must be there."""
    import pyarrow.parquet as pq

    metas = sorted(metas, key=lambda m: m.unit)
    if [m.unit for m in metas] != list(range(len(metas))):
        raise ValueError(f"finalize needs every unit once, got {[m.unit for m in metas]}")
    folders = [f"{scratch}/{m.folder}" for m in metas]
    for table in sorted({t for m in metas for t in m.tables}):
        shards, rows = [], 0
        for meta, folder in zip(metas, folders):
            entry = meta.tables[table]
            writer.adopt(f"{folder}/{entry.path}", entry.path)
            shards.append(entry.path)
            rows += entry.rows
        with location.fs.open(f"{folders[0]}/{shards[0]}", "rb") as handle:
            schema = pq.read_schema(handle)
        writer.add_table_shards(shards, rows, {f.name: str(f.type) for f in schema}, table=table)
    for spec in arrays:
        _finalize_array(writer, location, spec, metas, folders)


def _finalize_array(writer: VersionWriter, location: "Location", spec: ArraySpec, metas: list[UnitMeta],
                    folders: list[str]) -> None:
    import numpy as np

    array = writer.create_array(spec.name, spec.shape, spec.chunks, spec.dimension_names, spec.dtype,
                                attributes=spec.attributes)
    fs = location.fs
    pieces = []
    for meta, folder in zip(metas, folders):
        entry = meta.arrays[spec.name]
        chunk_root = f"{folder}/arrays/{spec.name}.zarr/c"
        if entry.owned[0] < entry.owned[1]:
            prefix = f"{folder}/arrays/{spec.name}.zarr/"
            for path in sorted(fs.find(chunk_root)):
                writer.adopt(path, f"arrays/{spec.name}.zarr/{path[len(prefix):]}")
        pieces.extend((lo, hi, f"{folder}/{rel}") for lo, hi, rel in entry.edges)
    chunk, total = spec.chunks[0], spec.shape[0]
    by_chunk: dict[int, list[tuple[int, int, str]]] = {}
    for lo, hi, path in pieces:
        for j in range(lo // chunk, -(-hi // chunk)):
            by_chunk.setdefault(j, []).append((lo, hi, path))
    cache: dict[str, np.ndarray] = {}
    for j in sorted(by_chunk):
        c_lo, c_hi = j * chunk, min((j + 1) * chunk, total)
        block = np.zeros((c_hi - c_lo, *spec.shape[1:]), dtype=spec.dtype)
        for lo, hi, path in by_chunk[j]:
            if path not in cache:
                cache.clear()  # pieces are visited in row order: keep the current one only
                cache[path] = load_npy(location, path)
            a, b = max(lo, c_lo), min(hi, c_hi)
            block[a - c_lo:b - c_lo] = cache[path][a - lo:b - lo]
        array[c_lo:c_hi] = block


def store_address(store: Any) -> str:
    """How a worker process opens the same store (an absolute folder or the URL)."""
    return store.location.root if store.location.is_local else store.location.url


def plain_type(schema: "pa.Schema", name: str, default: "pa.DataType | None" = None) -> "pa.DataType":
    """The Arrow type of column ``name`` as ``Table.from_pylist`` would infer it (string,
    not large_string; string for an all-null or missing column)."""
    import pyarrow as pa

    if name not in schema.names:
        return default or pa.string()
    t = schema.field(name).type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t):
        return pa.string()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(t.value_type)
    return t
