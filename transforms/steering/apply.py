"""Applying steering edits inside forward passes: add ``coef * v`` to (or project ``u`` out
of) decoder-block outputs. The hooks go through :func:`transforms.capture.attached`, so
they are removed on exit whatever happens inside.

Conventions
-----------
- **Layer k = output of decoder block k = HF ``hidden_states[k+1]``** (see
  :mod:`transforms.capture.layers`). An edit at layer k changes what block k returns, so every
  later block, and ``hidden_states[k+1]`` itself, see the edited residual stream. Our
  hooks are prepended: transformers 5 records ``hidden_states`` with its own block hooks,
  installed at the first ``output_hidden_states`` call, and a hook appended after those
  changes the downstream layers but not ``hidden_states[k+1]``.
- Arithmetic is float32 whatever the model dtype: ``h32 = h.float()``, edit, cast back.
  ``add``: ``h + coef * v`` (``v`` is used as given, not normalised: the perturbation norm
  is ``|coef| * ||v||``). ``ablate``: ``h - (h . u) u`` with ``u = v / ||v||`` (``coef``
  unused). Edits of one layer apply in the order given.
- Positions, in the left-padded frame of a generate call whose prompts are ``W`` tokens
  wide (``W`` = the generation start, the padded prompt width):
  ``response``  = positions ``>= W - 1`` (the default): every state that produces a
  response token, i.e. the last prompt position (``prompt[-1]``, which produces the
  first response token; persona_vectors steers it too) plus every generated position;
  ``generated`` = positions ``>= W``: generated tokens only, the first response token
  itself is sampled from an unsteered state (``response`` before code version 3 of the
  steering builders);
  ``prompt``    = non-pad positions before ``W`` (so it shares ``W - 1`` with ``response``);
  ``all``       = every non-pad position. Pad positions are never edited. A forward
  without a cache is a prefill: under ``response`` its last position is edited.
- Rows: an :class:`~transforms.steering.edits.Edit` applies to every row of the batch; a
  :class:`~transforms.steering.edits.RowEdit` to rows ``[start, end)`` only, which is how
  :func:`transforms.steering.generate.generate_steered` runs many configurations in
  one ``generate`` call (each configuration on its own slice of the batch).

How positions are found in each forward pass (a pre-hook on the decoder trunk):
``past`` = ``past_key_values.get_seq_length()`` when a cache is passed, else the 2-D
attention mask's width minus the number of new tokens, else 0. A forward with
``past == 0`` is a prefill and sets ``W`` to its length (unless ``generation_start`` was
given, e.g. to recompute prompt + response in one uncached pass). Pads are the zeros of
the 2-D attention mask (``generate`` drops an all-ones mask: no mask means no pads) and,
when ``prompt_lens`` is given, positions ``< W - prompt_lens[row]``. Not supported:
beam search / ``num_return_sequences > 1`` (they re-order or expand the rows) and 4-D
masks passed in by the caller (pads then need ``prompt_lens``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transforms.capture import Hook, attached, decoder_layers, decoder_trunk, first_tensor, model_dims
from transforms.steering.edits import Edit, RowEdit

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class SteeringHandle:
    """What the context saw (for checks and logs): forward passes, the generation start."""

    n_forwards: int = 0
    n_prefills: int = 0
    generation_start: int | None = None
    _masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def mask(self, positions: str, shape_BT: tuple[int, ...], what: str = "steering") -> torch.Tensor:
        """Bool ``[B, T]`` mask of ``positions`` for the forward pass now running (set by
        :func:`position_hook`); RuntimeError when the trunk pre-hook did not run for it."""
        found = self._masks.get(positions)
        if found is None or tuple(found.shape) != tuple(shape_BT):
            raise RuntimeError(f"{what}: no position masks for this forward pass (was the trunk pre-hook skipped?)")
        return found


class _Op:
    __slots__ = ("start", "end", "kind", "positions", "vec")

    def __init__(self, start: int, end: int | None, edit: Edit) -> None:
        self.start, self.end, self.kind, self.positions = start, end, edit.kind, edit.positions
        vec = edit.vector_D
        self.vec = edit.coef * vec if edit.kind == "add" else vec / vec.norm()

    def on(self, device: Any) -> torch.Tensor:
        if self.vec.device != device:
            self.vec = self.vec.to(device)
        return self.vec


def _past_length(kwargs: Mapping[str, Any], n_new: int) -> int:
    cache = kwargs.get("past_key_values")
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    mask = kwargs.get("attention_mask")
    if mask is not None and getattr(mask, "ndim", 0) == 2 and mask.shape[1] >= n_new:
        return int(mask.shape[1]) - n_new
    return 0


def _position_masks(
    handle: SteeringHandle, args: tuple, kwargs: Mapping[str, Any],
    prompt_lens: torch.Tensor | None, fixed_start: int | None,
) -> None:
    """Pre-hook body: compute the masks ``[B, T]`` of every name in :data:`POSITIONS`."""
    import torch

    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None and args:
        x = args[0]
    if x is None:
        raise RuntimeError("steering: cannot find input_ids / inputs_embeds in the trunk call")
    n_rows, n_new = int(x.shape[0]), int(x.shape[1])
    past = _past_length(kwargs, n_new)
    if past == 0:
        handle.n_prefills += 1
        handle.generation_start = fixed_start if fixed_start is not None else n_new
    elif handle.generation_start is None:
        raise RuntimeError(
            "steering: a cached forward pass arrived without its prefill inside the context; "
            "pass generation_start"
        )
    start = handle.generation_start
    device = x.device
    pos_T = torch.arange(past, past + n_new, device=device)
    pad = torch.zeros((n_rows, n_new), dtype=torch.bool, device=device)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] >= n_new:
        pad |= mask[:, -n_new:].to(device) == 0
    if prompt_lens is not None:
        if prompt_lens.shape[0] != n_rows:
            raise ValueError(f"steering: prompt_lens has {prompt_lens.shape[0]} rows, batch has {n_rows}")
        first_real = start - prompt_lens.to(device)  # [B]
        pad |= pos_T[None, :] < first_real[:, None]
    real = ~pad
    is_generated = (pos_T >= start)[None, :]
    is_response = (pos_T >= start - 1)[None, :]  # + prompt[-1], the state of the first response token
    handle._masks = {"all": real, "prompt": real & ~is_generated, "generated": real & is_generated,
                     "response": real & is_response}
    handle.n_forwards += 1


def _block_hook(handle: SteeringHandle, ops: list[_Op], layer: int):
    import torch

    def hook(module: Any, args: tuple, output: Any) -> Any:
        hidden = first_tensor(output)
        n_rows = hidden.shape[0]
        masks = handle._masks
        if not masks or masks["all"].shape != hidden.shape[:2]:
            raise RuntimeError(f"steering: no position masks for layer {layer} (was the trunk pre-hook skipped?)")
        h32 = hidden.float().clone()
        for op in ops:
            end = n_rows if op.end is None else op.end
            if end > n_rows:
                raise ValueError(f"steering: edit rows [{op.start}, {end}) exceed the batch of {n_rows} rows")
            seg = h32[op.start:end]
            vec = op.on(hidden.device)
            if op.kind == "add":
                new = seg + vec
            else:
                new = seg - (seg @ vec)[..., None] * vec
            h32[op.start:end] = torch.where(masks[op.positions][op.start:end, :, None], new, seg)
        steered = h32.to(hidden.dtype)
        if isinstance(output, tuple):
            return (steered, *output[1:])
        if isinstance(output, list):
            return [steered, *output[1:]]
        return steered

    return hook


def position_hook(
    model: nn.Module, handle: SteeringHandle, *,
    prompt_lens: Sequence[int] | None = None, generation_start: int | None = None,
) -> Hook:
    """The decoder-trunk pre-hook that sets ``handle``'s position masks before every forward
    pass (conventions in the module docstring); shared by :func:`steer` and
    :func:`transforms.steering.clamp.clamp_latents`. Register it before the block hooks."""
    import torch

    lens = torch.tensor(list(prompt_lens), dtype=torch.long) if prompt_lens is not None else None
    return Hook(decoder_trunk(model),
                lambda mod, args, kwargs: _position_masks(handle, args, kwargs, lens, generation_start),
                pre=True, with_kwargs=True)


@contextmanager
def steer(
    model: nn.Module,
    edits: Sequence[Edit | RowEdit],
    *,
    prompt_lens: Sequence[int] | None = None,
    generation_start: int | None = None,
) -> Iterator[SteeringHandle]:
    """Apply ``edits`` to every forward pass / ``generate`` call inside the ``with`` block.

    ``prompt_lens``: real (unpadded) prompt length of each row of a left-padded batch,
    making pads explicit whatever mask the model receives. ``generation_start``: fix ``W``
    (the padded prompt width) instead of taking it from the prefill, for an uncached forward
    over prompt + response. Hooks are removed on exit, also after an exception.
    """
    blocks = decoder_layers(model)
    n_layers, d_model = model_dims(model)
    by_layer: dict[int, list[_Op]] = {}
    for item in edits:
        edit, start, end = (item.edit, item.start, item.end) if isinstance(item, RowEdit) else (item, 0, None)
        if not 0 <= edit.layer < n_layers:
            raise ValueError(f"layer {edit.layer} out of range: valid layers are 0-{n_layers - 1}")
        if edit.vector_D.shape[0] != d_model:
            raise ValueError(f"layer {edit.layer}: vector has {edit.vector_D.shape[0]} dims, model d_model is {d_model}")
        by_layer.setdefault(edit.layer, []).append(_Op(start, end, edit))
    handle = SteeringHandle(generation_start=generation_start)
    hooks: list[Hook] = []
    if by_layer:
        hooks.append(position_hook(model, handle, prompt_lens=prompt_lens, generation_start=generation_start))
        # prepended: before transformers' own hidden_states hooks (see the module docstring)
        hooks += [Hook(blocks[layer], _block_hook(handle, ops, layer), prepend=True)
                  for layer, ops in sorted(by_layer.items())]
        logger.debug("steering hooks on layers %s (%d edits)", sorted(by_layer), len(edits))
    try:
        with attached(hooks):
            yield handle
    finally:
        handle._masks = {}
