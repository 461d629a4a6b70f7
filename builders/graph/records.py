"""Stage records: which store versions a stage produced at a given key, kept in the store.

A record is a small dataset ``stage-<experiment>-<stage>`` whose version id is a hash of the
stage key alone, so a planner finds it without knowing the outputs; its summary lists the
outputs' references and its ``data`` table the same rows for SQL (``SELECT * FROM
"stage-demo-search"``). A record is written only after its stage finished, so a killed run
leaves none and the rerun builds the stage again (the stage's own builders resume their
finished units). A record whose outputs were since deleted counts as not done.
"""
from __future__ import annotations

from typing import Any

from store import BuildSpec, Manifest, Store

RECORD_KIND = "stage-record"
RECORD_BUILDER = "builders.run"
RECORD_FORMAT = "1"


def record_name(experiment: str, stage: str) -> str:
    return f"stage-{experiment}-{stage}"


def record_spec(experiment: str, stage: str, kind: str, key: str) -> BuildSpec:
    return BuildSpec(name=record_name(experiment, stage), kind=RECORD_KIND, builder=RECORD_BUILDER,
                     code_version=RECORD_FORMAT, params={"experiment": experiment, "stage": stage, "kind": kind,
                                                         "key": key}, parents={}, identity={})


def recorded_outputs(store: Store, experiment: str, stage: str, kind: str, key: str) -> list[str] | None:
    """The references the stage produced at ``key``, or None when it is not done (no record,
    or an output no longer in the store)."""
    spec = record_spec(experiment, stage, kind, key)
    manifest = store.read_manifest(spec.name, spec.version)
    if manifest is None:
        return None
    refs = list(manifest.summary.get("outputs", []))
    for ref in refs:
        name, _, version = ref.partition("@")
        if not store.has_version(name, version):
            return None
    return refs


def write_record(store: Store, experiment: str, stage: str, kind: str, key: str,
                 outputs: list[tuple[Manifest, bool | None]], seconds: float) -> Manifest:
    """Record a finished stage (replacing an older record at the same key)."""
    refs = [m.ref for m, _ in outputs]

    def produce(writer: Any) -> None:
        writer.write_table([{"stage": stage, "kind": kind, "key": key, "output": m.ref, "output_dataset": m.name,
                             "built": bool(built)} for m, built in outputs] or
                           [{"stage": stage, "kind": kind, "key": key, "output": None, "output_dataset": None,
                             "built": False}])
        writer.summary.update(outputs=refs, seconds=round(seconds, 1))

    return store.build(record_spec(experiment, stage, kind, key), produce, force=True).manifest
