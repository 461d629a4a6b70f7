"""Where a model's files come from: packaged checkpoints, local directories, the hub.

* ``pkg:<name>`` -- converted once into the model cache (:mod:`transforms.models.packaged`).
* a local directory holding a ``from_pretrained`` checkpoint -- used as it is.
* anything else is a Hugging Face hub id. If it is already in the local Hugging Face cache
  it is loaded from there without touching the network; otherwise ``from_pretrained``
  downloads it, unless ``HF_HUB_OFFLINE`` is set, which makes it a :class:`ModelLoadError`
  at once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from transforms.models.refs import ModelLoadError, ModelRef, _as_ref, ref_kind
from transforms.models.packaged import _ensure_pkg_checkpoint, _packaged


def resolve_checkpoint(ref: ModelRef | str) -> str:
    """What ``from_pretrained`` should be given for ``ref``: a local directory or a hub id.

    Packaged models are converted on first use.
    """
    ref = _as_ref(ref)
    kind = ref_kind(ref)
    if kind == "pkg":
        return str(_ensure_pkg_checkpoint(_packaged(ref.id))[0])
    if kind == "local":
        path = Path(ref.id).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path {ref.id!r} does not exist")
        if not path.is_dir():
            raise ModelLoadError(f"model path {ref.id!r} is not a directory")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {ref.id!r} has no config.json")
        return str(path.resolve())
    return ref.id


def local_revision(path: str | Path) -> str:
    """Content hash of a local checkpoint: config.json bytes + weight file names and sizes."""
    path = Path(path)
    digest = hashlib.sha256()
    for name in ("config.json", "adapter_config.json"):
        if (path / name).is_file():
            digest.update(name.encode() + b"\0" + (path / name).read_bytes() + b"\0")
    weight_suffixes = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.endswith(weight_suffixes):
            digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
    return digest.hexdigest()[:12]


def _resolve_for_load(ref: ModelRef) -> tuple[str, bool]:
    """(checkpoint, local_files_only) for from_pretrained."""
    checkpoint = resolve_checkpoint(ref)
    if ref_kind(ref) != "hub":
        return checkpoint, True
    if _hub_cached(ref):
        return checkpoint, True
    if _hf_offline():
        raise ModelLoadError(
            f"hub model {ref.id!r}"
            + (f" (revision {ref.revision})" if ref.revision else "")
            + " is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    return checkpoint, False


def _hub_revision(ref: ModelRef) -> str | None:
    """The ``revision`` to pass to from_pretrained (only hub models have one)."""
    return ref.revision if ref_kind(ref) == "hub" else None


def _hf_offline() -> bool:
    truthy = {"1", "ON", "YES", "TRUE"}
    env = any(os.environ.get(v, "").upper() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        from huggingface_hub import constants

        return env or bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return env


def _hub_cached(ref: ModelRef) -> bool:
    """Whether the hub model's config is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref.id, "config.json", revision=ref.revision)
    except Exception as exc:  # invalid repo id, etc.
        raise ModelLoadError(f"{ref.id!r} is neither a local directory nor a valid hub id ({exc})") from None
    return isinstance(found, str)


def _hub_cached_commit(ref: ModelRef) -> str | None:
    """Commit hash of the cached snapshot of a hub model, without network; None if absent."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref.id, "config.json", revision=ref.revision)
    except Exception:
        return None
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    return None
