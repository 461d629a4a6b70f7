"""Circuit analysis on a loaded model: attention-head sites, the logit-difference metric,
activation and head patching (many targets per forward), head ablation, and the logit lens.

Names resolve lazily through ``_EXPORTS`` (public name -> defining module) so that importing
the package, as CLIs do for ``--help``, loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # sites: where a head's contribution lives
    "HeadSite": "transforms.circuits.sites",
    "check_heads": "transforms.circuits.sites",
    "head_shape": "transforms.circuits.sites",
    "head_site": "transforms.circuits.sites",
    # metric
    "logit_diff": "transforms.circuits.metrics",
    "normalise": "transforms.circuits.metrics",
    # activation / head patching
    "PATCH_COMPONENTS": "transforms.circuits.patching",
    "PatchSweep": "transforms.circuits.patching",
    "PatchTarget": "transforms.circuits.patching",
    "head_targets": "transforms.circuits.patching",
    "patch_sweep": "transforms.circuits.patching",
    "residual_targets": "transforms.circuits.patching",
    # head ablation
    "ABLATION_MODES": "transforms.circuits.ablation",
    "ablated_heads": "transforms.circuits.ablation",
    "head_means": "transforms.circuits.ablation",
    # logit lens
    "LensHead": "transforms.circuits.lens",
    "final_norm_and_unembed": "transforms.circuits.lens",
    "logit_lens": "transforms.circuits.lens",
    "span_logit_lens": "transforms.circuits.lens",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
