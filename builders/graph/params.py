"""Parameter types of stage kinds: each checks a catalog value and says what is wrong in one phrase.

A parameter's type is one of :data:`TYPES`. ``stage`` and ``stages`` take references to other
stages of the same experiment, written ``$name``; ``variant``, ``prompt_set`` and ``judges`` take
names the experiment (or the catalog) defines. No heavy imports: the catalog loads this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REF_PREFIX = "$"
TYPES = ("str", "int", "float", "bool", "ints", "floats", "strs", "layers", "variant", "prompt_set",
         "judges", "stage", "stages", "mapping")


@dataclass(frozen=True)
class Param:
    """One parameter of a stage kind. ``choices``: the allowed values of a ``str``."""

    type: str
    required: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""

    def __post_init__(self) -> None:
        assert self.type in TYPES, self.type


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIX) and len(value) > 1


def ref_name(value: str) -> str:
    return value[len(REF_PREFIX):]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value(param: Param, value: Any) -> str | None:
    """None when ``value`` fits ``param``; otherwise what is wrong, as a phrase."""
    kind = param.type
    if kind in ("str", "variant", "prompt_set", "judges"):
        if not isinstance(value, str) or is_ref(value):
            return f"expected a name, got {value!r}"
        if param.choices and value not in param.choices:
            return f"expected one of {', '.join(param.choices)}, got {value!r}"
        return None
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected an integer, got {value!r}"
    if kind == "float":
        return None if _is_number(value) else f"expected a number, got {value!r}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if kind == "ints":
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return None if ok else f"expected a list of integers, got {value!r}"
    if kind == "floats":
        return None if isinstance(value, list) and all(map(_is_number, value)) else f"expected a list of numbers, got {value!r}"
    if kind == "strs":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"expected a list of names, got {value!r}"
        bad = [v for v in value if param.choices and v not in param.choices]
        return f"expected some of {', '.join(param.choices)}, got {bad[0]!r}" if bad else None
    if kind == "layers":  # "all", "best", "6,8,10", 12 or [6, 8]
        if isinstance(value, int) and not isinstance(value, bool):
            return None
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return None
        return None if isinstance(value, str) and not is_ref(value) else f"expected layers (12, [6, 8], \"6-10\" or all), got {value!r}"
    if kind == "stage":
        return None if is_ref(value) else f"expected a stage reference ($name), got {value!r}"
    if kind == "stages":
        ok = isinstance(value, list) and value and all(is_ref(v) for v in value)
        return None if ok else f"expected a list of stage references ([$a, $b]), got {value!r}"
    if kind == "mapping":
        return None if isinstance(value, dict) else f"expected a mapping, got {value!r}"
    raise AssertionError(kind)


def layers_text(value: Any) -> str:
    """A ``layers`` value (12, [6, 8] or "6-10") as the command lines' ``--layers`` text."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def references(param: Param, value: Any) -> list[str]:
    """The stages a parameter value names."""
    if param.type == "stage":
        return [ref_name(value)]
    if param.type == "stages":
        return [ref_name(v) for v in value]
    return []
