"""The registry of stage kinds an experiment may declare.

A :class:`Kind` names its parameters (:class:`~builders.graph.params.Param`), the function that
runs it (``run(ctx, params) -> [(manifest, built), ...]``, the first output being the one a
``$reference`` to the stage means), an optional cost estimate, and which catalog facts enter its
plan key. Kinds live in the modules of this package by area; their runners import the stage
code only when called, so loading the catalog stays light.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from builders.graph.params import Param

if TYPE_CHECKING:
    from builders.graph.costs import Cost, CostContext
    from builders.graph.execute import RunContext

Output = tuple[Any, "bool | None"]  # (manifest, built: False when it was up to date)


@dataclass(frozen=True)
class Kind:
    name: str
    help: str
    params: dict[str, Param]
    run: Callable[["RunContext", dict[str, Any]], list[Output]]
    cost: Callable[["CostContext", dict[str, Any]], "Cost | None"] | None = None
    # catalog facts outside its parameters that its outputs depend on
    uses_application: bool = False  # the experiment's application variant (steering's default)
    uses_generation: bool = True  # the catalog's responses defaults
    version: int = 1  # bump when the runner's meaning changes: every plan key of the kind changes


def common_params() -> dict[str, Param]:
    """Parameters every kind takes: ordering without data flow."""
    return {"after": Param("stages", help="stages to run first (no data passed)")}


_REGISTRY: dict[str, Kind] = {}


def registry() -> dict[str, Kind]:
    """Every stage kind by name (imports the kind modules once; they are light)."""
    if not _REGISTRY:
        from builders.graph.kinds import analyses, circuits, diffing, generation, steering

        for module in (generation, steering, diffing, circuits, analyses):
            for kind in module.KINDS:
                assert kind.name not in _REGISTRY, kind.name
                _REGISTRY[kind.name] = kind
    return _REGISTRY


def describe() -> str:
    """Each kind with its parameters (* = required), one line each."""
    lines = []
    for name, kind in sorted(registry().items()):
        params = ", ".join(f"{p}{'*' if spec.required else ''}" for p, spec in kind.params.items())
        lines.append(f"  {name:<18} {kind.help} [{params}]")
    return "\n".join(lines)
