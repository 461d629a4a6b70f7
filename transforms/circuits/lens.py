"""The logit lens: a layer's residual stream read through the model's own final norm and unembedding.

- :func:`final_norm_and_unembed`: the callable ``residual_BD -> logits_BV`` the model applies
  after its last block: its final norm module (llama / qwen2 / gemma ``model.norm``, GPT-2
  ``transformer.ln_f``, found on the decoder trunk, PEFT wrappers stripped), its output
  embedding (tied or not) and Gemma 2's ``final_logit_softcapping`` (``tanh(x / c) · c``)
  when the config sets it. It runs in the model's dtype, as the model does, so at the last
  layer it reproduces the model's own logits; the result is float32.
- :func:`logit_lens`: the residual (layer k = output of block k = ``hidden_states[k+1]``)
  at one position, for several layers, through that head: float32 ``logits_LV``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.capture.hooks import check_layers, hook_components, input_device, run_forward
from transforms.capture.layers import decoder_trunk, unwrap_model

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

#: attribute names of the final norm on the decoder trunk (the module owning the block list)
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm")


@dataclass(frozen=True)
class LensHead:
    """What the model applies after its last block; call it on ``residual_BD``."""

    norm: Any  # nn.Module
    unembed: Any  # nn.Module (the output embedding, a Linear)
    softcap: float | None = None

    def __call__(self, residual_BD: torch.Tensor) -> torch.Tensor:
        import torch

        weight = self.unembed.weight
        with torch.inference_mode():
            # the model's own dtype and device: the lens reads what the model would emit
            x = residual_BD.to(device=weight.device, dtype=weight.dtype)
            logits = self.unembed(self.norm(x))
            if self.softcap is not None:
                logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()


def final_norm_and_unembed(model: nn.Module) -> LensHead:
    """The model's final norm, output embedding and final logit softcap (module docstring).
    ValueError (one line) when the model has no final norm or no output embedding."""
    base = unwrap_model(model)
    trunk = decoder_trunk(model)
    norm = next((getattr(trunk, n) for n in _FINAL_NORMS if getattr(trunk, n, None) is not None), None)
    if norm is None:
        raise ValueError(f"{type(base).__name__}: no final norm on {type(trunk).__name__} "
                         f"(looked for {', '.join(_FINAL_NORMS)})")
    get_out = getattr(base, "get_output_embeddings", None)
    unembed = get_out() if callable(get_out) else None
    if unembed is None or getattr(unembed, "weight", None) is None:
        raise ValueError(f"{type(base).__name__}: no output embedding (a model without an LM head has no lens)")
    config = getattr(base, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    softcap = getattr(text, "final_logit_softcapping", None)
    return LensHead(norm, unembed, float(softcap) if softcap else None)


def logit_lens(model: nn.Module, ids_T: list[int], position: int, layers: Sequence[int]) -> np.ndarray:
    """float32 ``logits_LV``: row i = layer ``layers[i]``'s residual at ``position`` (negative
    counts from the end) through :func:`final_norm_and_unembed`. One forward, stopped after
    the deepest layer. ValueError (one line) for an empty sequence, a position outside it, or
    a layer out of range / repeated / none."""
    n = len(ids_T)
    if not n:
        raise ValueError("logit lens of an empty sequence")
    if not -n <= position < n:
        raise ValueError(f"position {position} is outside a sequence of {n} tokens")
    start = position % n
    return span_logit_lens(model, ids_T, start, start + 1, layers)


def span_logit_lens(model: nn.Module, ids_T: list[int], start: int, stop: int, layers: Sequence[int]) -> np.ndarray:
    """:func:`logit_lens` of the residual mean-pooled over tokens ``[start, stop)`` (the
    pipeline's pooling of a position span; one token is that token's residual exactly)."""
    import torch

    ids = [int(t) for t in ids_T]
    if not ids:
        raise ValueError("logit lens of an empty sequence")
    if not 0 <= start < stop <= len(ids):
        raise ValueError(f"span [{start}, {stop}) is not inside a sequence of {len(ids)} tokens")
    layers = check_layers(model, layers, "residual")
    head = final_norm_and_unembed(model)
    input_ids = torch.tensor([ids], dtype=torch.long, device=input_device(model))
    with hook_components(model, layers, "residual", stop_after_last=True) as got:
        run_forward(model, input_ids, torch.ones_like(input_ids))
    residual_LD = torch.stack([got[layer][0, start:stop].mean(dim=0) for layer in layers])
    return head(residual_LD).cpu().numpy()
