"""Where a model's files come from: packaged checkpoints, local directories, the hub.

* ``pkg:<name>`` -- converted once into the model cache (:mod:`transforms.models.packaged`).
* a local directory holding a ``from_pretrained`` checkpoint -- used as it is.
* anything else is a Hugging Face hub id. If it is already in the local Hugging Face cache
  it is loaded from there without touching the network; otherwise ``from_pretrained``
  downloads it, unless ``HF_HUB_OFFLINE`` is set, which makes it a :class:`ModelLoadError`
  at once.

This is the one place that turns a model id and revision into files: :func:`resolve_checkpoint`
(what ``from_pretrained`` is given, with :func:`hub_revision`), :func:`resolve_for_load` (plus
whether to stay offline),
:func:`checkpoint_folder` (a local folder with the weight files), :func:`load_config` and
:func:`config_dims`. A hub revision (commit, branch or tag) reaches every one of them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transforms.models.dims import ModelDims
from transforms.models.packaged import ensure_pkg_checkpoint, packaged_model
from transforms.models.refs import ModelLoadError, ModelRef, as_ref, ref_kind, short_message

#: what a weight analysis reads of a hub snapshot (configs, tokenizer files, safetensors)
WEIGHT_PATTERNS = ("*.safetensors", "*.json")


def resolve_checkpoint(ref: ModelRef | str) -> str:
    """What ``from_pretrained`` should be given for ``ref``: a local directory or a hub id.

    Packaged models are converted on first use.
    """
    ref = as_ref(ref)
    kind = ref_kind(ref)
    if kind == "pkg":
        return str(ensure_pkg_checkpoint(packaged_model(ref.id))[0])
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


def resolve_for_load(ref: ModelRef | str) -> tuple[str, bool]:
    """``(checkpoint, local_files_only)`` for ``from_pretrained``: local when the files are
    here (pkg, local, a cached hub revision); a hub model neither cached nor reachable
    (``HF_HUB_OFFLINE``) is a :class:`ModelLoadError`."""
    ref = as_ref(ref)
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


def hub_revision(ref: ModelRef) -> str | None:
    """The ``revision`` to pass to from_pretrained with :func:`resolve_checkpoint`'s answer
    (only hub models have one: pkg and local checkpoints are folders)."""
    return ref.revision if ref_kind(ref) == "hub" else None


def _hf_offline() -> bool:
    """Whether the hub may not be contacted (the environment, or the hub library's setting)."""
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


def hub_cached_commit(ref: ModelRef) -> str | None:
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


def checkpoint_folder(ref: ModelRef | str, patterns: Sequence[str] = WEIGHT_PATTERNS) -> Path:
    """A local folder holding ``ref``'s files at its revision: the pkg / local checkpoint
    itself, or the hub snapshot of ``ref.revision`` (``main`` when unpinned), downloading
    the files matching ``patterns`` unless they are cached or the hub is off."""
    ref = as_ref(ref)
    checkpoint, _ = resolve_for_load(ref)  # the offline error before any hub call
    if ref_kind(ref) != "hub":
        return Path(checkpoint)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.id, revision=ref.revision, allow_patterns=list(patterns)))
    except Exception as exc:  # offline, gated, missing revision: one line naming the model
        raise ModelLoadError(f"cannot get the files of {ref}: {short_message(exc)}") from None


def load_config(ref: ModelRef | str) -> Any:
    """``ref``'s transformers config at its revision, without loading weights."""
    ref = as_ref(ref)
    checkpoint, local_only = resolve_for_load(ref)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(checkpoint, revision=hub_revision(ref), local_files_only=local_only)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not read the config of {ref}: {short_message(exc)}") from None


def config_dims(ref: ModelRef | str) -> ModelDims:
    """``ref``'s :class:`ModelDims` from its config at its revision, without loading weights."""
    return ModelDims.from_config(load_config(ref))
