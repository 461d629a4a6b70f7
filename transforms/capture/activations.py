"""Activation capture with forward hooks: pooled (``[sample, layer, d_model]``) and per token.

Conventions (see ``transforms.capture.layers`` and ``transforms.sequences.positions``):

- Layer k = output of decoder block k = HF ``hidden_states[k+1]``; components
  ``residual`` / ``attn_out`` / ``mlp_out`` as in :func:`transforms.layers.component_module`.
- A sequence is anything with ``ids: list[int]`` and ``prompt_len: int`` (attribute or
  dict key). The stored ids are replayed as they are, never re-tokenized; no BOS is added.
- Pooling is the mean over the position's span, computed in float32 whatever the model
  dtype. Outputs are float32 numpy arrays in the caller's sample order.

How a batch runs: sequences are truncated after the last token any requested span needs
(``response[:5]`` needs prompt + 5 tokens; later tokens cannot influence earlier ones under
causal attention), sorted by that length (longest first, so an out-of-memory error shows up
in the first batch), right-padded with an attention mask (position ids stay ``0..n-1``,
real tokens never attend to pads), and run through the decoder trunk (``LlamaModel``,
``GPT2Model``, ...; never the LM head) with ``use_cache=False``. The hook of the deepest
requested layer raises a private exception that stops the forward pass there.

Streaming: :func:`iter_pooled` / :func:`iter_per_token` yield one batch at a time with the
original sample indices, so a caller can write each batch to disk; :func:`capture_pooled` /
:func:`capture_per_token` collect them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from transforms.capture.layers import COMPONENTS, component_module, decoder_trunk, model_dims
from transforms.sequences import FRAMES, EmptySpanError, Position, parse_position

logger = logging.getLogger(__name__)

Progress = Callable[[int], Any] | Any  # a callable(n_done) or a tqdm-like object with .update(n)
_PAD_ID = 0  # any valid id: padded positions are masked out and never read


class _StopForward(Exception):
    """Raised by the hook of the deepest requested layer to end the forward pass early."""


@dataclass(frozen=True)
class _Item:
    sample: int  # index in the caller's list
    ids: list[int]  # truncated ids
    start: int  # absolute span [start, end) in the sequence
    end: int


class TokenActs(NamedTuple):
    """Per-token activations of one sample: tokens ``[start, end)`` of its full sequence."""

    sample_idx: int
    start: int
    end: int
    acts_TLD: np.ndarray


class IndexRow(NamedTuple):
    """Rows ``[start, end)`` of a concatenated ``acts_TLD`` belong to sample ``sample_idx``."""

    sample_idx: int
    start: int
    end: int


# --------------------------------------------------------------------------- hooks


def _check_layers(model: nn.Module, layers: Sequence[int], component: str) -> list[int]:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}")
    layers = [int(x) for x in layers]
    if not layers:
        raise ValueError("no layers requested")
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate layers in {layers}")
    n_layers, _ = model_dims(model)
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: valid layers are 0-{n_layers - 1}")
    return layers


@contextmanager
def hook_components(
    model: nn.Module,
    layers: Sequence[int],
    component: str = "residual",
    callback: Callable[[int, torch.Tensor], None] | None = None,
    *,
    stop_after_last: bool = False,
) -> Iterator[dict[int, torch.Tensor]]:
    """Register forward hooks reading ``component`` at each of ``layers``; always removed on
    exit (also when the body raises).

    Each hook calls ``callback(layer, tensor_BTD)`` if given, else stores the (detached)
    tensor in the yielded dict ``{layer: tensor_BTD}``. With ``stop_after_last`` the hook of
    the deepest layer raises a private exception after reading; run the model through
    :func:`run_forward`, which catches it.
    """
    layers = _check_layers(model, layers, component)
    store: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int, read: Callable[[Any], torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = read(output)
            if callback is not None:
                callback(layer, tensor)
            else:
                store[layer] = tensor.detach()
            if stop_after_last and layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in layers:
            site = component_module(model, layer, component)
            handles.append(site.module.register_forward_hook(make_hook(layer, site.read)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _input_device(trunk: nn.Module) -> torch.device:
    get_emb = getattr(trunk, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(trunk.parameters()).device


def run_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Run the decoder trunk of ``model`` (no LM head) on a batch, ``use_cache=False``, under
    ``inference_mode``; an early stop raised by :func:`hook_components` ends it quietly."""
    trunk = decoder_trunk(model)
    device = _input_device(trunk)
    try:
        with torch.inference_mode():
            trunk(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                use_cache=False,
            )
    except _StopForward:
        pass


def capture_batch(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    component: str = "residual",
) -> dict[int, torch.Tensor]:
    """Full ``[batch, seq, d_model]`` component tensors (model dtype) of one padded batch,
    forward stopped after the deepest layer."""
    with hook_components(model, layers, component, stop_after_last=True) as store:
        run_forward(model, input_ids, attention_mask)
    return dict(store)


