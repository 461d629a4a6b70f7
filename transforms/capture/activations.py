"""Activation capture with forward hooks: pooled (``[sample, layer, d_model]``) and per token.

Conventions (see ``transforms.capture.layers`` and ``transforms.sequences.positions``):

- Layer k = output of decoder block k = HF ``hidden_states[k+1]``; components
  ``residual`` / ``attn_out`` / ``mlp_out`` as in :func:`transforms.capture.layers.component_module`.
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
requested layer is followed by a stop (:func:`transforms.capture.hooks.stop_after`): nothing
deeper is computed. Batch preparation is :mod:`transforms.capture.spans`.

Streaming: :func:`iter_pooled` / :func:`iter_per_token` yield one batch at a time with the
original sample indices, so a caller can write each batch to disk; :func:`capture_pooled` /
:func:`capture_per_token` collect them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from transforms.capture.hooks import check_layers, hook_components, run_forward
from transforms.capture.layers import model_dims
from transforms.capture.spans import SpanItem, pad_batch, plan_spans, seq_fields, sorted_batches
from transforms.sequences import FRAMES, Position, parse_position

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

Progress = Callable[[int], Any] | Any  # a callable(n_done) or a tqdm-like object with .update(n)


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


def _tick(progress: Progress | None, n: int) -> None:
    if progress is None:
        return
    update = getattr(progress, "update", None)
    if callable(update):
        update(n)
    else:
        progress(n)


def _mean_spans(hidden_BTD: torch.Tensor, batch: list[SpanItem]) -> torch.Tensor:
    """float32 ``[B, D]`` span means, computed in fp32 on the model's device; one transfer."""
    import torch

    means = [hidden_BTD[b, it.start : it.end].to(torch.float32).mean(dim=0) for b, it in enumerate(batch)]
    return torch.stack(means).cpu()


def _cat_spans(hidden_BTD: torch.Tensor, batch: list[SpanItem]) -> torch.Tensor:
    """float32 ``[sum of span lengths, D]``: the batch's spans concatenated; one transfer."""
    import torch

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
    import numpy as np
    import torch

    position = parse_position(position)
    layers = check_layers(model, layers, component)
    if on_empty not in ("raise", "nan"):
        raise ValueError(f"on_empty must be 'raise' or 'nan', got {on_empty!r}")
    _, d_model = model_dims(model)
    items, empty = plan_spans(sequences, position, allow_empty=on_empty == "nan")
    _warn_if_training(model)
    if empty:
        logger.info("%d of %d sequences: empty %s span, NaN rows", len(empty), len(sequences), position)
        nan_BLD = np.full((len(empty), len(layers), d_model), np.nan, dtype=np.float32)
        yield np.asarray(empty, dtype=np.int64), nan_BLD
        _tick(progress, len(empty))
    for batch in sorted_batches(items, batch_size):
        pooled: dict[int, torch.Tensor] = {}

        def pool(layer: int, hidden: torch.Tensor, batch: list[SpanItem] = batch, pooled: dict = pooled) -> None:
            pooled[layer] = _mean_spans(hidden, batch)

        input_ids, mask = pad_batch(batch)
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
    import numpy as np

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
    import numpy as np
    import torch

    position = _frame_position(frame)
    layers = check_layers(model, layers, component)
    _, d_model = model_dims(model)
    items, empty = plan_spans(sequences, position, allow_empty=True)
    _warn_if_training(model)
    if empty:
        zero = np.zeros((0, len(layers), d_model), dtype=np.float32)
        spans = []
        for i in empty:
            ids, prompt_len = seq_fields(sequences[i])
            lo = position.frame_bounds(prompt_len, len(ids))[0]
            spans.append(TokenActs(i, lo, lo, zero))
        yield spans
        _tick(progress, len(empty))
    slot = {layer: j for j, layer in enumerate(layers)}
    for batch in sorted_batches(items, batch_size):
        # the batch's spans concatenated: [sum of span lengths, layer, d_model]
        n_rows = sum(it.end - it.start for it in batch)
        acts = torch.empty((n_rows, len(layers), d_model), dtype=torch.float32)

        def keep(layer: int, hidden: torch.Tensor, batch: list[SpanItem] = batch, acts: torch.Tensor = acts) -> None:
            acts[:, slot[layer]] = _cat_spans(hidden, batch)

        input_ids, mask = pad_batch(batch)
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
    import numpy as np

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
