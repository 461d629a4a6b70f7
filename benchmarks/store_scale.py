"""`python -m store sql`, `ls` and `lineage` on a store of many small versions: every manifest read vs the catalog index.

    python benchmarks/store_scale.py [--sizes 1000,10000] [--per-dataset 5] [--repeats 3]

For each size, a synthetic store in a temporary folder: ``size / per-dataset`` datasets of
``per-dataset`` versions each (10,000 = 2,000 x 5), kinds cycling over five, each version a
one-shard Parquet table with its manifest and ``_latest`` pointer, the same files
``Store.build`` writes (written directly: publishing 10,000 versions one by one takes
minutes), then the catalog index as publishing leaves it. In each group of ten datasets the
first one's latest version is the parent of every version of the other nine (lineage to
walk). Measured:

- ``cli_full_s`` / ``cli_index_s``: wall time of ``python -m store sql "select count(*) from
  <one dataset>"`` in a fresh process, with ``--no-index`` (every manifest read, as before
  the index) and without (best of ``--repeats``; process start and imports included), and
  ``cli_full_cpu_s`` / ``cli_index_cpu_s`` the CPU seconds of those processes (steadier
  than wall time on a shared machine);
- ``reads_full`` / ``reads_index``: file opens plus folder listings on the store's
  filesystem for that query in-process (what would be GETs and LISTs on object storage);
- ``kind_index_s``: ``select count(*) from <kind>`` (a fifth of all datasets), in-process;
- ``catalog_index_s``: ``select count(*) from catalog`` (every version), in-process;
- ``ls_reads_full`` / ``ls_reads_index`` and ``lineage_reads_full`` / ``lineage_reads_index``:
  the same reads for ``python -m store ls`` and ``lineage <first dataset>`` in-process, with
  ``--no-index`` and without; ``ls_manifests_index`` / ``lineage_manifests_index``: how many
  of those reads were manifests (with the index: none for ``ls``, the walked version and its
  ancestors for ``lineage``). Listings still grow with the number of datasets (each is
  checked against its folder), not with the number of versions;
- ``cli_ls_s`` / ``cli_lineage_s``: wall time of those two commands in a fresh process.

Prints a table (one row per figure, one column per size), then (last line) one JSON object
with the figures. Goal: ``cli_index_s`` <= 1 s at 10,000 versions (on an idle machine), and
reads that do not grow with the number of versions.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
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
GROUP = 10  # datasets per lineage group: the first is the parent of the others


def synthetic_store(root: Path, datasets: int, per_dataset: int, index: bool = True) -> list[str]:
    """Write ``datasets`` x ``per_dataset`` published versions under ``root`` (what
    ``Store.build`` leaves: shard, manifest, ``_latest``) and, with ``index``, the catalog
    index publishing keeps. Returns the dataset names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from store import Manifest, Store
    from store.hashing import content_hash_of
    from store.index import CatalogIndex, entry_of, merge

    sink = io.BytesIO()
    pq.write_table(pa.table({"i": [0, 1, 2], "text": ["a", "b", "c"]}), sink, compression="zstd")
    shard_bytes = sink.getvalue()
    shard = "data/train-00000-of-00001.parquet"
    files = {shard: {"size": len(shard_bytes), "sha256": hashlib.sha256(shard_bytes).hexdigest()}}
    names, entries = [], {}
    for d in range(datasets):
        kind = KINDS[d % len(KINDS)]
        name = f"{kind}-synthetic-{d:05d}"
        names.append(name)
        parents = {} if d % GROUP == 0 else {"source": f"{names[d - d % GROUP]}@{latest_of(names[d - d % GROUP], per_dataset)}"}
        for v in range(per_dataset):
            version = latest_of(name, v + 1)
            folder = root / name / version
            (folder / "data").mkdir(parents=True)
            (folder / shard).write_bytes(shard_bytes)
            manifest = Manifest(
                name=name, version=version, kind=kind, builder=f"builders.{kind}", code_version="1",
                params={"v": v}, parents=parents, identity={}, files=files,
                tables={"data": {"rows": 3, "splits": {"train": {"rows": 3, "shards": [shard]}},
                                 "schema": {"i": "int64", "text": "string"}}},
                created_at=f"2026-01-01T00:00:{v:02d}+00:00", content_hash=content_hash_of(files))
            (folder / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
            merge(entries, [entry_of(manifest)])
        (root / name / "_latest").write_text(version, encoding="utf-8")
    if index:
        CatalogIndex(Store(str(root))).compact(replace=entries)
    return names


def latest_of(name: str, per_dataset: int) -> str:
    """The version id :func:`synthetic_store` gives the last of ``per_dataset`` versions of ``name``."""
    from store.hashing import sha256_text

    return sha256_text(f"{name}/{per_dataset - 1}")[:16]


@contextlib.contextmanager
def counting_reads(store: Any) -> Iterator[dict[str, int]]:
    """Count file opens and folder listings of ``store`` (its fsspec filesystem's ``open`` and
    ``ls``, and ``Store.listing``, which lists local folders with ``os.scandir``) while inside;
    ``manifests`` counts the opens that were manifests."""
    counts = {"open": 0, "ls": 0, "manifests": 0}
    inside = [0]  # a text-mode open re-enters ``open`` in binary mode: one read, counted once
    targets = [(store.fs, "open", "open"), (store.fs, "ls", "ls"), (store, "listing", "ls")]
    originals = [getattr(obj, attr) for obj, attr, _ in targets]

    def wrap(original: Any, kind: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not inside[0]:
                counts[kind] += 1
                if kind == "open" and str(args[0]).endswith("/manifest.json"):
                    counts["manifests"] += 1
            inside[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                inside[0] -= 1
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


def command_reads(root: Path, command: str, ref: str = "", use_index: bool = True) -> dict[str, int]:
    """Reads (``reads``: opens plus listings) and manifest opens (``manifests``) of
    ``python -m store ls`` or ``lineage <ref>``, in-process, its output discarded."""
    from store import Store
    from store.cli import build_parser, cmd_lineage, cmd_ls

    argv = ["ls", "--format", "csv"] if command == "ls" else ["lineage", ref]
    args = build_parser().parse_args(argv + ([] if use_index else ["--no-index"]))
    store = Store(str(root))
    with counting_reads(store) as counts, contextlib.redirect_stdout(io.StringIO()):
        (cmd_ls if command == "ls" else cmd_lineage)(store, args)
    return {"reads": counts["open"] + counts["ls"], "manifests": counts["manifests"]}


def best_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cli_seconds(root: Path, argv: list[str], repeats: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds) of ``python -m store <argv>`` in a fresh process:
    on a shared, busy machine the CPU time is the steadier figure."""
    import resource

    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "store", "--store", str(root), *argv],
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
        sql = ["sql", one, "--format", "csv"]
        full_wall, full_cpu = cli_seconds(root, sql + ["--no-index"], repeats)
        index_wall, index_cpu = cli_seconds(root, sql, repeats)
        ls_full, ls_index = (command_reads(root, "ls", use_index=u) for u in (False, True))
        lineage_full, lineage_index = (command_reads(root, "lineage", names[0], use_index=u) for u in (False, True))
        return {
            "versions": size, "datasets": len(names), "setup_s": round(made, 1),
            "cli_full_s": full_wall, "cli_index_s": index_wall, "cli_full_cpu_s": full_cpu, "cli_index_cpu_s": index_cpu,
            "reads_full": reads_for(root, one, use_index=False),
            "reads_index": reads_for(root, one, use_index=True),
            "kind_index_s": round(best_time(lambda: query(store, "select count(*) from responses"), repeats), 3),
            "catalog_index_s": round(best_time(lambda: query(store, "select count(*) from catalog"), repeats), 3),
            "ls_reads_full": ls_full["reads"], "ls_reads_index": ls_index["reads"],
            "ls_manifests_index": ls_index["manifests"],
            "lineage_reads_full": lineage_full["reads"], "lineage_reads_index": lineage_index["reads"],
            "lineage_manifests_index": lineage_index["manifests"],
            "cli_ls_s": cli_seconds(root, ["ls", "--format", "csv"], repeats)[0],
            "cli_lineage_s": cli_seconds(root, ["lineage", names[0]], repeats)[0],
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
    width = max(len(c) for c in rows[0])
    for figure in rows[0]:  # one line per figure: readable however many figures there are
        print(f"{figure:<{width}}  " + "  ".join(f"{row[figure]!s:>10}" for row in rows))
    print(json.dumps({"benchmark": "store_scale", "rows": rows}))


if __name__ == "__main__":
    main()
