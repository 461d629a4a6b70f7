"""Sparse dictionaries over activations: crosscoders (and, alongside, SAEs and latent statistics).

Names resolve lazily through ``_EXPORTS`` (public name -> defining module) so that importing
the package, as CLIs do for ``--help``, loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Alignment": "transforms.dictionaries.alignment",
    "latent_alignment": "transforms.dictionaries.alignment",
    "span_fraction": "transforms.dictionaries.alignment",
    "DictionaryError": "transforms.dictionaries.errors",
    "LatentActivationStats": "transforms.dictionaries.latents",
    "Tagging": "transforms.dictionaries.latents",
    "context_window": "transforms.dictionaries.latents",
    "dec_norm_diff": "transforms.dictionaries.latents",
    "decoder_table": "transforms.dictionaries.latents",
    "tag_latents": "transforms.dictionaries.latents",
    "LatentScaling": "transforms.dictionaries.scaling",
    "ScalingBetas": "transforms.dictionaries.scaling",
    "CrossCoder": "transforms.dictionaries.crosscoder",
    "KINDS": "transforms.dictionaries.crosscoder",
    "CheckpointError": "transforms.dictionaries.checkpoint",
    "check_width": "transforms.dictionaries.checkpoint",
    "load_crosscoder": "transforms.dictionaries.checkpoint",
    "save_crosscoder": "transforms.dictionaries.checkpoint",
    "TrainConfig": "transforms.dictionaries.training",
    "auxk_loss": "transforms.dictionaries.training",
    "TrainLogRow": "transforms.dictionaries.training",
    "TrainResult": "transforms.dictionaries.training",
    "encode_batches": "transforms.dictionaries.training",
    "input_scales": "transforms.dictionaries.training",
    "ScaleEstimate": "transforms.dictionaries.training",
    "train_crosscoder": "transforms.dictionaries.training",
    "FeatureScore": "transforms.dictionaries.sae",
    "HookInfo": "transforms.dictionaries.sae",
    "SAEFormatError": "transforms.dictionaries.sae",
    "SparseAutoencoder": "transforms.dictionaries.sae",
    "VectorDecomposition": "transforms.dictionaries.sae",
    "check_sae_width": "transforms.dictionaries.sae",
    "decompose_vector": "transforms.dictionaries.sae",
    "sae_from_crosscoder": "transforms.dictionaries.sae",
    "hook_info_from_folder": "transforms.dictionaries.sae_formats",
    "hook_info_from_name": "transforms.dictionaries.sae_formats",
    "load_sae": "transforms.dictionaries.sae_formats",
    "resolve_sae_folder": "transforms.dictionaries.sae_formats",
    "SAE_FILES": "transforms.dictionaries.sae_formats",
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