# --------------------------------------------------------------------------- batching


def _seq_fields(seq: Any) -> tuple[list[int], int]:
    if isinstance(seq, Mapping):
        ids, prompt_len = seq["ids"], seq["prompt_len"]
    else:
        ids, prompt_len = seq.ids, seq.prompt_len
    return list(ids), int(prompt_len)


def _tick(progress: Progress | None, n: int) -> None:
    if progress is None:
        return
    update = getattr(progress, "update", None)
    if callable(update):
        update(n)
    else:
        progress(n)


def _plan(
    sequences: Sequence[Any], position: Position, *, allow_empty: bool
) -> tuple[list[_Item], list[int]]:
    """Spans and truncated ids for every sequence; returns (items, indices of empty spans).
    Empty spans raise EmptySpanError (naming the sample) unless ``allow_empty``."""
    items, empty = [], []
    for i, seq in enumerate(sequences):
        ids, prompt_len = _seq_fields(seq)
        try:
            start, end = position.span(prompt_len, len(ids))
        except EmptySpanError as err:
            if not allow_empty:
                raise EmptySpanError(f"sample {i}: {err}") from None
            empty.append(i)
            continue
        except ValueError as err:
            raise ValueError(f"sample {i}: {err}") from None
        items.append(_Item(i, ids[:end], start, end))
    return items, empty


