"""``experiments.NAME.stages`` and ``experiments.NAME.judges``: parsed and checked on load.

    stages:
      vec_inst:  {kind: vectors, prompt_set: sycophancy_instruction, variant: instruct,
                  position: "response[:]", methods: [mean_diff, probe]}
      coarse:    {kind: steering, vectors: $vec_inst, method: probe, layers: "9-19", judges: main}
      fine:      {kind: steering, vectors: $vec_inst, method: probe, around: $coarse}

A value ``$name`` refers to another stage's output (its first dataset); a choice made from a
result (a finer grid around a search's coherence cliff, combinations from the best singles)
is a parameter that refers to the stage whose result it reads. Every error is one line naming
the stage and field: an unknown kind or parameter, a missing reference, a cycle, a wrong type.

A ``matrix`` declares one stage per combination of its values, named ``name.value1.value2``,
with ``{key}`` in any string replaced by the combination's value; ``$name.*`` in a list of
references means every stage of that matrix::

      search: {kind: steering, matrix: {source: [inst, nat5], method: [mean_diff, probe]},
               vectors: $vec.{source}, method: "{method}"}
      tables: {kind: steering_analysis, after: [$search.*]}
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Callable

from builders.graph.params import Param, check_value, references

JUDGE_KEYS = {"trait", "coherence", "model", "reference", "openai_mode", "allow_uncalibrated", "note"}
MATRIX_VALUE = re.compile(r"^[A-Za-z0-9_-]+$")  # a matrix value becomes part of a stage name


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: str
    params: dict[str, Any]  # as written, references still ``$name``
    needs: tuple[str, ...]  # stages it reads or waits for, in first-mention order


class SpecError(Exception):
    """A stage declaration that cannot be run; ``where`` names the key path."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


def parse_judges(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    """Named judge choices (``{trait, coherence, reference?, model?}``) stages refer to by name."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(where, f"expected a mapping of judge choices, got {type(raw).__name__}")
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise SpecError(f"{where}.{name}", f"expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - JUDGE_KEYS
        if unknown:
            raise SpecError(f"{where}.{name}.{sorted(unknown)[0]}",
                            f"unknown key (known: {', '.join(sorted(JUDGE_KEYS - {'note'}))})")
        out[str(name)] = {k: v for k, v in entry.items() if k != "note"}
    return out


def parse_stages(raw: Any, where: str, names: dict[str, set[str]],
                 kinds: dict[str, Any] | None = None) -> dict[str, StageSpec]:
    """Stages in dependency order. ``names`` holds what name-typed parameters may take:
    ``variant``, ``prompt_set`` and ``judges``."""
    from builders.graph.kinds import common_params, registry

    kinds = registry() if kinds is None else kinds
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(where, f"expected a mapping of stages, got {type(raw).__name__}")
    raw = expand_globs(expand_matrices(raw, where), where)
    stages = {}
    for name, entry in raw.items():
        swhere = f"{where}.{name}"
        if not isinstance(entry, dict):
            raise SpecError(swhere, f"expected a mapping with a kind, got {type(entry).__name__}")
        kind_name = entry.get("kind")
        if kind_name is None:
            raise SpecError(f"{swhere}.kind", "missing (every stage names its kind)")
        if kind_name not in kinds:
            raise SpecError(f"{swhere}.kind", f"unknown stage kind {kind_name!r} (known: {', '.join(sorted(kinds))})")
        kind = kinds[kind_name]
        allowed: dict[str, Param] = {**kind.params, **common_params()}
        params = {k: v for k, v in entry.items() if k not in ("kind", "note")}
        needs: list[str] = []
        for key, value in params.items():
            if key not in allowed:
                raise SpecError(f"{swhere}.{key}",
                                f"unknown parameter of a {kind_name} stage (known: {', '.join(allowed)})")
            param = allowed[key]
            problem = check_value(param, value)
            if problem:
                raise SpecError(f"{swhere}.{key}", problem)
            if param.type in names and value not in names[param.type]:
                known = ", ".join(sorted(names[param.type])) or "none"
                raise SpecError(f"{swhere}.{key}", f"unknown {param.type.replace('_', ' ')} {value!r} (known: {known})")
            needs += [n for n in references(param, value) if n not in needs]
        for key, param in kind.params.items():
            if param.required and key not in params:
                raise SpecError(f"{swhere}.{key}", f"missing (a {kind_name} stage needs it)")
        stages[str(name)] = StageSpec(str(name), kind_name, params, tuple(needs))
    for spec in stages.values():
        for need in spec.needs:
            if need not in stages:
                key = next(k for k, v in spec.params.items() if f"${need}" in (v if isinstance(v, list) else [v]))
                raise SpecError(f"{where}.{spec.name}.{key}",
                                f"reference to a missing stage ${need} (stages: {', '.join(stages)})")
    return {name: stages[name] for name in topological_order(stages, lambda cycle: SpecError(
        f"{where}.{cycle[0]}", "cycle: " + " -> ".join(f"${n}" for n in cycle)))}


def _substitute(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, val in values.items():
            value = value.replace("{" + key + "}", val)
        return value
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


def expand_matrices(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Each stage with a ``matrix`` becomes one stage per combination of its values."""
    out: dict[str, Any] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "matrix" not in entry:
            out[str(name)] = entry
            continue
        matrix = entry["matrix"]
        mwhere = f"{where}.{name}.matrix"
        if not isinstance(matrix, dict) or not matrix:
            raise SpecError(mwhere, "expected a mapping of key -> list of values")
        for key, values in matrix.items():
            if not isinstance(values, list) or not values:
                raise SpecError(f"{mwhere}.{key}", f"expected a non-empty list, got {values!r}")
            bad = [v for v in values if not MATRIX_VALUE.match(str(v))]
            if bad:
                raise SpecError(f"{mwhere}.{key}", f"{bad[0]!r}: values become stage names (letters, digits, _ -)")
        body = {k: v for k, v in entry.items() if k != "matrix"}
        for combo in itertools.product(*matrix.values()):
            values = {k: str(v) for k, v in zip(matrix, combo)}
            out[".".join([str(name), *values.values()])] = {k: _substitute(v, values) for k, v in body.items()}
    return out


def expand_globs(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """``$name.*`` inside a list: every stage named ``name.<anything>``, in declaration order."""
    def expand(value: Any, swhere: str) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, str) and item.startswith("$") and item.endswith(".*"):
                prefix = item[1:-1]
                matches = [f"${n}" for n in raw if n.startswith(prefix)]
                if not matches:
                    raise SpecError(swhere, f"{item} matches no stage")
                out += matches
            else:
                out.append(item)
        return out

    return {name: {k: expand(v, f"{where}.{name}.{k}") for k, v in entry.items()} if isinstance(entry, dict) else entry
            for name, entry in raw.items()}


def topological_order(stages: dict[str, StageSpec], on_cycle: Callable[[list[str]], Exception]) -> list[str]:
    """Declaration order, except that a stage comes after everything it needs."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise on_cycle(path[path.index(name):] + [name])
        state[name] = 1
        for need in stages[name].needs:
            visit(need, path + [name])
        state[name] = 2
        order.append(name)

    for name in stages:
        visit(name, [])
    return order
