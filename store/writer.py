"""Writing one version: everything goes into a private temporary folder first."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .fs import Location
from .hashing import sha256_stream

if TYPE_CHECKING:
    import pyarrow as pa
    import zarr

log = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 100_000


def shard_name(split: str, index: int, count: int) -> str:
    """Hugging Face's shard naming, so ``datasets.load_dataset`` reads the folder as it is."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def table_dir(table: str) -> str:
    """The main table lives in ``data/`` (what ``load_dataset(<version folder>)`` reads)."""
    return "data" if table == "data" else f"tables/{table}"


def _to_arrow(rows: Any) -> "pa.Table":
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        return rows
    if hasattr(rows, "to_arrow"):  # polars.DataFrame
        return rows.to_arrow()
    if isinstance(rows, list):
        return pa.Table.from_pylist(rows)
    raise TypeError(f"cannot write {type(rows).__name__} as a table")


class VersionWriter:
    """Collects the files of one version inside ``tmp_path``; the store publishes it."""

    def __init__(self, location: Location, tmp_path: str, name: str = "") -> None:
        self.location = location
        self.path = tmp_path
        self.name = name  # the dataset, for error messages
        self.tables: dict[str, dict[str, Any]] = {}
        self.arrays: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}
        if location.is_local:  # object stores have no folders
            location.fs.makedirs(tmp_path, exist_ok=True)

    def file_path(self, relpath: str) -> str:
        return f"{self.path}/{relpath}"

    def write_table(
        self,
        rows: Any,
        table: str = "data",
        split: str = "train",
        shard_rows: int = DEFAULT_SHARD_ROWS,
    ) -> int:
        """Write rows (pyarrow Table, polars DataFrame or list of dicts) as Parquet shards."""
        arrow = _to_arrow(rows)
        self._require_columns(table, arrow.num_columns)
        count = max(1, -(-arrow.num_rows // shard_rows))
        folder = table_dir(table)
        shards = []
        for i in range(count):
            piece = arrow.slice(i * shard_rows, shard_rows)
            rel = f"{folder}/{shard_name(split, i, count)}"
            self.location.fs.makedirs(self.file_path(folder), exist_ok=True)
            write_parquet(self.location.fs, self.file_path(rel), piece)
            shards.append(rel)
        entry = self.tables.setdefault(table, {"rows": 0, "splits": {}, "schema": {}})
        entry["rows"] += arrow.num_rows
        entry["splits"][split] = {"rows": arrow.num_rows, "shards": shards}
        entry["schema"] = {f.name: str(f.type) for f in arrow.schema}
        return arrow.num_rows

    def _require_columns(self, table: str, columns: int) -> None:
        # a column-less Parquet file is unreadable to DuckDB ("Need at least one non-root
        # column"): published, it would break every `store sql` query, so it is never written
        if columns == 0:
            raise ValueError(f"{self.name or self.path}: table {table!r} has no columns "
                             "(an empty list of rows has none either: pass a typed empty table)")

    def add_table_shards(self, shards: list[str], rows: int, schema: dict[str, str], table: str = "data",
                         split: str = "train") -> None:
        """Register Parquet shards already placed in this version (see :meth:`adopt`)."""
        self._require_columns(table, len(schema))
        entry = self.tables.setdefault(table, {"rows": 0, "splits": {}, "schema": {}})
        entry["rows"] += rows
        entry["splits"][split] = {"rows": rows, "shards": list(shards)}
        entry["schema"] = dict(schema)

    def adopt(self, source: str, relpath: str) -> None:
        """Place the finished file ``source`` (same filesystem) at ``relpath`` without changing
        its bytes: a hard link on local disk (the source is kept, so a killed publish can be
        redone), a server-side copy elsewhere."""
        fs = self.location.fs
        target = self.file_path(relpath)
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if self.location.is_local:
            import os
            import shutil

            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        else:
            fs.copy(source, target)

    def zarr_store(self, name: str) -> Any:
        """A zarr v3 store for array ``name`` inside this version."""
        return open_zarr_store(self.location, self.file_path(f"arrays/{name}.zarr"), read_only=False)

    def create_array(
        self,
        name: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dimension_names: tuple[str, ...],
        dtype: str = "float32",
        attributes: dict[str, Any] | None = None,
    ) -> "zarr.Array":
        array = create_zarr_array(self.zarr_store(name), shape, chunks, dimension_names, dtype, attributes)
        self.arrays[name] = {
            "shape": list(shape),
            "chunks": list(chunks),
            "dtype": dtype,
            "dimension_names": list(dimension_names),
            "path": f"arrays/{name}.zarr",
        }
        return array

    def write_bytes(self, relpath: str, data: bytes) -> None:
        parent = relpath.rsplit("/", 1)[0] if "/" in relpath else ""
        if parent:
            self.location.fs.makedirs(self.file_path(parent), exist_ok=True)
        with self.location.fs.open(self.file_path(relpath), "wb") as handle:
            handle.write(data)

    def put_dir(self, local_dir: Any, relpath: str) -> list[str]:
        """Upload every file under the local folder ``local_dir`` to ``relpath/`` in this
        version (for libraries that only write to local disk: ``save_pretrained``, plots).
        Returns the relative paths written."""
        from pathlib import Path

        root = Path(local_dir)
        written = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = f"{relpath.strip('/')}/{path.relative_to(root).as_posix()}"
            self.write_bytes(rel, path.read_bytes())
            written.append(rel)
        return written

    def inventory(self) -> dict[str, dict[str, Any]]:
        """Every file with its size and sha256, relative to the version folder."""
        fs = self.location.fs
        if not self.location.is_local:  # zarr wrote through its own (async) filesystem
            fs.invalidate_cache(self.path)
        files: dict[str, dict[str, Any]] = {}
        prefix = self.path.rstrip("/") + "/"
        for full in sorted(fs.find(self.path)):
            rel = full[len(prefix):] if full.startswith(prefix) else full.split(self.path, 1)[-1].lstrip("/")
            with fs.open(full, "rb") as handle:
                files[rel] = {"size": fs.size(full), "sha256": sha256_stream(handle)}
        return files


def write_parquet(fs: Any, path: str, table: "pa.Table") -> None:
    """The one way a Parquet shard is written (same settings, same bytes, in any process)."""
    with fs.open(path, "wb") as handle:
        write_parquet_to(handle, table)


def write_parquet_to(handle: Any, table: "pa.Table") -> None:
    """:func:`write_parquet` into an open binary handle (e.g. a :func:`~store.atomic.write_atomic` callback)."""
    import pyarrow.parquet as pq

    pq.write_table(table, handle, compression="zstd")


def create_zarr_array(store: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dimension_names: tuple[str, ...],
                      dtype: str = "float32", attributes: dict[str, Any] | None = None) -> "zarr.Array":
    """The one way an array is created (same codecs, so chunk bytes match in any process)."""
    import zarr

    return zarr.create_array(store, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dimension_names,
                             fill_value=0, attributes=attributes or {})


def open_zarr_store(location: Location, path: str, read_only: bool) -> Any:
    from zarr.storage import FsspecStore, LocalStore

    if location.is_local:
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(location.uri(path), read_only=read_only)