def _batches(items: list[_Item], batch_size: int) -> Iterator[list[_Item]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(items, key=lambda it: len(it.ids), reverse=True)
    for k in range(0, len(order), batch_size):
        yield order[k : k + batch_size]


def _pad(batch: list[_Item]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(it.ids) for it in batch)
    input_ids = torch.full((len(batch), width), _PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, it in enumerate(batch):
        input_ids[b, : len(it.ids)] = torch.tensor(it.ids, dtype=torch.long)
        mask[b, : len(it.ids)] = 1
    return input_ids, mask


def _mean_spans(hidden_BTD: torch.Tensor, batch: list[_Item]) -> torch.Tensor:
    """float32 ``[B, D]`` span means, computed in fp32 on the model's device; one transfer."""
    means = [hidden_BTD[b, it.start : it.end].to(torch.float32).mean(dim=0) for b, it in enumerate(batch)]
    return torch.stack(means).cpu()


def _cat_spans(hidden_BTD: torch.Tensor, batch: list[_Item]) -> torch.Tensor:
    """float32 ``[sum of span lengths, D]``: the batch's spans concatenated; one transfer."""
    spans = [hidden_BTD[b, it.start : it.end] for b, it in enumerate(batch)]
    return torch.cat(spans).to(torch.float32).cpu()


def _warn_if_training(model: nn.Module) -> None:
    if model.training:
        logger.warning("capturing from a model in training mode (dropout active): call model.eval()")


# --------------------------------------------------------------------------- pooled


def iter_pooled(
    model: nn.Module,
    sequences: Sequence[Any],
    position: Position | str,
    layers: Sequence[int],
    component: str = "residual",
    batch_size: int = 8,
    progress: Progress | None = None,
    on_empty: Literal["raise", "nan"] = "raise",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(sample_indices_B, acts_BLD)`` batch by batch (batch order, not sample order).

    ``acts_BLD[b, j]`` is the float32 mean of ``component`` at layer ``layers[j]`` over the
    span of ``position`` in sequence ``sample_indices_B[b]``. Empty spans raise
    EmptySpanError before any forward pass (``on_empty="raise"``) or are yielded first as
    NaN rows (``on_empty="nan"``). ``progress`` gets the number of sequences finished.
    """
    position = parse_position(position)
    layers = _check_layers(model, layers, component)
    if on_empty not in ("raise", "nan"):
        raise ValueError(f"on_empty must be 'raise' or 'nan', got {on_empty!r}")
    _, d_model = model_dims(model)
    items, empty = _plan(sequences, position, allow_empty=on_empty == "nan")
    _warn_if_training(model)
    if empty:
        logger.info("%d of %d sequences: empty %s span, NaN rows", len(empty), len(sequences), position)
        nan_BLD = np.full((len(empty), len(layers), d_model), np.nan, dtype=np.float32)
        yield np.asarray(empty, dtype=np.int64), nan_BLD
        _tick(progress, len(empty))
    for batch in _batches(items, batch_size):
        pooled: dict[int, torch.Tensor] = {}

        def pool(layer: int, hidden: torch.Tensor, batch: list[_Item] = batch, pooled: dict = pooled) -> None:
            pooled[layer] = _mean_spans(hidden, batch)

        input_ids, mask = _pad(batch)
        with hook_components(model, layers, component, pool, stop_after_last=True):
            run_forward(model, input_ids, mask)
        acts_BLD = torch.stack([pooled[layer] for layer in layers], dim=1).numpy()
        yield np.asarray([it.sample for it in batch], dtype=np.int64), acts_BLD
        _tick(progress, len(batch))


def capture_pooled(
    model: nn.Module,
    sequences: Sequence[Any],
    position: Position | str,
    layers: Sequence[int],
    component: str = "residual",
    batch_size: int = 8,
    progress: Progress | None = None,
    on_empty: Literal["raise", "nan"] = "raise",
) -> np.ndarray:
    """Mean-pooled activations ``acts_NLD`` float32 ``[len(sequences), len(layers), d_model]``
    in the caller's sample order; see :func:`iter_pooled`."""
    layers = list(layers)
    _, d_model = model_dims(model)
    acts_NLD = np.empty((len(sequences), len(layers), d_model), dtype=np.float32)
    for idx, acts_BLD in iter_pooled(
        model, sequences, position, layers, component, batch_size, progress, on_empty
    ):
        acts_NLD[idx] = acts_BLD
    return acts_NLD


# --------------------------------------------------------------------------- per token


def _frame_position(frame: str | Position) -> Position:
    if isinstance(frame, Position):
        return frame
    if frame in FRAMES:
        return Position(frame)  # type: ignore[arg-type]
    return parse_position(frame)


def iter_per_token(
    model: nn.Module,
    sequences: Sequence[Any],
    layers: Sequence[int],
    component: str = "residual",
    frame: str | Position = "all",
    batch_size: int = 8,
    progress: Progress | None = None,
) -> Iterator[list[TokenActs]]:
    """Yield, batch by batch, a list of :class:`TokenActs` (sample index, absolute token span
    ``[start, end)``, float32 ``acts_TLD``) for every token of ``frame`` (``"all"``,
    ``"prompt"``, ``"response"`` or any position such as ``"response[:20]"``).
    Samples whose frame is empty are yielded first with zero-token arrays."""
    position = _frame_position(frame)
    layers = _check_layers(model, layers, component)
    _, d_model = model_dims(model)
    items, empty = _plan(sequences, position, allow_empty=True)
    _warn_if_training(model)
    if empty:
        zero = np.zeros((0, len(layers), d_model), dtype=np.float32)
        spans = []
        for i in empty:
            ids, prompt_len = _seq_fields(sequences[i])
            lo = position.frame_bounds(prompt_len, len(ids))[0]
            spans.append(TokenActs(i, lo, lo, zero))
        yield spans
        _tick(progress, len(empty))
    slot = {layer: j for j, layer in enumerate(layers)}
    for batch in _batches(items, batch_size):
        # the batch's spans concatenated: [sum of span lengths, layer, d_model]
        n_rows = sum(it.end - it.start for it in batch)
        acts = torch.empty((n_rows, len(layers), d_model), dtype=torch.float32)

        def keep(layer: int, hidden: torch.Tensor, batch: list[_Item] = batch, acts: torch.Tensor = acts) -> None:
            acts[:, slot[layer]] = _cat_spans(hidden, batch)

        input_ids, mask = _pad(batch)
        with hook_components(model, layers, component, keep, stop_after_last=True):
            run_forward(model, input_ids, mask)
        chunk, offset = [], 0
        for it in batch:
            n = it.end - it.start
            chunk.append(TokenActs(it.sample, it.start, it.end, acts[offset : offset + n].numpy()))
            offset += n
        yield chunk
        _tick(progress, len(batch))


def capture_per_token(
    model: nn.Module,
    sequences: Sequence[Any],
    layers: Sequence[int],
    component: str = "residual",
    frame: str | Position = "all",
    batch_size: int = 8,
    progress: Progress | None = None,
) -> tuple[np.ndarray, list[IndexRow]]:
    """Per-token activations, ragged-concatenated in sample order.

    Returns ``(acts_TLD, rows)``: ``acts_TLD`` float32 ``[total_tokens, len(layers),
    d_model]``; ``rows[i] = (sample_idx, start, end)`` says rows ``start:end`` of
    ``acts_TLD`` are sample ``sample_idx`` (one row per sample, in sample order; empty
    frames give ``start == end``). The absolute token positions of sample ``i`` are the
    frame's span ``parse_position(frame).span(prompt_len, len(ids))`` (``"prompt"`` meaning
    ``prompt[:]``); :func:`iter_per_token` reports them per sample.
    """
    layers = list(layers)
    by_sample: dict[int, np.ndarray] = {}
    for chunk in iter_per_token(model, sequences, layers, component, frame, batch_size, progress):
        for t in chunk:
            by_sample[t.sample_idx] = t.acts_TLD
    rows: list[IndexRow] = []
    offset = 0
    for i in range(len(sequences)):
        n = by_sample[i].shape[0]
        rows.append(IndexRow(i, offset, offset + n))
        offset += n
    if not sequences:
        _, d_model = model_dims(model)
        return np.zeros((0, len(layers), d_model), dtype=np.float32), rows
    return np.concatenate([by_sample[i] for i in range(len(sequences))], axis=0), rows
