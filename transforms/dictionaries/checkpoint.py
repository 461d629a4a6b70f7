"""Crosscoder checkpoints: our own and public ones, through one code path.

Layouts read (``dictionary_learning`` / crosscoder_learning):

- a folder (or Hub repo) in the ``PyTorchModelHubMixin`` layout: ``model.safetensors`` (the
  state dict) + ``config.json`` (``activation_dim``, ``dict_size``, ``num_encoder_layers``,
  ``code_normalization``, ``k`` for BatchTopK, ...). We add our own under ``"traitstore"``:
  ``kind``, ``input_scale`` and whatever the trainer records.
- a single ``.pt`` state dict (``torch.save``), possibly with a ``_hub_mixin_config`` entry.

The kind is read off the state dict: ``k`` / ``threshold`` buffers mean batch_topk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transforms.dictionaries.errors import DictionaryError

if TYPE_CHECKING:
    from transforms.dictionaries.crosscoder import CrossCoder

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HUB_PATTERNS = [WEIGHTS, CONFIG, "*.pt"]
OUR_KEY = "traitstore"
MIXIN_CONFIG_ENTRY = "_hub_mixin_config"


class CheckpointError(DictionaryError):
    """A crosscoder checkpoint that cannot be used; the message is one line naming the file."""


def save_crosscoder(model: "CrossCoder", folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` (created); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    config: dict[str, Any] = {
        "activation_dim": model.d_model,
        "dict_size": model.dict_size,
        "num_encoder_layers": model.n_models,
        "decoder_type": "linear",
        "code_normalization": "CROSSCODER",
    }
    if model.kind == "batch_topk":
        config["k"] = model.k
    config[OUR_KEY] = {"kind": model.kind,
                       "input_scale": [float(v) for v in model.input_scale.detach().cpu().tolist()],
                       **(extra or {})}
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def load_crosscoder(path_or_repo_id: str | Path, revision: str | None = None, *,
                    local_files_only: bool = True) -> "CrossCoder":
    """A crosscoder from a folder, a ``.pt`` file or a Hub repo id (offline-first)."""
    source = Path(path_or_repo_id).expanduser()
    if source.is_file():
        return _from_pt(source) if source.suffix != ".safetensors" else _from_folder(source.parent, source)
    if source.is_dir():
        return _from_folder(source)
    return _from_folder(_download(str(path_or_repo_id), revision, local_files_only))


def check_width(model: "CrossCoder", d_model: int, where: str) -> None:
    """Refuse a crosscoder whose activation_dim is not the model's width."""
    if model.d_model != int(d_model):
        raise CheckpointError(f"{where}: the crosscoder reads activations of width {model.d_model}, "
                              f"the model's width is {int(d_model)}")


def read_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder ({} when there is none)."""
    path = Path(folder) / CONFIG
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable config ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config is not a JSON object")
    return config


# ---- internals ---------------------------------------------------------------------------
def _download(repo_id: str, revision: str | None, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    if repo_id.count("/") != 1:
        raise CheckpointError(f"{repo_id}: no such file or folder, and not a Hub repo id (owner/name)")
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS,
                                   local_files_only=local_files_only)
    except Exception as error:  # the hub client raises many types; all mean "not available"
        hint = " (offline: pass local_files_only=False to download)" if local_files_only else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{repo_id}@{revision or 'main'}: cannot get the checkpoint{hint}: {first}") from None
    return Path(folder)


def _from_folder(folder: Path, weights: Path | None = None) -> "CrossCoder":
    from safetensors.torch import load_file

    weights = weights or folder / WEIGHTS
    if not weights.exists():
        pts = sorted(folder.glob("*.pt"))
        if len(pts) == 1:
            return _from_pt(pts[0], read_config(folder))
        raise CheckpointError(f"{folder}: no {WEIGHTS} (nor a single .pt state dict)")
    try:
        state = load_file(str(weights))
    except Exception as error:
        raise CheckpointError(f"{weights}: unreadable safetensors ({error})") from None
    return _build(state, read_config(folder), weights)


def _from_pt(path: Path, config: dict[str, Any] | None = None) -> "CrossCoder":
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: unreadable state dict ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict but a {type(state).__name__}")
    state = dict(state)
    mixin = state.pop(MIXIN_CONFIG_ENTRY, None)
    merged = {**(mixin if isinstance(mixin, dict) else {}), **(config or {})}
    return _build(state, merged, path)


def _shape(state: dict, key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{path}: missing key {key!r}")
    return tuple(state[key].shape)


def _build(state: dict, config: dict[str, Any], path: Path) -> "CrossCoder":
    import torch

    from transforms.dictionaries.crosscoder import CrossCoder, check_code_normalization

    enc = _shape(state, "encoder.weight", path)
    if len(enc) != 3:
        raise CheckpointError(f"{path}: encoder.weight has shape {list(enc)}, expected [n_models, d, dict_size]")
    n_models, d_model, dict_size = enc
    expected = {"encoder.bias": (dict_size,), "decoder.weight": (n_models, dict_size, d_model),
                "decoder.bias": (n_models, d_model), "code_normalization_id": ()}
    batch_topk = "k" in state or "threshold" in state
    if batch_topk:
        expected.update({"k": (), "threshold": ()})
    for key, shape in expected.items():
        found = _shape(state, key, path)
        if found != shape:
            raise CheckpointError(f"{path}: {key} has shape {list(found)}, expected {list(shape)}")
    unexpected = sorted(set(state) - set(expected) - {"encoder.weight"})
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys {unexpected}")
    try:
        check_code_normalization(int(state["code_normalization_id"].item()), str(path))
        named = config.get("code_normalization")
        if named is not None and str(named).upper() != "CROSSCODER":
            raise ValueError(f"{path}: code_normalization {named!r} is not supported; only CROSSCODER is")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if config.get("decoder_type", "linear") != "linear":
        raise CheckpointError(f"{path}: decoder_type {config['decoder_type']!r} is not supported; only 'linear' is")
    for key, value in (("activation_dim", d_model), ("dict_size", dict_size)):
        if key in config and int(config[key]) != value:
            raise CheckpointError(f"{path}: config {key}={config[key]} but the weights say {value}")

    ours = config.get(OUR_KEY) or {}
    kind = "batch_topk" if batch_topk else "l1"
    if ours.get("kind", kind) != kind:
        raise CheckpointError(f"{path}: config says kind {ours['kind']!r}, the weights are {kind}")
    k = int(state["k"].item()) if batch_topk else None
    model = CrossCoder(n_models, d_model, dict_size, kind=kind, k=k if k and k > 0 else 1)
    tensors = {key: value.to(torch.float32) if value.is_floating_point() else value for key, value in state.items()}
    model.load_state_dict(tensors, strict=True)
    scale = ours.get("input_scale")
    if scale is not None:
        if len(scale) != n_models:
            raise CheckpointError(f"{path}: input_scale has {len(scale)} entries, expected {n_models}")
        model.set_input_scale(scale)
    model.eval()
    log.info("loaded %s crosscoder %s (%d models, d=%d, F=%d)", kind, path, n_models, d_model, dict_size)
    return model
