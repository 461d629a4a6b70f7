"""A catalog variant at run time: its model, plus a LoRA adapter when the variant names one.

``adapter:`` in the catalog is a store reference to a :mod:`builders.finetune` version (its
``adapter/`` folder) or a local PEFT adapter folder. For generation and capture the adapter
is merged into a copy of the base model (the cached base stays untouched); the weight
analysis reads it unmerged (:class:`transforms.weight_diff.LoraAdapter`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from store import Store

from .catalog import Variant
from .common import BuildError, cached_model

log = logging.getLogger(__name__)

_ADAPTED: dict[tuple[str, str | None, str, str, str], Any] = {}


def adapter_dir(store: Store | None, variant: Variant) -> Path | None:
    """The variant's adapter folder, or None for a plain model."""
    if not variant.adapter:
        return None
    local = Path(variant.adapter).expanduser()
    if local.is_dir():
        return local
    if store is None:
        raise BuildError(f"variant {variant.name!r}: adapter {variant.adapter!r} is a store reference; no store given")
    try:
        manifest = store.resolve(variant.adapter)
    except Exception:
        raise BuildError(f"variant {variant.name!r}: adapter {variant.adapter!r} is neither a folder nor a built "
                         f"dataset; build it first (python -m builders.finetune ...)") from None
    return store.local_dir(manifest, "adapter")  # object stores: a verified local download


def adapter_fingerprint(folder: Path) -> str:
    """sha256 of the adapter's config and weights (adapters are small: hash the bytes)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def adapter_identity(store: Store | None, variant: Variant) -> str | None:
    folder = adapter_dir(store, variant)
    return None if folder is None else adapter_fingerprint(folder)


def variant_model(store: Store | None, variant: Variant) -> Any:
    """The variant's :class:`~transforms.models.LoadedModel` (adapter merged into a copy)."""
    base = cached_model(variant.model.id, variant.model.revision, device=variant.device, dtype=variant.dtype,
                        device_map=variant.device_map)
    folder = adapter_dir(store, variant)
    if folder is None:
        return base
    key = (variant.model.id, variant.model.revision, base.device, base.dtype, adapter_fingerprint(folder))
    if key not in _ADAPTED:
        import copy
        import dataclasses
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # transformers deprecation noise from inside peft
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder)).merge_and_unload().eval()
        if len(_ADAPTED) >= 2:
            _ADAPTED.pop(next(iter(_ADAPTED)))
        _ADAPTED[key] = dataclasses.replace(base, model=model, model_id=f"{base.model_id}+adapter:{key[-1]}")
        log.info("variant %s: %s with adapter %s merged into a copy", variant.name, base.model_id, folder)
    return _ADAPTED[key]
