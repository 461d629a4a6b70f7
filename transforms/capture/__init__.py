"""Reading a model's internals: decoder-layer discovery and component hook sites, the one hook
mechanism (register, always remove, stop early), pooled and per-token activation capture, and
live projections onto trait vectors during a forward pass.

Importing this package imports neither torch nor numpy (CLIs import it for ``--help``).
"""

from transforms.capture.activations import (
    IndexRow,
    TokenActs,
    capture_batch,
    capture_per_token,
    capture_pooled,
    iter_per_token,
    iter_pooled,
)
from transforms.capture.hooks import (
    Hook,
    StopForward,
    allow_stop,
    attached,
    hook_components,
    input_device,
    run_forward,
    stop_after,
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
from transforms.capture.spans import SpanItem, pad_batch, plan_spans, sorted_batches

__all__ = [
    "Hook",
    "IndexRow",
    "LiveProjector",
    "SpanItem",
    "StopForward",
    "TokenActs",
    "VectorStack",
    "allow_stop",
    "attached",
    "capture_batch",
    "capture_per_token",
    "capture_pooled",
    "component_module",
    "decoder_layers",
    "decoder_trunk",
    "first_tensor",
    "hook_components",
    "input_device",
    "iter_per_token",
    "iter_pooled",
    "model_dims",
    "pad_batch",
    "parse_layers",
    "plan_spans",
    "project",
    "run_forward",
    "score_rows",
    "sorted_batches",
    "stop_after",
]
