"""Steered generation sweeps: many configurations in one batched ``generate`` call each, with
the unsteered prompt prefill shared between configurations where positions allow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transforms.capture import decoder_trunk, input_device
from transforms.sequences import Generated, GenerationConfig, generate_batch
from transforms.steering.apply import steer
from transforms.steering.edits import RowEdit, SteeringConfig

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)


# Names that leave positions < W - 1 unedited: their prefill (all prompt tokens but the last) is shareable.
_SHAREABLE = ("response", "generated")


def _chunks(n_rows: int, max_batch: int) -> list[tuple[int, int]]:
    return [(s, min(s + max_batch, n_rows)) for s in range(0, n_rows, max_batch)]


class _ResumeFromCache:
    """``model`` whose ``generate`` resumes from a prefilled cache; everything else is the
    model's (lets :func:`generate_batch` stay the one place that sets decoding options)."""

    def __init__(self, model: Any, cache: Any) -> None:
        self._model, self._cache = model, cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, **kwargs: Any) -> Any:
        return self._model.generate(past_key_values=self._cache, **kwargs)


def _prefill_distinct(model: nn.Module, batch: Sequence[Sequence[int]], pad_id: int) -> Any:
    """KV cache of ``batch``'s prompts minus their last token (left padded to the batch
    width, position ids as ``generate`` numbers them), computed once per distinct prompt
    and then gathered to one cache row per batch row."""
    import torch

    from transforms.sequences import left_pad

    device = input_device(model)
    distinct = list(dict.fromkeys(tuple(p) for p in batch))
    ids, mask = (x.to(device) for x in left_pad(distinct, pad_id))
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.inference_mode():
        out = decoder_trunk(model)(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                   position_ids=positions[:, :-1], use_cache=True)
    cache = out.past_key_values
    index = {p: i for i, p in enumerate(distinct)}
    cache.batch_select_indices(torch.tensor([index[tuple(p)] for p in batch], device=device))
    return cache


def generate_steered(
    model: nn.Module,
    tokenizer: Any,
    prompts_ids: Sequence[Sequence[int]],
    configs: Sequence[SteeringConfig],
    gen: GenerationConfig,
    *,
    max_batch: int = 64,
    share_prefill: bool = True,
) -> list[list[Generated]]:
    """Generate every prompt under every configuration, ``result[config][prompt]``.

    Rows are laid out config-major (config ``c`` owns rows ``[c*P, (c+1)*P)`` of the
    virtual batch of ``len(configs) * P`` rows) and cut into sub-batches of at most
    ``max_batch`` rows; each sub-batch is ONE left-padded ``generate`` call
    (:func:`transforms.sequences.generate_batch`, seeded by the sub-batch index) with each
    configuration's edits restricted to its rows.

    ``share_prefill``: when every edit of a sub-batch is at ``response`` or ``generated``
    positions, the states of all prompt tokens but the last do not depend on the
    configuration, so their KV cache is computed once per distinct prompt, unsteered, and
    copied to its rows; ``generate`` then starts from the last prompt token, inside the
    steering context (``response`` edits it there). Greedy results equal running each
    configuration alone (up to float ties); sampled ones are seeded per sub-batch, so they
    depend on ``max_batch``.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    prompts = [list(p) for p in prompts_ids]
    if not prompts or any(not p for p in prompts):
        raise ValueError("generate_steered needs at least one prompt and no empty prompts")
    n_prompts, n_rows = len(prompts), len(configs) * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    flat: list[Generated] = []
    for batch_index, (lo, hi) in enumerate(_chunks(n_rows, max_batch)):
        row_edits: list[RowEdit] = []
        for c in range(lo // n_prompts, (hi - 1) // n_prompts + 1):
            start, end = max(c * n_prompts, lo) - lo, min((c + 1) * n_prompts, hi) - lo
            row_edits += [RowEdit(start, end, e) for e in configs[c].edits]
        batch = [prompts[r % n_prompts] for r in range(lo, hi)]
        width = max(len(p) for p in batch)
        shared = share_prefill and width > 1 and all(r.edit.positions in _SHAREABLE for r in row_edits)
        runner: Any = _ResumeFromCache(model, _prefill_distinct(model, batch, pad_id)) if shared else model
        with steer(model, row_edits, prompt_lens=[len(p) for p in batch], generation_start=width):
            flat += generate_batch(runner, tokenizer, batch, gen, batch_index)
        logger.info("steered sub-batch %d: rows %d-%d of %d, %d edits, shared prefill %s",
                    batch_index, lo, hi, n_rows, len(row_edits), shared)
    return [flat[c * n_prompts:(c + 1) * n_prompts] for c in range(len(configs))]
