"""Steering a model with trait vectors (add or ablate at decoder-block outputs) while it generates, and
the per-layer coefficient search.
"""

from transforms.steering.search import (
    AdaptiveSearch,
    coefficient_grid,
    perturbation_ratio,
    searches_from_norms,
    start_coefficient,
)
from transforms.steering.steer import (
    Edit,
    POSITIONS,
    RowEdit,
    SteeringConfig,
    combine_vectors,
    generate_steered,
    mean_residual_norms,
    steer,
)

__all__ = [
    "AdaptiveSearch",
    "Edit",
    "POSITIONS",
    "RowEdit",
    "SteeringConfig",
    "coefficient_grid",
    "combine_vectors",
    "generate_steered",
    "mean_residual_norms",
    "perturbation_ratio",
    "searches_from_norms",
    "start_coefficient",
    "steer",
]
