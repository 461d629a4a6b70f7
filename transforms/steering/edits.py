"""Steering edits: what to change (add ``coef * v`` or ablate ``v``), where (layer, positions,
rows), and sets of edits applied together. The conventions are in :mod:`transforms.steering.apply`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Positions = Literal["response", "generated", "prompt", "all"]
EditKind = Literal["add", "ablate"]
POSITIONS: tuple[str, ...] = ("response", "generated", "prompt", "all")  # the default first
EDIT_KINDS: tuple[str, ...] = ("add", "ablate")


def _as_vector(vector: Any) -> torch.Tensor:
    import torch

    vec = vector.detach() if isinstance(vector, torch.Tensor) else torch.as_tensor(vector)
    if vec.ndim != 1 or vec.numel() == 0:
        raise ValueError(f"steering vector must be 1-D [d_model], got shape {tuple(vec.shape)}")
    vec = vec.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(vec).all():
        raise ValueError("steering vector has non-finite values")
    return vec


@dataclass(frozen=True, eq=False)
class Edit:
    """One edit at decoder layer ``layer``: ``add`` ``coef * vector_D`` or ``ablate`` the
    direction of ``vector_D``, at ``positions`` (``response`` | ``generated`` | ``prompt`` |
    ``all``, see :mod:`transforms.steering.apply`)."""

    layer: int
    vector_D: Any  # torch.Tensor | np.ndarray | list[float]; stored as a float32 CPU tensor
    coef: float = 1.0
    positions: Positions = "response"
    kind: EditKind = "add"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}: expected one of {', '.join(POSITIONS)}")
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"unknown edit kind {self.kind!r}: expected one of {', '.join(EDIT_KINDS)}")
        if not isinstance(self.layer, int) or self.layer < 0:  # (numpy ints: pass int(k))
            raise ValueError(f"layer must be an int >= 0, got {self.layer!r}")
        vec = _as_vector(self.vector_D)
        if self.kind == "ablate" and float(vec.norm()) == 0.0:
            raise ValueError(f"cannot ablate a zero vector (layer {self.layer})")
        object.__setattr__(self, "vector_D", vec)
        object.__setattr__(self, "coef", float(self.coef))

    def describe(self) -> str:
        what = f"{self.coef:+.4g}*v" if self.kind == "add" else "ablate"
        return f"L{self.layer}:{what}@{self.positions}"


@dataclass(frozen=True, eq=False)
class RowEdit:
    """``edit`` restricted to batch rows ``[start, end)``."""

    start: int
    end: int
    edit: Edit

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad row range [{self.start}, {self.end})")


@dataclass(frozen=True, eq=False)
class SteeringConfig:
    """A set of edits applied together (one configuration of a sweep); no edits = baseline."""

    edits: tuple[Edit, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "edits", tuple(self.edits))
        if not all(isinstance(e, Edit) for e in self.edits):
            raise TypeError("SteeringConfig.edits must be Edit objects")

    @classmethod
    def single(cls, layer: int, vector_D: Any, coef: float, positions: Positions = "response",
               label: str = "") -> SteeringConfig:
        return cls((Edit(layer, vector_D, coef, positions),), label)

    @classmethod
    def multi(cls, parts: Sequence[tuple[int, Any, float]], positions: Positions = "response",
              label: str = "") -> SteeringConfig:
        """Several layers at once, e.g. the two-layer ensemble ``[(lx, v_nat, c/2), (ly, v_inst, c/2)]``."""
        return cls(tuple(Edit(layer, vec, coef, positions) for layer, vec, coef in parts), label)

    def describe(self) -> str:
        return self.label or (" + ".join(e.describe() for e in self.edits) or "baseline")


def combine_vectors(vectors: Sequence[Any], *, unit_inputs: bool = True) -> torch.Tensor:
    """Sum of ``vectors`` (each first scaled to unit norm when ``unit_inputs``), scaled to
    unit norm: the "combined" direction of two sources, steered with a coefficient sweep."""
    vecs = [_as_vector(v) for v in vectors]
    if not vecs:
        raise ValueError("combine_vectors needs at least one vector")
    total = sum((v / v.norm() if unit_inputs else v) for v in vecs)
    norm = float(total.norm())
    if norm == 0.0:
        raise ValueError("combined vector is zero (opposite inputs?)")
    return total / norm
