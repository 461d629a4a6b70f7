"""Decoder-layer discovery, model dimensions, component hook sites, layer specs.

Layer convention
----------------
**Layer k = output of decoder block k = Hugging Face ``hidden_states[k+1]``.**
``hidden_states[0]`` is the embedding output as the model feeds it to block 0 (after
Gemma's ``sqrt(d_model)`` scaling, GPT-2's ``wte + wpe`` and dropout) and is not a layer.
Layers are 0-based: for an ``n``-layer model the valid layers are ``0 .. n-1``.

What ``hidden_states[-1]`` is (transformers 5.x)
-------------------------------------------------
In transformers 5 the hidden states are recorded by forward hooks on the decoder blocks
(``utils/output_capturing.capture_outputs``) and, for every language model, the last
entry is then *replaced* by ``last_hidden_state``, i.e. the output of the final norm
(``tie_last_hidden_states=True``). Checked by the tests for every family here:

==========  ==============================================================
family      ``hidden_states[-1]``
==========  ==============================================================
llama       ``model.norm(block_{n-1} output)`` (final RMSNorm)
qwen2       ``model.norm(block_{n-1} output)`` (final RMSNorm)
gemma2      ``model.norm(block_{n-1} output)`` (final RMSNorm)
gemma3      ``model.norm(block_{n-1} output)`` (final RMSNorm)
gpt2        ``transformer.ln_f(block_{n-1} output)`` (final LayerNorm)
PEFT/LoRA   as the wrapped model
==========  ==============================================================

Because ``hidden_states[1:-1]`` are the very tensors the blocks return, a hook on block k
reproduces ``hidden_states[k+1]`` bit for bit (``torch.equal``).

So ``hidden_states[k+1]`` equals layer ``k`` exactly for ``k < n-1`` only. Our layer
``n-1`` is the raw output of the last block (pre final norm), the same kind of quantity as
every other layer; read it with a hook (``transforms.capture.hooks``), not from
``hidden_states[-1]``.

Components (see ``component_module``)
-------------------------------------
``residual``  the block's output hidden state (the residual stream after block k).
``attn_out``  what the attention sub-block adds to the residual stream: the attention
              output projection; in Gemma 2/3 *after* ``post_attention_layernorm``, which
              those blocks apply to the attention output (in llama/qwen2
              ``post_attention_layernorm`` is the pre-MLP norm and is NOT part of it).
``mlp_out``   what the MLP sub-block adds; in Gemma 2/3 after ``post_feedforward_layernorm``.

Invariant (tested): ``residual_k == residual_{k-1} + attn_out_k + mlp_out_k`` with
``residual_{-1} = hidden_states[0]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

Component = Literal["residual", "attn_out", "mlp_out"]
COMPONENTS: tuple[str, ...] = ("residual", "attn_out", "mlp_out")

# Attribute paths of the decoder block list, tried in order on the unwrapped model.
_KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # llama, qwen2, gemma2, gemma3 (ForCausalLM), mistral, ...
    "layers",  # bare LlamaModel / Gemma3TextModel / ...
    "transformer.h",  # gpt2 LMHead
    "h",  # bare GPT2Model
    "model.language_model.layers",  # gemma3 ForConditionalGeneration, llava-style
    "language_model.layers",
    "model.decoder.layers",  # opt
    "decoder.layers",
    "gpt_neox.layers",
    "transformer.layers",
)
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


# --------------------------------------------------------------------------- discovery


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip PEFT wrappers (``PeftModel`` / ``LoraModel``): the returned transformers model
    still contains the injected adapter layers, so running it applies the adapters."""
    for _ in range(4):
        if not type(model).__module__.startswith("peft.") or not hasattr(model, "peft_config"):
            break  # (transformers models also get .peft_config via load_adapter: no wrapper)
        peft_config = getattr(model, "peft_config", {}) or {}
        for cfg in peft_config.values() if isinstance(peft_config, dict) else []:
            if getattr(cfg, "is_prompt_learning", False):
                raise ValueError(
                    "prompt-learning PEFT adapters (virtual tokens) are not supported: "
                    "they shift token positions"
                )
        if hasattr(model, "get_base_model"):  # PeftModel
            model = model.get_base_model()
        elif hasattr(model, "model"):  # LoraModel / BaseTuner (PeftModel.base_model)
            model = model.model
        else:
            break
    return model


