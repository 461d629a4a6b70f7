"""DuckDB over the store: every dataset's latest version is a view named after it.

- ``<dataset>`` (non-identifier characters become ``_``): the main table of its latest
  version; other tables as ``<dataset>__<table>``;
- ``<kind>`` (e.g. ``responses``): all datasets of that kind, latest versions, unioned by
  column name, with ``dataset`` and ``version`` columns; ``<kind>__<table>`` likewise for
  other tables (e.g. ``steering__runs``);
- ``"<dataset>@<version or unique prefix>"`` (a quoted identifier, the dataset's name as it
  is): the main table of that pinned version; ``"<dataset>@<version>__<table>"`` another;
- ``catalog``: every published version with its kind, builder, parents, params and rows.

:func:`query` defines only the views its SQL names (table names from DuckDB's own parser,
``json_serialize_sql``), from the catalog index (:mod:`store.published`): a query about one
dataset reads a handful of files however many versions the store holds. SQL the parser
cannot take apart (not a SELECT) gets every view but the pinned ones, as :func:`connect`
without SQL does.

A table DuckDB cannot read (a column-less or damaged Parquet file) does not take the others
down: it is logged as skipped (one line) and its view raises an error naming it when queried.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .core import Store
from .errors import StoreError
from .index import Entry
from .published import Published
from .spec import NAME_RE

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


# schemas whose tables describe the database itself: a query over them wants every view
_META_SCHEMAS = {"information_schema", "pg_catalog"}


def referenced_tables(con: "duckdb.DuckDBPyConnection", sql: str) -> set[str] | None:
    """Table names ``sql`` reads, from DuckDB's parser (no binding, so nothing is opened);
    None when every view should be defined: not a SELECT, a syntax error (DuckDB reports it
    when the query runs), no table at all (``SHOW TABLES``, table functions) or a catalog
    schema."""
    import duckdb

    try:
        tree = json.loads(con.sql(f"SELECT json_serialize_sql({_quote(sql)})").fetchall()[0][0])
    except duckdb.Error:
        return None
    if tree.get("error"):
        return None
    found: set[str] = set()
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                if node.get("schema_name") in _META_SCHEMAS or node.get("catalog_name") in _META_SCHEMAS:
                    return None
                found.add(node["table_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found or None


def _uris(store: Store, entry: Entry, table: str) -> list[str]:
    return [store.location.uri(store.location.join(entry["dataset"], entry["version"], s))
            for s in entry["tables"][table]]


def _table_view(name: str, table: str) -> str:
    return view_name(name if table == "data" else f"{name}__{table}")


def _define_pinned(con: "duckdb.DuckDBPyConnection", store: Store, published: Published, view: str) -> None:
    """The view ``"<dataset>@<version prefix>[__<table>]"``, exactly as the query names it."""
    name, _, rest = view.partition("@")
    prefix, _, table = rest.partition("__")
    table = table or "data"
    if not NAME_RE.match(name) or not prefix:
        raise StoreError(f"bad pinned table {view!r}: expected <dataset>@<version>[__<table>]")
    entry = published.resolve(f"{name}@{prefix}")
    if table not in entry["tables"]:
        have = ", ".join(entry["tables"]) or "none"
        raise StoreError(f"{name}@{entry['version']} has no table {table!r} (tables: {have})")
    ref = f"{name}@{entry['version']}"
    _define(con, view, f"SELECT * FROM {_scan(store, _uris(store, entry, table))}", f"{ref} table {table!r}")


def _catalog_frame(published: Published) -> "pl.DataFrame":
    import polars as pl

    schema = {
        "dataset": pl.String, "version": pl.String, "kind": pl.String, "builder": pl.String,
        "code_version": pl.String, "created_at": pl.String, "is_latest": pl.Boolean,
        "parents": pl.List(pl.String), "params": pl.String, "rows": pl.Int64, "content_hash": pl.String,
    }
    rows = []
    for name in published.names():
        versions, latest = published.dataset(name)
        for entry in versions.values():
            rows.append({key: entry.get(key) for key in schema} | {"is_latest": entry["version"] == latest})
    return pl.DataFrame(rows, schema=schema)


@dataclass
class _Part:
    """One dataset table inside a kind view, and whether its own view was created (None:
    not tried, because the query does not name it)."""

    view: str
    scan: str
    what: str
    select: str
    readable: bool | None


def _define_datasets(con: "duckdb.DuckDBPyConnection", store: Store, published: Published,
                     used: "Callable[[str], bool]") -> dict[str, list[_Part]]:
    """Create the views of each dataset the query uses (latest version); return, per kind
    view the query uses, its readable (or not yet checked) parts."""
    by_kind: dict[str, list[_Part]] = {}
    for name in published.names():
        # from the index, before any listing: does the query touch this dataset at all?
        candidates = published.entries[name].values()
        tables = {t for e in candidates for t in e["tables"]}
        kinds = {e["kind"] for e in candidates}
        if not any(used(_table_view(name, t)) or any(used(_table_view(k, t)) for k in kinds) for t in tables):
            continue
        versions, latest_id = published.dataset(name)
        if latest_id is None:
            continue
        latest = versions[latest_id]
        for table in latest["tables"]:
            view, scan = _table_view(name, table), _scan(store, _uris(store, latest, table))
            what = f"{name}@{latest_id} table {table!r}"
            readable = _define(con, view, f"SELECT * FROM {scan}", what) if used(view) else None
            kind_view = _table_view(latest["kind"], table)
            if readable is not False and used(kind_view):
                select = f"SELECT {_quote(name)} AS dataset, {_quote(latest_id)} AS version, * FROM {scan}"
                by_kind.setdefault(kind_view, []).append(_Part(view, scan, what, select, readable))
    return by_kind


def _define_kind(con: "duckdb.DuckDBPyConnection", view: str, parts: list[_Part]) -> None:
    """The kind view over ``parts``. Tried at once (one bind for all its datasets); when
    DuckDB cannot read it, each part not checked yet gets its own view, which logs and
    leaves out the unreadable ones, as if every dataset view had been made first."""
    import duckdb

    try:
        con.sql(f"CREATE VIEW {_ident(view)} AS " + " UNION ALL BY NAME ".join(p.select for p in parts))
        return
    except duckdb.Error:
        pass
    good = [p for p in parts if p.readable or (p.readable is None and _define(con, p.view, f"SELECT * FROM {p.scan}", p.what))]
    if good:  # none readable: no kind view, as when every dataset view was skipped
        _define(con, view, " UNION ALL BY NAME ".join(p.select for p in good), f"the {view!r} view over all its datasets")


def connect(store: Store, sql: str | None = None, use_index: bool = True) -> "duckdb.DuckDBPyConnection":
    """An in-memory DuckDB connection with the store's views defined: those ``sql`` names,
    or (no ``sql``) every dataset, kind and ``catalog`` view. ``use_index=False`` reads every
    manifest instead of the catalog index (how it was done before; for comparisons)."""
    import duckdb

    store.location.require_existing()
    con = duckdb.connect()
    if not store.location.is_local:
        # DuckDB hands URLs of the registered protocols (s3://, s3a://, memory:// ...) to the
        # fsspec filesystem, before its own httpfs handling: no extension download needed, and
        # read_parquet stays lazy (footers, then only the column chunks a query needs, by range)
        con.register_filesystem(store.fs)
    named = None if sql is None else referenced_tables(con, sql)
    wanted = None if named is None else {n.lower() for n in named}
    published = Published(store, use_index)

    def used(view: str) -> bool:
        return wanted is None or view.lower() in wanted

    by_kind = _define_datasets(con, store, published, used)
    defined = {row[0] for row in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    for view, parts in by_kind.items():
        if view not in defined and view != "catalog" and used(view):
            _define_kind(con, view, parts)
    for view in sorted(named or ()):
        if "@" in view:
            _define_pinned(con, store, published, view)
    if used("catalog") and "catalog" not in defined:
        con.register("_catalog_frame", _catalog_frame(published))
        con.sql("CREATE VIEW catalog AS SELECT * FROM _catalog_frame")
    published.save_repairs()
    return con


def query(store: Store, sql: str, use_index: bool = True) -> "pl.DataFrame":
    con = connect(store, sql, use_index)
    return con.sql(sql).pl()
