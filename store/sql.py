"""DuckDB over the store: every dataset's latest version is a view named after it.

- ``<dataset>`` (non-identifier characters become ``_``): the main table of its latest
  version; other tables as ``<dataset>__<table>``;
- ``<kind>`` (e.g. ``responses``): all datasets of that kind, latest versions, unioned by
  column name, with ``dataset`` and ``version`` columns; ``<kind>__<table>`` likewise for
  other tables (e.g. ``steering__runs``);
- ``catalog``: every published version with its kind, builder, parents, params and rows.

A table DuckDB cannot read (a column-less or damaged Parquet file) does not take the others
down: it is logged as skipped (one line) and its view raises an error naming it when queried.
"""
from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

from .core import Store

if TYPE_CHECKING:
    import duckdb
    import polars as pl

log = logging.getLogger(__name__)


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


def _define(con: "duckdb.DuckDBPyConnection", view: str, select: str, what: str) -> bool:
    """Create ``view``; when DuckDB cannot read it (a column-less or corrupt Parquet file in
    one version), log one line and define the view as an error naming ``what`` instead, so
    every other view, and every query not touching this one, still works."""
    import duckdb

    try:
        con.sql(f"CREATE VIEW {_ident(view)} AS {select}")
        return True
    except duckdb.Error as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason.removeprefix("Invalid Input Error: ")
        message = f"{what} is unreadable ({reason})"
        log.warning("skipped view %s: %s", view, message)
        # the view stays, as an error: a query naming it says why instead of "does not exist"
        failure = _quote(f"view {view} was skipped: {message}")
        con.sql(f"CREATE VIEW {_ident(view)} AS SELECT NULL AS unreadable WHERE error({failure}) IS NULL")
        return False


def connect(store: Store) -> "duckdb.DuckDBPyConnection":
    """An in-memory DuckDB connection with the store's views defined."""
    import duckdb
    import polars as pl

    store.location.require_existing()
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
            scan = _scan(store, store.table_uris(latest, table))
            if _define(con, view, f"SELECT * FROM {scan}", f"{latest.ref} table {table!r}"):
                kind_view = latest.kind if table == "data" else f"{latest.kind}__{table}"
                by_kind.setdefault(kind_view, []).append(
                    f"SELECT {_quote(name)} AS dataset, {_quote(latest.version)} AS version, * FROM {scan}")

    defined = {row[0] for row in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    for kind, parts in by_kind.items():
        view = view_name(kind)
        if view not in defined and view != "catalog":
            _define(con, view, " UNION ALL BY NAME ".join(parts), f"the {kind!r} view over all its datasets")

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