def _text_config(model: nn.Module) -> Any:
    config = getattr(unwrap_model(model), "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config; cannot find its layers")
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _config_n_layers(model: nn.Module) -> int | None:
    config = _text_config(model)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    from torch import nn

    base = unwrap_model(model)
    n_layers = _config_n_layers(model)
    for path in _KNOWN_LAYER_PATHS:
        found = _get_path(base, path)
        if isinstance(found, nn.ModuleList) and (n_layers is None or len(found) == n_layers):
            return path, found
    if n_layers is not None:
        candidates = [
            (name, mod)
            for name, mod in base.named_modules()
            if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and name
        ]
        if candidates:
            # The longest (= most parameters) list of n_layers blocks is the decoder stack.
            name, mod = max(candidates, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))
            logger.debug("decoder layers of %s found by search at %s", type(base).__name__, name)
            return name, mod
    raise ValueError(
        f"cannot find the decoder layers of {type(base).__name__}: tried "
        f"{', '.join(_KNOWN_LAYER_PATHS)} and any nn.ModuleList of length "
        f"config.num_hidden_layers={n_layers}"
    )


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of ``model`` in order (block k produces layer k).

    Works for llama, gemma2, gemma3 (``Gemma3ForCausalLM`` / ``gemma3_text``, and the
    text stack of ``Gemma3ForConditionalGeneration``), qwen2, gpt2, bare base models and
    PEFT-wrapped models. Known attribute paths are tried first, then
    the ``nn.ModuleList`` of length ``config.num_hidden_layers`` with the most parameters.
    Raises ValueError when none is found.
    """
    return list(_find_layer_list(model)[1])


def decoder_trunk(model: nn.Module) -> nn.Module:
    """The module owning the decoder block list (``LlamaModel``, ``GPT2Model``, ...).

    Calling it runs embeddings and blocks but not the LM head; PEFT adapters injected in
    the blocks still apply.
    """
    base = unwrap_model(model)
    path, _ = _find_layer_list(model)
    owner_path = path.rpartition(".")[0]
    return _get_path(base, owner_path) if owner_path else base


def model_dims(model: nn.Module) -> tuple[int, int]:
    """``(n_layers, d_model)`` of the text decoder: blocks counted in the module tree, the
    width read by :class:`transforms.models.ModelDims` (ValueError when it cannot be read)."""
    from transforms.models import ModelDims

    dims = ModelDims.from_config(_text_config(model), n_layers=len(decoder_layers(model)))
    return dims.n_layers, dims.d_model


# --------------------------------------------------------------------------- components


def first_tensor(output: Any) -> torch.Tensor:
    """A module's primary output: the tensor itself, or element 0 of a tuple/list output
    (transformers 5 blocks return a tensor; attention modules return
    ``(attn_output, attn_weights)``; older code returned tuples from blocks too)."""
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output


@dataclass(frozen=True)
class ComponentSite:
    """Where to hook a component: register a forward hook on ``module`` and apply
    ``read(output)`` to its forward output to get the ``[batch, seq, d_model]`` tensor."""

    layer: int
    component: str
    module: nn.Module
    module_name: str
    read: Callable[[Any], torch.Tensor] = first_tensor


def _child(block: nn.Module, names: tuple[str, ...], what: str, layer: int) -> tuple[str, nn.Module]:
    for name in names:
        mod = getattr(block, name, None)
        if mod is not None:
            return name, mod
    raise ValueError(
        f"cannot find the {what} of layer {layer} ({type(block).__name__}): "
        f"expected one of the attributes {', '.join(names)}"
    )


def component_module(model: nn.Module, layer_index: int, component: str) -> ComponentSite:
    """The hook site for ``component`` (``residual`` | ``attn_out`` | ``mlp_out``) of layer
    ``layer_index`` (0-based, see the module docstring for the conventions).

    Blocks with sandwich norms (a ``post_feedforward_layernorm``: Gemma 2/3, OLMo 2) read
    ``attn_out``/``mlp_out`` after their ``post_attention_layernorm`` /
    ``post_feedforward_layernorm``; other blocks read the attention module's output[0] and
    the MLP's output.
    """
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}")
    path, layer_list = _find_layer_list(model)
    n_layers = len(layer_list)
    if not 0 <= layer_index < n_layers:
        raise ValueError(f"layer {layer_index} out of range: valid layers are 0-{n_layers - 1}")
    block = layer_list[layer_index]
    prefix = f"{path}.{layer_index}"
    if component == "residual":
        return ComponentSite(layer_index, component, block, prefix)
    sandwich = getattr(block, "post_feedforward_layernorm", None) is not None
    if component == "attn_out":
        if sandwich and getattr(block, "post_attention_layernorm", None) is not None:
            name, mod = "post_attention_layernorm", block.post_attention_layernorm
        else:
            name, mod = _child(block, _ATTN_NAMES, "attention module", layer_index)
    else:
        if sandwich:
            name, mod = "post_feedforward_layernorm", block.post_feedforward_layernorm
        else:
            name, mod = _child(block, _MLP_NAMES, "MLP module", layer_index)
    return ComponentSite(layer_index, component, mod, f"{prefix}.{name}")


# --------------------------------------------------------------------------- layer specs

_INT = r"\d+"
_PCT = r"\d+(?:\.\d+)?%"
_RANGE_RE = re.compile(rf"^(?P<a>{_PCT}|{_INT})-(?P<b>{_PCT}|{_INT})(?::(?P<step>\d+))?$")
_ALL_RE = re.compile(r"^all(?::(?P<step>\d+))?$")


def _layer_of(token: str, n_layers: int, spec: str) -> int:
    if token.endswith("%"):
        pct = float(token[:-1])
        if pct > 100:
            raise ValueError(f"bad layer spec {spec!r}: {token} is over 100%; valid layers are 0-{n_layers - 1}")
        return min(int(pct * n_layers / 100), n_layers - 1)
    return int(token)


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """Parse a layer spec into sorted unique 0-based layer indices.

    Forms (comma-combinable, e.g. ``"3,5,9-12"``):
    ``all`` every layer; ``all:4`` every 4th from 0; ``12`` one layer; ``9-19`` inclusive
    range; ``0-30:5`` inclusive range with step (0, 5, ..., 30); ``30%-60%`` percentages of
    ``n_layers``, ``p%`` meaning layer ``floor(p * n_layers / 100)`` (100% = last layer).
    Raises ValueError (one line, naming the spec and the valid range) when malformed or out
    of range.
    """
    if n_layers <= 0:
        raise ValueError(f"layer spec {spec!r}: model has no layers (n_layers={n_layers})")
    valid = f"valid layers are 0-{n_layers - 1}"
    forms = "expected all, 12, 9-19, 0-30:5, 50%, 30%-60% or a comma list of these"
    text = str(spec).strip().lower().replace(" ", "")
    if not text:
        raise ValueError(f"bad layer spec {spec!r}: empty; {forms}; {valid}")
    out: set[int] = set()
    for part in text.split(","):
        if (m := _ALL_RE.match(part)) is not None:
            start, stop, step = 0, n_layers - 1, int(m["step"] or 1)
        elif (m := _RANGE_RE.match(part)) is not None:
            start = _layer_of(m["a"], n_layers, spec)
            stop = _layer_of(m["b"], n_layers, spec)
            step = int(m["step"] or 1)
            if stop < start:
                raise ValueError(f"bad layer spec {spec!r}: range {part!r} is reversed; {valid}")
        elif re.fullmatch(_INT, part):
            start = stop = int(part)
            step = 1
        elif re.fullmatch(_PCT, part):  # one layer as a share of depth: 50% of 30 layers = 15
            start = stop = _layer_of(part, n_layers, spec)
            step = 1
        else:
            raise ValueError(f"bad layer spec {spec!r}: cannot parse {part!r}; {forms}; {valid}")
        if step == 0:
            raise ValueError(f"bad layer spec {spec!r}: step 0 in {part!r}; {valid}")
        if stop >= n_layers:
            raise ValueError(f"layer spec {spec!r} out of range: {part!r}; {valid}")
        out.update(range(start, stop + 1, step))
    return sorted(out)
