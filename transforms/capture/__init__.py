"""Reading a model's internals: decoder-layer discovery and component hook sites, pooled and per-token
activation capture, and live projections onto trait vectors during a forward pass.
"""

from transforms.capture.activations import (
    IndexRow,
    capture_batch,
    capture_per_token,
    capture_pooled,
    hook_components,
    iter_per_token,
    iter_pooled,
    run_forward,
)
from transforms.capture.layers import (
    component_module,
    decoder_layers,
    decoder_trunk,
    first_tensor,
    model_dims,
    parse_layers,
)
from transforms.capture.live_projections import (
    LiveProjector,
    VectorStack,
    project,
    score_rows,
)

__all__ = [
    "IndexRow",
    "LiveProjector",
    "VectorStack",
    "capture_batch",
    "capture_per_token",
    "capture_pooled",
    "component_module",
    "decoder_layers",
    "decoder_trunk",
    "first_tensor",
    "hook_components",
    "iter_per_token",
    "iter_pooled",
    "model_dims",
    "parse_layers",
    "project",
    "run_forward",
    "score_rows",
]
