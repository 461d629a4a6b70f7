"""Parameters of a stage kind read off a builder's options dataclass, so the two never drift."""
from __future__ import annotations

import dataclasses
from typing import Any

from builders.graph.params import Param

_BY_ANNOTATION = {"str": "str", "int": "int", "float": "float", "bool": "bool"}


def param_type(annotation: Any) -> str:
    text = str(annotation).replace(" ", "")
    base = text.replace("|None", "").replace("Optional[", "").rstrip("]") if "None" in text else text
    if base in _BY_ANNOTATION:
        return _BY_ANNOTATION[base]
    if base.startswith(("tuple[str", "list[str")):
        return "strs"
    if base.startswith(("tuple[int", "list[int")):
        return "ints"
    if base.startswith(("tuple[float", "list[float")):
        return "floats"
    raise TypeError(f"no stage parameter type for {annotation!r}")


def options_params(options_cls: type, skip: tuple[str, ...] = ()) -> dict[str, Param]:
    """One optional parameter per field of ``options_cls`` (its default applies when absent)."""
    return {f.name: Param(param_type(f.type), help=f"{options_cls.__name__}.{f.name}")
            for f in dataclasses.fields(options_cls) if f.name not in skip}


def make_options(options_cls: type, params: dict[str, Any]) -> Any:
    """``options_cls`` from the stage parameters that are its fields (lists become tuples)."""
    names = {f.name for f in dataclasses.fields(options_cls)}
    return options_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names})
