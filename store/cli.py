"""``python -m store ls | show <ref> | lineage <ref> | sql "<query>" | reindex | gc | push <ref> | pull <repo> | export <ref>``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from .core import Store, StoreError
from .errors import storage_errors, storage_message

if TYPE_CHECKING:
    import polars as pl

    from .lineage import Node


def print_frame(frame: "pl.DataFrame", max_rows: int = 50) -> None:
    import polars as pl

    with pl.Config(tbl_rows=max_rows, tbl_cols=30, fmt_str_lengths=60, tbl_width_chars=200,
                   tbl_hide_dataframe_shape=False, tbl_hide_column_data_types=True):
        print(frame)


def write_frame(frame: "pl.DataFrame", fmt: str, output: str | None) -> None:
    if fmt == "table":
        print_frame(frame)
        return
    if fmt == "parquet":
        if not output:
            raise StoreError("--format parquet needs --output FILE")
        frame.write_parquet(output)
    elif fmt == "csv":
        text = frame.write_csv()
        _emit(text, output)
    elif fmt == "json":
        _emit(json.dumps(frame.to_dicts(), indent=1, default=str) + "\n", output)
    if output:
        print(f"wrote {frame.height} rows to {output}", file=sys.stderr)


def _emit(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def cmd_ls(store: Store, args: argparse.Namespace) -> None:
    import polars as pl

    from .published import Published

    published = Published(store, use_index=not args.no_index)
    rows = []
    for name in published.names():
        versions, latest_id = published.dataset(name)
        if latest_id is None:  # its versions are gone since the index was written
            continue
        latest = versions[latest_id]
        rows.append({"dataset": name, "kind": latest["kind"], "versions": len(versions),
                     "latest": latest_id, "rows": latest["rows"], "created_at": latest["created_at"]})
    published.save_repairs()
    if not rows:
        print(f"no datasets in {store.location.url}")
        return
    write_frame(pl.DataFrame(rows), args.format, args.output)


def cmd_show(store: Store, args: argparse.Namespace) -> None:
    manifest = store.resolve(args.ref)
    if args.format == "json":
        print(manifest.to_json())
        return
    print(f"{manifest.ref}  ({manifest.kind}, built by {manifest.builder} v{manifest.code_version})")
    print(f"  created   {manifest.created_at}")
    print(f"  path      {store.location.uri(store.path(manifest))}")
    print(f"  content   {manifest.content_hash[:16]}  ({len(manifest.files)} files, "
          f"{sum(f['size'] for f in manifest.files.values()):,} bytes)")
    for role, ref in sorted(manifest.parents.items()):
        print(f"  parent    {role}: {ref}")
    for key, value in sorted(manifest.identity.items()):
        print(f"  identity  {key}: {value}")
    for key, value in sorted(manifest.params.items()):
        print(f"  param     {key}: {json.dumps(value)}")
    for table, info in manifest.tables.items():
        cols = ", ".join(f"{c}:{t}" for c, t in info["schema"].items())
        print(f"  table     {table}: {info['rows']} rows [{cols}]")
    for array, info in manifest.arrays.items():
        dims = " x ".join(f"{d}={n}" for d, n in zip(info["dimension_names"], info["shape"]))
        print(f"  array     {array}: {dims} {info['dtype']} chunks {info['chunks']}")
    for key, value in sorted(manifest.summary.items()):
        print(f"  summary   {key}: {json.dumps(value)}")


def cmd_lineage(store: Store, args: argparse.Namespace) -> None:
    from .lineage import Lineage

    lineage = Lineage(store, use_index=not args.no_index)
    node = lineage.resolve(args.ref)
    print(node.ref)
    print("upstream (what it was built from):")
    _walk(node, lineage.parents, depth=1, seen=set())
    print("downstream (what was built from it):")
    _walk(node, lineage.children, depth=1, seen=set())
    lineage.save_repairs()


def _walk(node: "Node", step: "Callable[[Node], list[Node]]", depth: int, seen: set[str]) -> None:
    nodes = step(node)
    if not nodes and depth == 1:
        print("  (none)")
    for child in nodes:
        marker = " (seen above)" if child.ref in seen else ""
        print(f"{'  ' * depth}{child.ref}  [{child.kind}]{marker}")
        if not marker:
            seen.add(child.ref)
            _walk(child, step, depth + 1, seen)


def cmd_sql(store: Store, args: argparse.Namespace) -> None:
    from .sql import query

    write_frame(query(store, args.query, use_index=not args.no_index), args.format, args.output)


def cmd_reindex(store: Store, args: argparse.Namespace) -> None:
    from .index import CatalogIndex

    count = CatalogIndex(store).rebuild()
    print(f"indexed {count} version(s) in {store.location.url}")


def cmd_gc(store: Store, args: argparse.Namespace) -> None:
    removed = store.collect_garbage(min_idle=args.min_idle)
    print(f"removed {len(removed)} leftover folder(s)" + "".join(f"\n  {p}" for p in removed))


def cmd_push(store: Store, args: argparse.Namespace) -> None:
    from huggingface_hub.utils import disable_progress_bars

    from .hub import push

    disable_progress_bars()
    for result in push(store, args.ref, args.repo, private=args.private, revision=args.revision,
                       endpoint=args.endpoint, with_parents=args.with_parents):
        status = f"pushed (commit {result.commit[:12]})" if result.commit else "already there"
        print(f"{result.ref} -> {result.location}  {status}")


def cmd_pull(store: Store, args: argparse.Namespace) -> None:
    from huggingface_hub.utils import disable_progress_bars

    from .hub import pull

    disable_progress_bars()
    results = pull(store, args.repo, refs=args.ref, path_in_repo=args.path_in_repo,
                   endpoint=args.endpoint, with_parents=args.with_parents)
    for result in results:
        print(f"{result.ref}  {'installed' if result.installed else 'already here'}")


def cmd_export(store: Store, args: argparse.Namespace) -> None:
    # the writers are pure functions over arrays (transforms.vectors.export); the store only
    # hands them the file's bytes, so it still knows nothing about models
    from transforms.vectors import ExportError, export_vectors, read_vector_file

    manifest = store.resolve(args.ref)
    if manifest.kind != "vectors":
        raise StoreError(f"{manifest.ref} is a {manifest.kind} dataset; export needs a vectors dataset")
    path = f"vectors/{args.method}.safetensors"
    if path not in manifest.files:
        have = sorted(p.split("/")[-1].removesuffix(".safetensors") for p in manifest.files if p.startswith("vectors/"))
        raise StoreError(f"{manifest.ref} has no {args.method!r} vectors (methods: {', '.join(have) or 'none'})")
    try:
        vectors = read_vector_file(store.read_bytes(manifest, path), where=f"{manifest.ref}/{path}")
        result = export_vectors(vectors, args.output, args.format, layers=args.layers, scale=args.scale,
                                source=manifest.ref, model_hint=args.model_hint, force=args.force)
    except ExportError as err:
        raise StoreError(str(err)) from None
    print(f"{manifest.ref} {args.method} -> {', '.join(result.paths)}  ({result.fmt}, layers "
          f"{','.join(map(str, result.layers))}, scale {args.scale:g})")


def _is_duckdb_error(err: Exception) -> bool:
    import duckdb

    return isinstance(err, duckdb.Error)


def _seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m store", description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="store root: a folder or fsspec URL (default $TRAITSTORE_ROOT or ./artifacts)")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = {"choices": ["table", "parquet", "csv", "json"], "default": "table"}
    no_index = {"action": "store_true", "help": "read every manifest instead of the catalog index (slow; for comparisons)"}
    p = sub.add_parser("ls", help="datasets and their latest versions")
    p.add_argument("--format", **fmt)
    p.add_argument("--output")
    p.add_argument("--no-index", **no_index)
    p = sub.add_parser("show", help="a version's manifest")
    p.add_argument("ref", help="name, or name@<version id or unique prefix>")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p = sub.add_parser("lineage", help="what a version was built from and what was built from it")
    p.add_argument("ref")
    p.add_argument("--no-index", **no_index)
    p = sub.add_parser("sql", help="a DuckDB query over the latest versions (views per dataset, per kind, "
                                   "\"<dataset>@<version>\" pinned, and `catalog`)")
    p.add_argument("query")
    p.add_argument("--format", **fmt)
    p.add_argument("--output", help="file to write (needed for parquet)")
    p.add_argument("--no-index", **no_index)
    sub.add_parser("reindex", help="rebuild the catalog index (<root>/_index) from every manifest")
    p = sub.add_parser("gc", help="remove leftovers of killed builds (safe while builders run)")
    p.add_argument("--min-idle", type=_seconds, default=600.0, metavar="SECONDS",
                   help="folders whose builder cannot be checked (another host) must be idle this long "
                        "(default 600; a dead builder's folder on this host goes at once)")
    hub_help = "Hub URL (default $HF_ENDPOINT or https://huggingface.co); token from HF_TOKEN or `hf auth login`"
    p = sub.add_parser("push", help="push versions to a Hugging Face Hub dataset repo (one commit per version)")
    p.add_argument("ref", nargs="+", help="name or name@version")
    p.add_argument("--repo", required=True, help="dataset repo id, user/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default="main", help="branch to commit to (created if missing)")
    p.add_argument("--with-parents", action="store_true", help="push the versions' local ancestors too")
    p.add_argument("--endpoint", help=hub_help)
    p = sub.add_parser("pull", help="install versions from a Hub dataset repo, verified, ids and lineage kept")
    p.add_argument("repo", help="user/name, or user/name@revision (branch or commit sha)")
    p.add_argument("--ref", action="append", help="only name or name@version (repeatable); default all")
    p.add_argument("--path-in-repo", help="only versions under this folder, e.g. <dataset> or <dataset>/<version>")
    p.add_argument("--with-parents", action="store_true", help="also pull the selected versions' parents on the repo")
    p.add_argument("--endpoint", help=hub_help)
    p = sub.add_parser("export", help="a vectors version as a llama.cpp control vector (gguf), a repeng-loadable "
                                      "gguf, or plain tensors (pt)")
    p.add_argument("ref", help="vectors dataset: name or name@version")
    # the names of transforms.vectors.EXPORT_FORMATS, spelled out so --help imports no numpy
    p.add_argument("--format", required=True, choices=["gguf", "repeng", "pt"],
                   help="gguf: llama.cpp --control-vector (direction.N = our layer N, layer 0 left out); "
                        "repeng: ControlVector.import_gguf; pt: torch.save({layer: tensor}) + .json, or "
                        "{'layer_<k>': tensor} when PATH ends in .safetensors")
    p.add_argument("--method", default="mean_diff", help="which method's vectors (default mean_diff)")
    p.add_argument("--layers", default="all", help="all (default) or a comma list, e.g. 12,14")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the vectors by this (default 1.0)")
    p.add_argument("--model-hint", help="controlvector.model_hint (default the vectors' model id; repeng "
                                        "uses model.config.model_type)")
    p.add_argument("--output", required=True, metavar="PATH")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {"ls": cmd_ls, "show": cmd_show, "lineage": cmd_lineage, "sql": cmd_sql, "reindex": cmd_reindex, "gc": cmd_gc,
                "push": cmd_push, "pull": cmd_pull, "export": cmd_export}
    try:
        store = Store(args.store)
        if args.command == "pull":  # pull installs versions: it may create the root, later
            store.location.require_writable(create=False)
        else:
            store.location.require_existing()
        commands[args.command](store, args)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except storage_errors() as err:
        print(f"error: {storage_message(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.command != "sql" or not _is_duckdb_error(err):
            raise
        # a typo in a query is bad input too: one line, not a traceback
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
