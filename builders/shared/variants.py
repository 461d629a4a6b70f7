"""A catalog variant at run time: its model, plus a LoRA adapter when the variant names one.

``adapter:`` in the catalog is a store reference to a :mod:`builders.finetune` version (its
``adapter/`` folder) or a local PEFT adapter folder. For generation and capture the adapter
is merged into a copy of the base model (the cached base stays untouched); the weight
analysis reads it unmerged (:class:`transforms.diffing.LoraAdapter`). Base and adapted
models share the process's one model cache (:data:`transforms.models.MODEL_CACHE`).

``quantization:`` (:mod:`transforms.models.quantization`) loads the model quantized; with an
adapter (torchao only, the catalog refuses bitsandbytes) the adapter is merged into the
full-precision copy first and the merged model quantized.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store import Store

from builders.shared.catalog import Variant
from builders.shared.common import BuildError, cached_model, placement

if TYPE_CHECKING:
    from transforms.models import LoadedModel, ModelKey

log = logging.getLogger(__name__)


def check_runs(variant: Variant) -> tuple[str, str]:
    """``(device, dtype)`` the variant runs in on this machine; a one-line error first when it
    cannot run here (a device this machine lacks, a quantization method that needs CUDA).
    Builders call it before any work, so a refused run publishes nothing."""
    from transforms.models import check_supported

    where, dtype = placement(variant.device, variant.dtype)
    check_supported(variant.quantization, where, dtype, variant=variant.name)
    return where, dtype


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


#: PEFT config fields that are sets: peft writes them in the process's set order, which
#: changes with PYTHONHASHSEED, so the same adapter would get a new identity every run
_SET_FIELDS = ("target_modules", "modules_to_save", "layers_to_transform", "exclude_modules")


def canonical_adapter_config(config: dict[str, Any]) -> bytes:
    """``adapter_config.json`` bytes that depend on the config only: set-valued fields
    sorted, keys sorted."""
    import json

    fixed = {k: sorted(v) if k in _SET_FIELDS and isinstance(v, list) else v for k, v in config.items()}
    return (json.dumps(fixed, indent=2, sort_keys=True) + "\n").encode()


def adapter_fingerprint(folder: Path) -> str:
    """sha256 of the adapter's config (canonical, see :func:`canonical_adapter_config`) and
    weights (adapters are small: hash the bytes)."""
    import json

    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            data = path.read_bytes()
            if path.name == "adapter_config.json":
                data = canonical_adapter_config(json.loads(data))
            digest.update(path.name.encode() + b"\0" + data)
    return digest.hexdigest()[:16]


def adapter_identity(store: Store | None, variant: Variant) -> str | None:
    folder = adapter_dir(store, variant)
    return None if folder is None else adapter_fingerprint(folder)


def variant_model(store: Store | None, variant: Variant) -> Any:
    """The variant's :class:`~transforms.models.LoadedModel` (adapter merged into a copy,
    then quantized when the variant says so)."""
    spec = variant.quantization
    folder = adapter_dir(store, variant)
    if spec is not None:
        check_runs(variant)  # before loading the full-precision base for a merge
    base = cached_model(variant.model.id, variant.model.revision, device=variant.device, dtype=variant.dtype,
                        device_map=variant.device_map, quantization=spec if folder is None else None)
    if folder is None:
        return base
    from transforms.models import MODEL_CACHE, ModelKey

    key = ModelKey(variant.model.id, variant.model.revision, base.device, base.dtype, variant.device_map,
                   None if spec is None else spec.label, adapter=adapter_fingerprint(folder))
    return MODEL_CACHE.get(key, lambda: _merged(variant, base, folder, key))


def _merged(variant: Variant, base: LoadedModel, folder: Path, key: ModelKey) -> LoadedModel:
    """A copy of ``base`` with the adapter in ``folder`` merged in (then quantized when the
    variant says so), as a LoadedModel named after the adapter."""
    import copy
    import dataclasses
    import warnings

    from peft import PeftModel

    spec = variant.quantization
    with warnings.catch_warnings():  # transformers deprecation noise from inside peft
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder)).merge_and_unload().eval()
    if spec is not None:
        from transforms.models import quantize

        quantize(model, spec)
    log.info("variant %s: %s with adapter %s merged into a copy", variant.name, base.model_id, folder)
    return dataclasses.replace(base, model=model, model_id=f"{base.model_id}+adapter:{key.adapter}",
                               quantization=None if spec is None else spec.label)
