"""Replaying a recorded corrupted run so a batch of patched rows computes only what differs.

A row patched at block ``L``, position ``p`` equals the corrupted run (a) in every block below
``L`` and (b) at every position before ``p`` in every block (attention is causal). So a chunk
of rows whose lowest block is ``start`` and whose earliest patched position is ``prefix``:

- runs blocks ``start ..`` only: blocks below pass their input on, and block ``start - 1``
  hands on the corrupted run's recorded output (:func:`skipped_blocks`);
- feeds only the tokens ``prefix ..``: the corrupted run's keys and values of the tokens
  before ``prefix`` go in as a transformers ``DynamicCache`` (built with the model's config, so
  sliding-window layers keep and mask their window as in generation), and position ids continue
  from ``prefix`` (the models derive them from the cache length; GPT-2's absolute position
  embeddings included).

The prefix is used only where every cache layer is a plain or sliding-window dynamic layer
(:func:`prefix_cache_supported`); other models (chunked attention, shared key/value layers,
cross-attention, no ``past_key_values``) replay with ``prefix = 0``. ``start = 0, prefix = 0``
is a plain forward.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.capture.hooks import Hook, attached
from transforms.capture.layers import decoder_layers, first_tensor, unwrap_model

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


def with_first(output: Any, tensor: torch.Tensor) -> Any:
    """``output`` with its primary tensor replaced (a tensor, or element 0 of a tuple)."""
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    return tensor


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def keeps_last(model: nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (only the last position through
    the LM head)."""
    return _accepts(model, "logits_to_keep")


def final_logits(model: nn.Module, ids_BT: torch.Tensor, keep_last: bool, cache: Any = None) -> torch.Tensor:
    """Next-token logits after the prompt, ``[B, V]``; ``cache``: the keys and values of the
    tokens before ``ids_BT`` (a transformers ``Cache``)."""
    extra: dict[str, Any] = {"logits_to_keep": 1} if keep_last else {}
    if cache is not None:
        extra.update(past_key_values=cache, use_cache=True)
    else:
        extra["use_cache"] = False
    return model(input_ids=ids_BT, **extra).logits[:, -1]


def prefix_cache_supported(model: nn.Module) -> bool:
    """Whether the keys and values of a prefix can be handed in as a ``DynamicCache`` built from
    the config: one full or sliding-window dynamic layer per decoder block, no cross-attention."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    config = getattr(unwrap_model(model), "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not _accepts(model, "past_key_values"):
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "add_cross_attention", False):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception as exc:  # an exotic config: replaying without a prefix is still exact
        logger.debug("no prefix cache for %s: %s", type(config).__name__, exc)
        return False
    kinds = {type(layer) for layer in layers}
    return len(layers) == len(decoder_layers(model)) and kinds <= {DynamicLayer, DynamicSlidingWindowLayer}


@dataclass
class RecordedRun:
    """One prompt's forward kept for replay: every block's output as returned, each layer's
    keys and values ``[1, kv_heads, T, head_dim]`` (None without prefix support), the logits."""

    ids_1T: torch.Tensor
    blocks: list[Any]
    keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None
    logits: torch.Tensor


def record_run(model: nn.Module, ids_1T: torch.Tensor, keep_last: bool, with_prefix: bool) -> RecordedRun:
    """Run ``ids_1T`` recording block outputs and (``with_prefix``) every layer's full keys and
    values: the cache has no config, so sliding-window layers keep all tokens too (the masks
    still apply the window, so the logits are those of a plain forward)."""
    from transformers.cache_utils import DynamicCache

    blocks = decoder_layers(model)
    outputs: list[Any] = [None] * len(blocks)

    def make(i: int) -> Hook:
        return Hook(blocks[i], lambda m, args, out: outputs.__setitem__(i, out))

    cache = DynamicCache() if with_prefix else None
    with attached([make(i) for i in range(len(blocks))]):
        logits = final_logits(model, ids_1T, keep_last, cache)
    kv = None
    if cache is not None:
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        n_tokens = ids_1T.shape[1]
        if len(kv) != len(blocks) or any(k is None or k.shape[-2] != n_tokens for k, _ in kv):
            logger.info("keys/values not recorded for every layer: patching without a shared prefix")
            kv = None
    return RecordedRun(ids_1T, outputs, kv, logits)


@contextmanager
def skipped_blocks(model: nn.Module, run: RecordedRun, start: int, prefix: int, n_rows: int) -> Iterator[None]:
    """Blocks ``0 .. start-1`` not run: each passes its input on untouched, and block
    ``start-1`` returns its recorded output (positions ``prefix ..``) repeated over ``n_rows``
    rows. The override is an instance ``forward`` (hooks still fire), restored on exit; an
    existing instance forward (accelerate's device-map wrapper) is put back as it was."""
    blocks = decoder_layers(model)[:start]
    saved = [b.__dict__.get("forward") for b in blocks]

    def passthrough(structure: Any, replay: torch.Tensor | None) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden = replay if replay is not None else (args[0] if args else kwargs["hidden_states"])
            return with_first(structure, hidden)

        return forward

    try:
        for i, block in enumerate(blocks):
            replay = None
            if i == start - 1:
                replay = first_tensor(run.blocks[i])[:, prefix:].expand(n_rows, -1, -1).contiguous()
            block.forward = passthrough(run.blocks[i], replay)
        yield
    finally:
        for block, old in zip(blocks, saved):
            if old is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = old


def _prefix_cache(model: nn.Module, run: RecordedRun, start: int, prefix: int, n_rows: int) -> Any:
    """A ``DynamicCache`` holding the recorded keys/values of tokens ``0 .. prefix-1``:
    repeated over the rows for the blocks that run, one row for skipped blocks (only their
    length is read, for position ids and mask sizes)."""
    from transformers.cache_utils import DynamicCache

    assert run.keys_values is not None
    data = []
    for i, (k, v) in enumerate(run.keys_values):
        k, v = k[:, :, :prefix], v[:, :, :prefix]
        if i >= start:
            k, v = k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1)
        data.append((k, v))
    return DynamicCache(data, config=unwrap_model(model).config)


def replay_logits(model: nn.Module, run: RecordedRun, start: int, prefix: int, n_rows: int,
                  keep_last: bool) -> torch.Tensor:
    """Final logits ``[n_rows, V]`` of the recorded prompt run as ``n_rows`` rows from block
    ``start`` and position ``prefix`` on (hooks attached by the caller see positions
    ``prefix ..`` only). ``prefix > 0`` needs ``run.keys_values``."""
    if prefix and run.keys_values is None:
        raise ValueError("a replay prefix needs the recorded keys and values")
    cache = _prefix_cache(model, run, start, prefix, n_rows) if prefix else None
    ids = run.ids_1T[:, prefix:].expand(n_rows, -1)
    with skipped_blocks(model, run, start, prefix, n_rows):
        return final_logits(model, ids, keep_last, cache)
