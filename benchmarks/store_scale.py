"""`python -m store sql` on a store of many small versions: every manifest read vs the catalog index.

    python benchmarks/store_scale.py [--sizes 1000,10000] [--per-dataset 5] [--repeats 3]

For each size, a synthetic store in a temporary folder: ``size / per-dataset`` datasets of
``per-dataset`` versions each (10,000 = 2,000 x 5), kinds cycling over five, each version a
one-shard Parquet table with its manifest and ``_latest`` pointer, the same files
``Store.build`` writes (written directly: publishing 10,000 versions one by one takes
minutes), then the catalog index as publishing leaves it. Measured:

- ``cli_full_s`` / ``cli_index_s``: wall time of ``python -m store sql "select count(*) from
  <one dataset>"`` in a fresh process, with ``--no-index`` (every manifest read, as before
  the index) and without (best of ``--repeats``; process start and imports included), and
  ``cli_full_cpu_s`` / ``cli_index_cpu_s`` the CPU seconds of those processes (steadier
  than wall time on a shared machine);
- ``reads_full`` / ``reads_index``: file opens plus folder listings on the store's
  filesystem for that query in-process (what would be GETs and LISTs on object storage);
- ``kind_index_s``: ``select count(*) from <kind>`` (a fifth of all datasets), in-process;
- ``catalog_index_s``: ``select count(*) from catalog`` (every version), in-process.

Prints a table, then (last line) one JSON object with the figures. Goal: ``cli_index_s``
<= 1 s at 10,000 versions (on an idle machine), and reads that do not grow with the number of versions.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = ("responses", "activations", "judgments", "vectors", "steering")


def synthetic_store(root: Path, datasets: int, per_dataset: int, index: bool = True) -> list[str]:
    """Write ``datasets`` x ``per_dataset`` published versions under ``root`` (what
    ``Store.build`` leaves: shard, manifest, ``_latest``) and, with ``index``, the catalog
    index publishing keeps. Returns the dataset names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from store import Manifest, Store
    from store.hashing import content_hash_of, sha256_text
    from store.index import CatalogIndex, entry_of, merge

    sink = io.BytesIO()
    pq.write_table(pa.table({"i": [0, 1, 2], "text": ["a", "b", "c"]}), sink, compression="zstd")
    shard_bytes = sink.getvalue()
    shard = "data/train-00000-of-00001.parquet"
    import hashlib

    files = {shard: {"size": len(shard_bytes), "sha256": hashlib.sha256(shard_bytes).hexdigest()}}
    names, entries = [], {}
    for d in range(datasets):
        kind = KINDS[d % len(KINDS)]
        name = f"{kind}-synthetic-{d:05d}"
        names.append(name)
        for v in range(per_dataset):
            version = sha256_text(f"{name}/{v}")[:16]
            folder = root / name / version
            (folder / "data").mkdir(parents=True)
            (folder / shard).write_bytes(shard_bytes)
            manifest = Manifest(
                name=name, version=version, kind=kind, builder=f"builders.{kind}", code_version="1",
                params={"v": v}, parents={}, identity={}, files=files,
                tables={"data": {"rows": 3, "splits": {"train": {"rows": 3, "shards": [shard]}},
                                 "schema": {"i": "int64", "text": "string"}}},
                created_at=f"2026-01-01T00:00:{v:02d}+00:00", content_hash=content_hash_of(files))
            (folder / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
            merge(entries, [entry_of(manifest)])
        (root / name / "_latest").write_text(version, encoding="utf-8")
    if index:
        CatalogIndex(Store(str(root))).compact(replace=entries)
    return names


@contextlib.contextmanager
def counting_reads(store: Any) -> Iterator[dict[str, int]]:
    """Count file opens and folder listings of ``store`` (its fsspec filesystem's ``open`` and
    ``ls``, and ``Store.listing``, which lists local folders with ``os.scandir``) while inside."""
    counts = {"open": 0, "ls": 0}
    targets = [(store.fs, "open", "open"), (store.fs, "ls", "ls"), (store, "listing", "ls")]
    originals = [getattr(obj, attr) for obj, attr, _ in targets]

    def wrap(original: Any, kind: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[kind] += 1
            return original(*args, **kwargs)
        return call

    for (obj, attr, kind), original in zip(targets, originals):
        setattr(obj, attr, wrap(original, kind))
    try:
        yield counts
    finally:
        for obj, attr, _ in targets:
            delattr(obj, attr)  # back to the class's methods


def reads_for(root: Path, sql: str, use_index: bool) -> int:
    from store import Store
    from store.sql import query

    store = Store(str(root))
    with counting_reads(store) as counts:
        query(store, sql, use_index=use_index)
    return counts["open"] + counts["ls"]


def best_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cli_seconds(root: Path, sql: str, extra: list[str], repeats: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds) of the command in a fresh process: on a shared,
    busy machine the CPU time is the steadier figure."""
    import resource

    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "store", "--store", str(root), "sql", sql, "--format", "csv", *extra],
                       cwd=REPO, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return round(min(walls), 3), round(min(cpus), 3)


def measure(size: int, per_dataset: int, repeats: int) -> dict[str, Any]:
    from store import Store
    from store.sql import query

    work = Path(tempfile.mkdtemp(prefix="store-scale-"))
    try:
        root = work / "root"
        start = time.perf_counter()
        names = synthetic_store(root, size // per_dataset, per_dataset)
        made = time.perf_counter() - start
        one = f"select count(*) from {names[len(names) // 2].replace('-', '_')}"
        store = Store(str(root))
        full_wall, full_cpu = cli_seconds(root, one, ["--no-index"], repeats)
        index_wall, index_cpu = cli_seconds(root, one, [], repeats)
        return {
            "versions": size, "datasets": len(names), "setup_s": round(made, 1),
            "cli_full_s": full_wall, "cli_index_s": index_wall, "cli_full_cpu_s": full_cpu, "cli_index_cpu_s": index_cpu,
            "reads_full": reads_for(root, one, use_index=False),
            "reads_index": reads_for(root, one, use_index=True),
            "kind_index_s": round(best_time(lambda: query(store, "select count(*) from responses"), repeats), 3),
            "catalog_index_s": round(best_time(lambda: query(store, "select count(*) from catalog"), repeats), 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="total versions per store, comma-separated")
    parser.add_argument("--per-dataset", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(int(s), args.per_dataset, args.repeats) for s in args.sizes.split(",")]
    columns = list(rows[0])
    print("  ".join(f"{c:>15}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>15}" for c in columns))
    print(json.dumps({"benchmark": "store_scale", "rows": rows}))


if __name__ == "__main__":
    main()
