"""Pure planning: a key per stage, and what a run must build.

A stage's key hashes its kind (and the kind's version), its parameters with every reference
replaced by the referenced stage's key, and the catalog facts its outputs depend on (model ids,
prompt-set contents, judges, generation defaults: ``facts``). So a changed parameter changes the
key of exactly that stage and of everything downstream of it, and a stage whose key the store
has recorded is up to date. No I/O here: the store's records come in as ``done``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from store.hashing import canonical_json, sha256_text

from builders.graph.params import is_ref, ref_name
from builders.graph.spec import StageSpec

KEY_LENGTH = 16
UP_TO_DATE, BUILD, NOT_SELECTED = "up to date", "build", "not selected"


@dataclass(frozen=True)
class PlanEntry:
    stage: str
    kind: str
    key: str
    action: str  # UP_TO_DATE | BUILD | NOT_SELECTED


class PlanError(Exception):
    """A selection that cannot be planned (``--only`` a stage whose inputs are not built)."""


def _with_keys(value: Any, keys: dict[str, str]) -> Any:
    if is_ref(value):
        return {"stage_key": keys[ref_name(value)]}
    if isinstance(value, list):
        return [_with_keys(v, keys) for v in value]
    return value


def stage_keys(stages: dict[str, StageSpec], versions: dict[str, int],
               facts: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """Each stage's key; ``stages`` in dependency order (as :func:`parse_stages` returns them).
    The stage's own name is not part of it: renaming a stage keeps its work."""
    keys: dict[str, str] = {}
    for name, spec in stages.items():
        params = {k: _with_keys(v, keys) for k, v in spec.params.items() if k != "after"}
        waits = sorted(keys[ref_name(v)] for v in spec.params.get("after", []))
        body = {"kind": spec.kind, "version": versions.get(spec.kind, 1), "params": params, "after": waits,
                "facts": (facts or {}).get(name, {})}
        keys[name] = sha256_text(canonical_json(body))[:KEY_LENGTH]
    return keys


def ancestors(stages: dict[str, StageSpec], name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for need in stages[todo.pop()].needs:
            if need not in seen:
                seen.add(need)
                todo.append(need)
    return seen


def descendants(stages: dict[str, StageSpec], names: Iterable[str]) -> set[str]:
    """Every stage that reads (directly or not) one of ``names``."""
    found = set(names)
    for name, spec in stages.items():  # dependency order: one pass suffices
        if any(n in found for n in spec.needs):
            found.add(name)
    return found - set(names)


def plan(stages: dict[str, StageSpec], keys: dict[str, str], done: set[str], *,
         until: str | None = None, only: str | None = None, force: bool = False) -> list[PlanEntry]:
    """What to do with each stage. ``done``: the stages whose current key the store records.
    ``until``: that stage and what it needs; ``only``: that stage alone (its inputs must be
    built); ``force``: rebuild the selected stages even when up to date."""
    for flag, name in (("--until", until), ("--only", only)):
        if name is not None and name not in stages:
            raise PlanError(f"{flag}: unknown stage {name!r} (stages: {', '.join(stages)})")
    if until is not None:
        selected = ancestors(stages, until) | {until}
    elif only is not None:
        missing = [n for n in stages[only].needs if n not in done]
        if missing:
            raise PlanError(f"--only {only}: it needs {', '.join('$' + n for n in missing)}, which the store does "
                            f"not have at the current parameters (run --until {only})")
        selected = {only}
    else:
        selected = set(stages)
    entries = []
    for name, spec in stages.items():
        if name not in selected:
            action = NOT_SELECTED
        elif name in done and not force:
            action = UP_TO_DATE
        else:
            action = BUILD
        entries.append(PlanEntry(name, spec.kind, keys[name], action))
    return entries
