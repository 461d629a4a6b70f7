"""Steering a model with trait vectors (add or ablate at decoder-block outputs) while it generates, and
the per-layer coefficient search.

Modules: ``edits`` (what to change), ``apply`` (the :func:`steer` context: hooks and position
masks, conventions in its docstring), ``generate`` (batched sweeps), ``norms`` (residual norms),
``search`` (coefficient search), ``clamp`` (clamping dictionary latents while generating).
Importing this package imports neither torch nor numpy.
"""

from transforms.steering.apply import SteeringHandle, position_hook, steer
from transforms.steering.clamp import (
    CLAMP_MODES,
    Clamp,
    ClampConfig,
    LatentDictionary,
    RowClamp,
    clamp_latents,
    generate_clamped,
)
from transforms.steering.edits import (
    EDIT_KINDS,
    POSITIONS,
    Edit,
    RowEdit,
    SteeringConfig,
    combine_vectors,
)
from transforms.steering.generate import generate_steered
from transforms.steering.norms import mean_residual_norms
from transforms.steering.search import (
    AdaptiveSearch,
    coefficient_grid,
    perturbation_ratio,
    searches_from_norms,
    start_coefficient,
)

__all__ = [
    "AdaptiveSearch",
    "CLAMP_MODES",
    "Clamp",
    "ClampConfig",
    "EDIT_KINDS",
    "Edit",
    "LatentDictionary",
    "POSITIONS",
    "RowClamp",
    "RowEdit",
    "SteeringConfig",
    "SteeringHandle",
    "clamp_latents",
    "coefficient_grid",
    "combine_vectors",
    "generate_clamped",
    "generate_steered",
    "mean_residual_norms",
    "perturbation_ratio",
    "position_hook",
    "searches_from_norms",
    "start_coefficient",
    "steer",
]
