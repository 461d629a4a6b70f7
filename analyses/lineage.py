"""Inputs of an analysis, pinned: each version it reads is resolved once, recorded as a
parent and then read exactly (never a second ``latest`` lookup, never a store-wide view of
whatever is latest when the query runs)."""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from builders.shared import names
from store import Manifest, Store

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)


# parents that are instruments applied to the data, not where its tokens came from: a
# search through them would find the responses the vectors were extracted from
NOT_DATA = ("vectors", "steering")


def _data_parents(manifest: Manifest) -> dict[str, str]:
    return {k: ref for k, ref in manifest.parents.items() if not k.startswith(NOT_DATA)}


def ancestor(store: Store, manifest: Manifest, name: str) -> Manifest | None:
    """The nearest version of dataset ``name`` in the lineage of ``manifest``'s tokens
    (breadth first, through data parents only: never through vectors or steering runs)."""
    seen, frontier = {manifest.ref}, [manifest]
    while frontier:
        parents = [p for m in frontier
                   for p in store.parents(dataclasses.replace(m, parents=_data_parents(m)))
                   if p.ref not in seen]
        for parent in parents:
            if parent.name == name:
                return parent
        seen.update(p.ref for p in parents)
        frontier = parents
    return None


def prompts_of(store: Store, projections: Manifest) -> Manifest | None:
    """The prompt set version the projections' tokens came from (its lineage); for a
    projections version without lineage, the latest version of its prompt set, if any."""
    name = names.prompts(str(projections.params.get("prompt_set")))
    found = ancestor(store, projections, name)
    if found is None and name in store.datasets():
        found = store.latest(name)
        log.info("%s records no prompt set: using the latest, %s", projections.ref, found.ref)
    return found


def judgments_of(store: Store, projections: Manifest) -> Manifest | None:
    """The judgments of exactly the responses the projections scored: the latest version of
    ``judgments-<experiment>-<variant>-<set>`` when it judged them, else the newest one that
    did, else None (live projections generate their own responses: nothing judged them)."""
    p = projections.params
    if p.get("live"):
        return None
    of = (str(p.get("experiment")), str(p.get("variant")), str(p.get("prompt_set")))
    name = names.judgments(*of)
    responses = ancestor(store, projections, names.responses(*of))
    if responses is None or name not in store.datasets():
        return None
    latest = store.latest(name)
    if latest.parents.get("responses") == responses.ref:
        return latest
    matching = [m for m in store.versions(name) if m.parents.get("responses") == responses.ref]
    if not matching:
        log.warning("%s judged %s, not %s (the responses of %s): no trait scores joined", latest.ref,
                    latest.parents.get("responses"), responses.ref, projections.ref)
        return None
    return matching[-1]


def pinned_connection(store: Store, views: dict[str, Manifest]) -> "duckdb.DuckDBPyConnection":
    """A DuckDB connection with one view per ``{view name: version}``, each over that
    version's main table only."""
    import duckdb

    con = duckdb.connect()
    if not store.location.is_local:  # read_parquet of s3:// etc. through the store's fsspec filesystem
        con.register_filesystem(store.fs)
    for view, manifest in views.items():
        uris = ", ".join("'" + u.replace("'", "''") + "'" for u in store.table_uris(manifest))
        con.sql(f'CREATE VIEW "{view}" AS SELECT * FROM read_parquet([{uris}], union_by_name=true)')
    return con
