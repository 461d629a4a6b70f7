"""Reading pretrained SAEs from the files researchers publish, from a folder or the Hub.

- Gemma Scope: ``params.npz`` with ``W_enc`` [d, F], ``W_dec`` [F, d], ``b_enc`` [F], ``b_dec`` [d],
  ``threshold`` [F]; JumpReLU, no decoder bias subtracted from the input. The layer comes from the
  folder path (``layer_12/width_16k/average_l0_82``), the component from the repo name
  (``...-res`` / ``-mlp``; ``-att`` SAEs read attention ``hook_z``, which we do not capture).
- SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``,
  and ``threshold`` or ``log_threshold`` for JumpReLU). Architectures standard / jumprelu / topk,
  old-style ``activation_fn_str`` configs too; gated and others are refused.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from transforms.dictionaries.sae import HookInfo, SAEFormatError, SparseAutoencoder

log = logging.getLogger(__name__)

GEMMA_SCOPE_FILE = "params.npz"
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAE_FILES = (GEMMA_SCOPE_FILE, SAELENS_CFG, SAELENS_WEIGHTS)

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LAYER_DIR_RE = re.compile(r"(?:^|/)layer_(\d+)(?:[/_]|$)")
# TransformerLens hook -> (our component, layer offset from the block index)
_HOOK_COMPONENTS = {
    "hook_resid_post": ("residual", 0),
    "hook_resid_pre": ("residual", -1),  # input of block k = output of block k-1
    "hook_mlp_out": ("mlp_out", 0),
    "hook_attn_out": ("attn_out", 0),
}


def hook_info_from_name(hook_name: str | None, model_name: str | None = None) -> HookInfo:
    """TransformerLens hook names in our convention: ``blocks.12.hook_resid_post`` -> layer 12."""
    if not hook_name:
        return HookInfo(model_name=model_name)
    match = _HOOK_RE.match(hook_name)
    if match is None:
        return HookInfo(hook_name=hook_name, model_name=model_name)
    block, rest = int(match.group(1)), match.group(2)
    component, offset = _HOOK_COMPONENTS.get(rest, (None, 0))
    layer = block + offset
    if layer < 0:  # blocks.0.hook_resid_pre is the embedding output, not a layer
        return HookInfo(None, None, hook_name, model_name)
    return HookInfo(layer, component, hook_name, model_name)


def hook_info_from_folder(folder: str, repo_id: str | None = None) -> HookInfo:
    """Gemma Scope folder names: ``layer_12/width_16k/average_l0_82`` -> layer 12."""
    match = _LAYER_DIR_RE.search(folder.replace("\\", "/"))
    if match is None:
        return HookInfo()
    layer = int(match.group(1))
    kind = re.search(r"-(res|mlp|att)(?:-|$)", (repo_id or "").rstrip("/").rsplit("/", 1)[-1])
    name = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}.get(kind.group(1)) if kind else None
    if name is None:
        return HookInfo(layer=layer)
    info = hook_info_from_name(f"blocks.{layer}.{name}")
    return HookInfo(layer, info.component, info.hook_name, None)


# ---- locating the files ------------------------------------------------------------------------


def resolve_sae_folder(
    path_or_repo_id: str | Path, subfolder: str | None = None, revision: str | None = None,
    *, local_files_only: bool = True,
) -> tuple[Path, str | None]:
    """The local folder holding an SAE's files, and the Hub repo id when it came from one.

    A path that exists is used as is; anything else is a Hub repo id, read from the local Hugging
    Face cache (``local_files_only``, the default) or downloaded, only the files an SAE needs.
    """
    local = Path(path_or_repo_id).expanduser()
    if local.exists():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise SAEFormatError(f"{folder}: not a folder")
        return folder, None
    repo_id = str(path_or_repo_id)
    if isinstance(path_or_repo_id, Path) or repo_id.startswith(("/", ".", "~")) or repo_id.count("/") > 1:
        raise SAEFormatError(f"{repo_id}: no such folder (and not a Hub repo id)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    try:
        root = snapshot_download(repo_id, revision=revision, local_files_only=local_files_only,
                                 allow_patterns=[prefix + name for name in SAE_FILES])
    except LocalEntryNotFoundError:
        hint = " (pass local_files_only=False to download it)" if local_files_only else ""
        raise SAEFormatError(f"{repo_id}@{revision or 'main'}: not in the local Hugging Face cache{hint}") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SAEFormatError(f"{repo_id}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    folder = Path(root) / subfolder if subfolder else Path(root)
    if not folder.is_dir():
        raise SAEFormatError(f"{repo_id}: no folder {subfolder!r} at revision {revision or 'main'}")
    return folder, repo_id


def load_sae(
    path_or_repo_id: str | Path, subfolder: str | None = None, revision: str | None = None,
    *, local_files_only: bool = True, norm_scaling_factor: float | None = None,
) -> SparseAutoencoder:
    """An SAE from a Gemma Scope or SAELens folder, local or on the Hub (see the module docstring).

    ``norm_scaling_factor``: for SAELens SAEs trained with ``expected_average_only_in``, the factor
    sqrt(d) / E||x|| that SAELens keeps outside the files (its pretrained_saes.yaml); without it
    such an SAE is refused rather than run on activations of the wrong size.
    """
    folder, repo_id = resolve_sae_folder(path_or_repo_id, subfolder, revision, local_files_only=local_files_only)
    where = f"{repo_id}/{subfolder or ''}".rstrip("/") if repo_id else str(folder)
    if (folder / GEMMA_SCOPE_FILE).is_file():
        sae = load_gemma_scope(folder / GEMMA_SCOPE_FILE, hook=hook_info_from_folder(subfolder or str(folder), repo_id))
    elif (folder / SAELENS_CFG).is_file():
        sae = load_saelens(folder, norm_scaling_factor=norm_scaling_factor)
    else:
        raise SAEFormatError(f"{where}: no {GEMMA_SCOPE_FILE} (Gemma Scope) or {SAELENS_CFG} + "
                             f"{SAELENS_WEIGHTS} (SAELens)")
    if sae.hook.layer is None and subfolder:  # SAELens folders named like Gemma Scope's
        folder_hook = hook_info_from_folder(subfolder, repo_id)
        sae.hook = HookInfo(folder_hook.layer, sae.hook.component or folder_hook.component,
                            sae.hook.hook_name or folder_hook.hook_name, sae.hook.model_name)
    log.info("loaded SAE %s: d_model=%d dict_size=%d %s layer=%s", where, sae.d_model, sae.dict_size,
             sae.activation, sae.layer)
    return sae


# ---- the two formats ---------------------------------------------------------------------------


def _check_shapes(file: Path, tensors: dict[str, Any], d: int, F: int) -> None:
    expected = {"W_enc": (d, F), "W_dec": (F, d), "b_enc": (F,), "b_dec": (d,), "threshold": (F,), "log_threshold": (F,)}
    for name, shape in expected.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise SAEFormatError(f"{file}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}")


def _require(file: Path, tensors: dict[str, Any], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise SAEFormatError(f"{file}: missing {', '.join(missing)} (has {', '.join(sorted(tensors)) or 'nothing'})")


def load_gemma_scope(file: Path, *, hook: HookInfo | None = None) -> SparseAutoencoder:
    """A Gemma Scope JumpReLU SAE from its ``params.npz``."""
    import numpy as np

    try:
        with np.load(file) as npz:
            tensors = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{file}: not a readable .npz ({type(exc).__name__})") from None
    _require(file, tensors, ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"))
    if tensors["W_enc"].ndim != 2:
        raise SAEFormatError(f"{file}: W_enc has shape {tensors['W_enc'].shape}, expected [d, F]")
    d, F = tensors["W_enc"].shape
    _check_shapes(file, tensors, d, F)
    return SparseAutoencoder(tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
                             activation="jumprelu", threshold=tensors["threshold"], hook=hook)


def _saelens_activation(cfg_file: Path, cfg: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """The activation keyword arguments an SAELens config asks for, or a one-line refusal."""
    import torch

    arch = cfg.get("architecture")
    fn = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch in (None, "standard") and fn == "topk":  # SAELens < 6 spelled top-k this way
        arch = "topk"
    if arch in (None, "standard"):
        if fn not in (None, "relu"):
            raise SAEFormatError(f"{cfg_file}: activation_fn_str {fn!r} is not supported (relu, topk)")
        return {"activation": "relu"}
    if arch == "topk":
        if k is None:
            raise SAEFormatError(f"{cfg_file}: architecture 'topk' without k")
        return {"activation": "topk", "k": int(k)}
    if arch in ("jumprelu", "batchtopk") and ("threshold" in tensors or "log_threshold" in tensors):
        # training checkpoints keep log_threshold; inference files keep threshold
        threshold = tensors.get("threshold")
        if threshold is None:
            threshold = torch.exp(torch.as_tensor(tensors["log_threshold"], dtype=torch.float32))
        return {"activation": "jumprelu", "threshold": threshold}
    if arch == "jumprelu":
        _require(cfg_file.with_name(SAELENS_WEIGHTS), tensors, ("threshold",))
    if arch == "batchtopk":
        raise SAEFormatError(f"{cfg_file}: architecture 'batchtopk' without a threshold cannot encode single inputs")
    raise SAEFormatError(f"{cfg_file}: architecture {arch!r} is not supported (standard, jumprelu, topk)")


def _saelens_scale(cfg_file: Path, cfg: dict[str, Any], norm_scaling_factor: float | None) -> float:
    mode = cfg.get("normalize_activations") or "none"
    if mode == "none":
        return 1.0
    if mode == "expected_average_only_in":
        factor = norm_scaling_factor if norm_scaling_factor is not None else cfg.get("norm_scaling_factor")
        if factor is None:
            raise SAEFormatError(f"{cfg_file}: normalize_activations 'expected_average_only_in' needs the norm scaling "
                                 f"factor, which these files do not hold; pass norm_scaling_factor=")
        return float(factor)
    raise SAEFormatError(f"{cfg_file}: normalize_activations {mode!r} is not supported (none, expected_average_only_in)")


def load_saelens(folder: Path, *, norm_scaling_factor: float | None = None) -> SparseAutoencoder:
    """An SAELens SAE from ``cfg.json`` + ``sae_weights.safetensors``."""
    cfg_file, weights_file = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{cfg_file}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{cfg_file}: expected a JSON object")
    if not weights_file.is_file():
        raise SAEFormatError(f"{weights_file}: missing (SAELens keeps its weights next to {SAELENS_CFG})")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(weights_file)
    except (SafetensorError, OSError) as exc:
        raise SAEFormatError(f"{weights_file}: not readable safetensors ({str(exc).splitlines()[0]})") from None
    _require(weights_file, tensors, ("W_enc", "W_dec", "b_enc", "b_dec"))
    d, F = (int(v) for v in tensors["W_enc"].shape) if tensors["W_enc"].ndim == 2 else (-1, -1)
    if (cfg.get("d_in"), cfg.get("d_sae")) != (d, F):
        raise SAEFormatError(f"{weights_file}: W_enc has shape {tuple(tensors['W_enc'].shape)} but {SAELENS_CFG} "
                             f"says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')}")
    _check_shapes(weights_file, tensors, d, F)
    activation = _saelens_activation(cfg_file, cfg, tensors)
    W_dec = tensors["W_dec"]
    if cfg.get("finetuning_scaling_factor") and "scaling_factor" in tensors:
        W_dec = W_dec * tensors["scaling_factor"].reshape(-1, 1)  # decode((f * s) @ W) == f @ (s * W)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    hook = hook_info_from_name(cfg.get("hook_name") or meta.get("hook_name"),
                               cfg.get("model_name") or meta.get("model_name"))
    return SparseAutoencoder(tensors["W_enc"], tensors["b_enc"], W_dec, tensors["b_dec"],
                             apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                             input_scale=_saelens_scale(cfg_file, cfg, norm_scaling_factor), hook=hook, **activation)
