"""DuckDB over the store: every dataset's latest version is a view named after it.

- ``<dataset>`` (non-identifier characters become ``_``): the main table of its latest
  version; other tables as ``<dataset>__<table>``;
- ``<kind>`` (e.g. ``responses``): all datasets of that kind, latest versions, unioned by
  column name, with ``dataset`` and ``version`` columns; ``<kind>__<table>`` likewise for
  other tables (e.g. ``steering__runs``);
- ``catalog``: every published version with its kind, builder, parents, params and rows.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from .core import Store

if TYPE_CHECKING:
    import duckdb
    import polars as pl


def view_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return f"_{name}" if name[:1].isdigit() else name


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A quoted identifier: a dataset may be called ``left`` or ``order``."""
    return '"' + name.replace('"', '""') + '"'


def _scan(store: Store, uris: list[str]) -> str:
    return "read_parquet([" + ", ".join(_quote(u) for u in uris) + "], union_by_name=true)"


def connect(store: Store) -> "duckdb.DuckDBPyConnection":
    """An in-memory DuckDB connection with the store's views defined."""
    import duckdb
    import polars as pl

    con = duckdb.connect()
    if not store.location.is_local:
        # DuckDB hands URLs of the registered protocols (s3://, s3a://, memory:// ...) to the
        # fsspec filesystem, before its own httpfs handling: no extension download needed, and
        # read_parquet stays lazy (footers, then only the column chunks a query needs, by range)
        con.register_filesystem(store.fs)

    catalog_rows = []
    by_kind: dict[str, list[str]] = {}
    for name in store.datasets():
        latest = store.latest(name)
        for manifest in store.versions(name):
            catalog_rows.append({
                "dataset": manifest.name,
                "version": manifest.version,
                "kind": manifest.kind,
                "builder": manifest.builder,
                "code_version": manifest.code_version,
                "created_at": manifest.created_at,
                "is_latest": manifest.version == latest.version,
                "parents": sorted(manifest.parents.values()),
                "params": json.dumps(manifest.params, sort_keys=True),
                "rows": manifest.rows,
                "content_hash": manifest.content_hash,
            })
        for table in latest.tables:
            view = view_name(name if table == "data" else f"{name}__{table}")
            con.sql(f"CREATE VIEW {_ident(view)} AS SELECT * FROM {_scan(store, store.table_uris(latest, table))}")
        for table in latest.tables:
            part = (
                f"SELECT {_quote(name)} AS dataset, {_quote(latest.version)} AS version, * "
                f"FROM {_scan(store, store.table_uris(latest, table))}"
            )
            kind_view = latest.kind if table == "data" else f"{latest.kind}__{table}"
            by_kind.setdefault(kind_view, []).append(part)

    defined = {row[0] for row in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    for kind, parts in by_kind.items():
        view = view_name(kind)
        if view not in defined and view != "catalog":
            con.sql(f"CREATE VIEW {_ident(view)} AS " + " UNION ALL BY NAME ".join(parts))

    schema = {
        "dataset": pl.String, "version": pl.String, "kind": pl.String, "builder": pl.String,
        "code_version": pl.String, "created_at": pl.String, "is_latest": pl.Boolean,
        "parents": pl.List(pl.String), "params": pl.String, "rows": pl.Int64, "content_hash": pl.String,
    }
    catalog_df = pl.DataFrame(catalog_rows, schema=schema)
    con.register("_catalog_frame", catalog_df)
    con.sql("CREATE VIEW catalog AS SELECT * FROM _catalog_frame")
    return con


def query(store: Store, sql: str) -> "pl.DataFrame":
    con = connect(store)
    return con.sql(sql).pl()
