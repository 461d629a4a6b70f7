"""Attention-head sites: where one head's contribution can be read or replaced.

A head's contribution is its slice of the INPUT to the attention output projection
(``o_proj`` in llama / qwen2 / gemma2 / gemma3, ``attn.c_proj`` in GPT-2): that input is
``[batch, seq, n_heads * head_dim]`` with query head ``h`` at ``[h * head_dim, (h+1) * head_dim)``,
so the slicing is the same with grouped-query attention (the key/value heads are shared
before this point, the query heads are not). ``head_dim`` comes from the config when it says
(Gemma 3 270M: 256, not ``d_model / n_heads``), else ``d_model // n_heads``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.capture.layers import decoder_layers, unwrap_model

if TYPE_CHECKING:
    from torch import nn

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_OUT_PROJ_NAMES = ("o_proj", "c_proj", "out_proj", "dense", "o")


@dataclass(frozen=True)
class HeadSite:
    """The attention output projection of block ``layer``; a pre-hook on ``module`` sees
    ``[B, T, n_heads * head_dim]`` (query heads concatenated)."""

    layer: int
    module: nn.Module
    n_heads: int
    head_dim: int

    def span(self, head: int) -> slice:
        """The slice of the projection's input that belongs to ``head``."""
        return slice(head * self.head_dim, (head + 1) * self.head_dim)


def _text_config(model: nn.Module) -> Any:
    config = getattr(unwrap_model(model), "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config; cannot read its attention heads")
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def head_shape(model: nn.Module) -> tuple[int, int]:
    """``(n_heads, head_dim)``: query heads and their width, read from the config."""
    config = _text_config(model)
    n_heads = next((v for k in ("num_attention_heads", "n_head") if isinstance(v := getattr(config, k, None), int)), None)
    d_model = next((v for k in ("hidden_size", "n_embd", "d_model") if isinstance(v := getattr(config, k, None), int)), None)
    if n_heads is None:
        raise ValueError(f"{type(config).__name__} has no num_attention_heads / n_head")
    head_dim = getattr(config, "head_dim", None)
    if not isinstance(head_dim, int):
        if d_model is None:
            raise ValueError(f"{type(config).__name__} has neither head_dim nor hidden_size")
        head_dim = d_model // n_heads
    return n_heads, head_dim


def _in_width(module: nn.Module) -> int | None:
    for attr in ("in_features", "nx"):  # nn.Linear (and PEFT's LoRA wrapper), GPT-2's Conv1D
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def head_site(model: nn.Module, layer: int) -> HeadSite:
    """The attention output projection of block ``layer`` with the head shape; ValueError
    (one line) for a layer out of range or a block whose projection cannot be found."""
    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} out of range: valid layers are 0-{len(blocks) - 1}")
    block = blocks[layer]
    attn = next((m for n in _ATTN_NAMES if (m := getattr(block, n, None)) is not None), None)
    proj = None if attn is None else next((m for n in _OUT_PROJ_NAMES if (m := getattr(attn, n, None)) is not None), None)
    if proj is None:
        raise ValueError(
            f"cannot find the attention output projection of layer {layer} ({type(block).__name__}): "
            f"expected <{'|'.join(_ATTN_NAMES)}>.<{'|'.join(_OUT_PROJ_NAMES)}>"
        )
    n_heads, head_dim = head_shape(model)
    width = _in_width(proj)
    if width is not None and width != n_heads * head_dim:
        raise ValueError(
            f"layer {layer}: the output projection takes {width} features, not n_heads * head_dim = "
            f"{n_heads} * {head_dim}; cannot split it into heads"
        )
    return HeadSite(layer, proj, n_heads, head_dim)


def check_heads(model: nn.Module, heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``heads`` as ``(layer, head)`` int pairs, validated (ValueError, one line, naming the
    first bad one and the valid ranges)."""
    n_layers = len(decoder_layers(model))
    n_heads, _ = head_shape(model)
    out = []
    for item in heads:
        layer, head = (int(x) for x in item)
        if not 0 <= layer < n_layers:
            raise ValueError(f"head {layer}.{head}: layer {layer} out of range: valid layers are 0-{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise ValueError(f"head {layer}.{head}: head {head} out of range: valid heads are 0-{n_heads - 1}")
        out.append((layer, head))
    return out
