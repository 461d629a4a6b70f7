"""Batch preparation for capture: which tokens each sequence needs, in which batches.

A sequence is anything with ``ids: list[int]`` and ``prompt_len: int`` (attribute or dict
key); its ids are replayed as stored, never re-tokenized, no BOS added.
:func:`plan_spans` resolves a position to an absolute span per sequence and truncates the
ids after the span's end (later tokens cannot influence earlier ones under causal
attention); :func:`sorted_batches` groups them longest first (an out-of-memory error shows
up in the first batch); :func:`pad_batch` right-pads a batch with an attention mask
(position ids stay ``0..n-1``, real tokens never attend to pads).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.sequences import EmptySpanError, Position

if TYPE_CHECKING:
    import torch

PAD_ID = 0  # any valid id: padded positions are masked out and never read


@dataclass(frozen=True)
class SpanItem:
    """One sequence to run: its truncated ids and the absolute span ``[start, end)`` read."""

    sample: int  # index in the caller's list
    ids: list[int]
    start: int
    end: int


def seq_fields(seq: Any) -> tuple[list[int], int]:
    """``(ids, prompt_len)`` of a sequence given as a mapping or an object."""
    if isinstance(seq, Mapping):
        ids, prompt_len = seq["ids"], seq["prompt_len"]
    else:
        ids, prompt_len = seq.ids, seq.prompt_len
    return list(ids), int(prompt_len)


def plan_spans(
    sequences: Sequence[Any], position: Position, *, allow_empty: bool
) -> tuple[list[SpanItem], list[int]]:
    """Spans and truncated ids for every sequence; returns (items, indices of empty spans).
    Empty spans raise EmptySpanError (naming the sample) unless ``allow_empty``."""
    items, empty = [], []
    for i, seq in enumerate(sequences):
        ids, prompt_len = seq_fields(seq)
        try:
            start, end = position.span(prompt_len, len(ids))
        except EmptySpanError as err:
            if not allow_empty:
                raise EmptySpanError(f"sample {i}: {err}") from None
            empty.append(i)
            continue
        except ValueError as err:
            raise ValueError(f"sample {i}: {err}") from None
        items.append(SpanItem(i, ids[:end], start, end))
    return items, empty


def sorted_batches(items: list[SpanItem], batch_size: int) -> Iterator[list[SpanItem]]:
    """``items`` longest first, in batches of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(items, key=lambda it: len(it.ids), reverse=True)
    for k in range(0, len(order), batch_size):
        yield order[k : k + batch_size]


def pad_batch(batch: list[SpanItem]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``, both long ``[B, longest]``, on the CPU."""
    import torch

    width = max(len(it.ids) for it in batch)
    input_ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, it in enumerate(batch):
        input_ids[b, : len(it.ids)] = torch.tensor(it.ids, dtype=torch.long)
        mask[b, : len(it.ids)] = 1
    return input_ids, mask
