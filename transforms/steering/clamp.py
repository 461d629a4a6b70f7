"""Causal clamping of dictionary latents (SAE or one model's slice of a crosscoder) during
generation: set a latent to a value, scale it, or zero it at a decoder-block output.

The edit at layer ``k`` (block ``k``'s output ``x``, the residual stream; layer convention in
:mod:`transforms.capture.layers`), for the clamped latents ``S`` only::

    x_s   = x * input_scale - pre_bias_D            (pre_bias_D = 0 when absent)
    pre_S = x_s @ enc_weight_DF[:, S] + enc_bias_F[S]
    f_S   = pre_S * (pre_S > threshold_F[S])        (JumpReLU; relu(pre_S) without thresholds)
    x'    = x + (f'_S - f_S) @ dec_weight_FD[S] / input_scale

with ``f'_S`` = ``value`` (``set``), ``f_S * value`` (``scale``) or ``0`` (``zero``). Only the
clamped latents' own decoder contributions change: the other latents, the decoder bias and the
dictionary's reconstruction error ("error term") stay in ``x'`` as they were, because ``x`` is
edited rather than replaced by a reconstruction. Only the columns of ``S`` are encoded.

Arithmetic is float32 whatever the model dtype (cast back after). Positions and rows follow
:mod:`transforms.steering.apply` (the same trunk pre-hook, so KV-cache decoding and left
padding are handled as for steering; pads are never edited). Every clamped latent is encoded
from the block's unedited output, so several clamps on one layer do not depend on their order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from transforms.capture import Hook, attached, decoder_layers, first_tensor, model_dims
from transforms.sequences import Generated, GenerationConfig, generate_batch
from transforms.steering.apply import SteeringHandle, position_hook
from transforms.steering.edits import POSITIONS

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

ClampMode = Literal["set", "scale", "zero"]
CLAMP_MODES: tuple[str, ...] = ("set", "scale", "zero")


def _tensor(value: Any, name: str, ndim: int) -> torch.Tensor:
    import torch

    t = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    t = t.to(device="cpu", dtype=torch.float32)
    if t.ndim != ndim or t.numel() == 0:
        raise ValueError(f"dictionary {name} must be {ndim}-D and non-empty, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"dictionary {name} has non-finite values")
    return t


@dataclass(frozen=True, eq=False)
class LatentDictionary:
    """Encoder / decoder of a dictionary at one layer, as plain tensors (numpy arrays or
    tensors in; stored as float32 CPU tensors). ``threshold_F``: JumpReLU thresholds (else
    relu); ``input_scale``: activations are multiplied by it before encoding (and edits
    divided by it); ``pre_bias_D``: subtracted before encoding (SAELens ``apply_b_dec_to_input``)."""

    enc_weight_DF: Any
    enc_bias_F: Any
    dec_weight_FD: Any
    threshold_F: Any = None
    input_scale: float = 1.0
    pre_bias_D: Any = None

    def __post_init__(self) -> None:
        enc = _tensor(self.enc_weight_DF, "enc_weight_DF", 2)
        d, f = enc.shape
        shapes = {"enc_bias_F": (f,), "dec_weight_FD": (f, d), "threshold_F": (f,), "pre_bias_D": (d,)}
        object.__setattr__(self, "enc_weight_DF", enc)
        for name, shape in shapes.items():
            raw = getattr(self, name)
            if raw is None and name in ("threshold_F", "pre_bias_D"):
                continue
            t = _tensor(raw, name, len(shape))
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"dictionary {name} has shape {tuple(t.shape)}, expected {shape} (d_model={d}, latents={f})")
            object.__setattr__(self, name, t)
        scale = float(self.input_scale)
        if not scale > 0 or scale == float("inf"):
            raise ValueError(f"dictionary input_scale must be finite and > 0, got {self.input_scale!r}")
        object.__setattr__(self, "input_scale", scale)

    @property
    def d_model(self) -> int:
        return int(self.enc_weight_DF.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.enc_weight_DF.shape[1])

    def check_latents(self, latents: Sequence[int]) -> None:
        """ValueError (one line) when a latent index is outside ``0 .. n_latents-1``."""
        bad = [i for i in latents if not 0 <= i < self.n_latents]
        if bad:
            raise ValueError(f"latent indices {bad} out of range: valid latents are 0-{self.n_latents - 1}")

    def encode(self, acts_ND: torch.Tensor, latents: Sequence[int]) -> torch.Tensor:
        """Activations ``[..., K]`` of ``latents`` only, float32, for ``acts_ND [..., D]``."""
        self.check_latents(latents)
        return _Slice(self, tuple(latents)).encode(acts_ND.float())


class _Slice:
    """The columns of one clamp's latents, moved to the activations' device on first use."""

    def __init__(self, dic: LatentDictionary, latents: tuple[int, ...]) -> None:
        import torch

        idx = torch.tensor(latents, dtype=torch.long)
        self.scale = dic.input_scale
        self.parts: dict[str, torch.Tensor | None] = {
            "enc_DK": dic.enc_weight_DF[:, idx].contiguous(), "bias_K": dic.enc_bias_F[idx],
            "dec_KD": dic.dec_weight_FD[idx].contiguous(),
            "thr_K": None if dic.threshold_F is None else dic.threshold_F[idx],
            "pre_D": dic.pre_bias_D,
        }

    def on(self, device: Any) -> dict[str, torch.Tensor | None]:
        if self.parts["enc_DK"].device != device:
            self.parts = {k: None if v is None else v.to(device) for k, v in self.parts.items()}
        return self.parts

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        p = self.on(x.device)
        xs = x * self.scale
        if p["pre_D"] is not None:
            xs = xs - p["pre_D"]
        pre = xs @ p["enc_DK"] + p["bias_K"]
        return pre.clamp(min=0) if p["thr_K"] is None else pre * (pre > p["thr_K"])


@dataclass(frozen=True)
class Clamp:
    """Clamp ``latents`` to ``value`` (``set``), multiply them by ``value`` (``scale``) or zero
    them (``zero``; ``value`` unused)."""

    latents: tuple[int, ...]
    mode: ClampMode = "zero"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in CLAMP_MODES:
            raise ValueError(f"unknown clamp mode {self.mode!r}: expected one of {', '.join(CLAMP_MODES)}")
        latents = (self.latents,) if isinstance(self.latents, int) else tuple(int(i) for i in self.latents)
        if not latents:
            raise ValueError("a clamp needs at least one latent")
        if len(set(latents)) != len(latents):
            raise ValueError(f"duplicate latents in clamp {list(latents)}")
        value = float(self.value)
        if value != value or abs(value) == float("inf"):
            raise ValueError(f"clamp value must be finite, got {self.value!r}")
        object.__setattr__(self, "latents", latents)
        object.__setattr__(self, "value", value)

    def describe(self) -> str:
        what = {"set": f"={self.value:.4g}", "scale": f"*{self.value:.4g}", "zero": "=0"}[self.mode]
        return f"f[{','.join(map(str, self.latents))}]{what}"


@dataclass(frozen=True)
class RowClamp:
    """``clamp`` restricted to batch rows ``[start, end)``."""

    start: int
    end: int
    clamp: Clamp

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad row range [{self.start}, {self.end})")


@dataclass(frozen=True)
class ClampConfig:
    """Clamps applied together (one configuration of a sweep); no clamps = baseline."""

    clamps: tuple[Clamp, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clamps", tuple(self.clamps))
        if not all(isinstance(c, Clamp) for c in self.clamps):
            raise TypeError("ClampConfig.clamps must be Clamp objects")

    def describe(self) -> str:
        return self.label or (" + ".join(c.describe() for c in self.clamps) or "baseline")


class _Op:
    __slots__ = ("start", "end", "clamp", "slice")

    def __init__(self, start: int, end: int | None, clamp: Clamp, dic: LatentDictionary) -> None:
        self.start, self.end, self.clamp = start, end, clamp
        self.slice = _Slice(dic, clamp.latents)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``(f' - f) @ dec[S]`` in the scaled space, for ``x [b, T, D]`` float32."""
        import torch

        f = self.slice.encode(x)
        mode, value = self.clamp.mode, self.clamp.value
        target = torch.full_like(f, value) if mode == "set" else (f * value if mode == "scale" else torch.zeros_like(f))
        return (target - f) @ self.slice.on(x.device)["dec_KD"]


def _check_overlaps(ops: list[_Op]) -> None:
    for i, a in enumerate(ops):
        for b in ops[i + 1:]:
            a_end, b_end = a.end if a.end is not None else float("inf"), b.end if b.end is not None else float("inf")
            shared = set(a.clamp.latents) & set(b.clamp.latents)
            if shared and a.start < b_end and b.start < a_end:
                raise ValueError(f"latents {sorted(shared)} are clamped twice on the same rows")


def _block_hook(handle: SteeringHandle, ops: list[_Op], positions: str, scale: float):
    import torch

    def hook(module: Any, args: tuple, output: Any) -> Any:
        hidden = first_tensor(output)
        n_rows = hidden.shape[0]
        where_BT = handle.mask(positions, hidden.shape[:2], "clamp")
        h32 = hidden.float()
        delta = torch.zeros_like(h32)
        for op in ops:
            end = n_rows if op.end is None else op.end
            if end > n_rows:
                raise ValueError(f"clamp rows [{op.start}, {end}) exceed the batch of {n_rows} rows")
            delta[op.start:end] += op.delta(h32[op.start:end])  # all from the unedited x
        edited = torch.where(where_BT[..., None], h32 + delta / scale, h32).to(hidden.dtype)
        if isinstance(output, tuple):
            return (edited, *output[1:])
        if isinstance(output, list):
            return [edited, *output[1:]]
        return edited

    return hook


@contextmanager
def clamp_latents(
    model: nn.Module,
    layer: int,
    dictionary: LatentDictionary,
    clamps: Sequence[Clamp | RowClamp] | Clamp | RowClamp,
    positions: str = "all",
    *,
    prompt_lens: Sequence[int] | None = None,
    generation_start: int | None = None,
) -> Iterator[SteeringHandle]:
    """Clamp dictionary latents at block ``layer``'s output in every forward pass / ``generate``
    call inside the ``with`` block (the edit is in the module docstring).

    ``positions``: ``all`` | ``prompt`` | ``generated`` | ``response`` as in
    :mod:`transforms.steering.apply`; ``prompt_lens`` and ``generation_start`` as in
    :func:`transforms.steering.steer`. A :class:`RowClamp` applies to its rows only (rows of
    one batch may carry different clamps, or none). The hook is removed on exit, also after
    an exception. Raises ValueError (one line) for a layer, latent, positions or dictionary
    width that does not fit the model.
    """
    n_layers, d_model = model_dims(model)
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer!r} out of range: valid layers are 0-{n_layers - 1}")
    if dictionary.d_model != d_model:
        raise ValueError(f"dictionary width {dictionary.d_model} does not match the model: d_model is {d_model}")
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}: expected one of {', '.join(POSITIONS)}")
    items = [clamps] if isinstance(clamps, (Clamp, RowClamp)) else list(clamps)
    ops: list[_Op] = []
    for item in items:
        clamp, start, end = (item.clamp, item.start, item.end) if isinstance(item, RowClamp) else (item, 0, None)
        if not isinstance(clamp, Clamp):
            raise TypeError(f"expected Clamp or RowClamp, got {type(item).__name__}")
        dictionary.check_latents(clamp.latents)
        ops.append(_Op(start, end, clamp, dictionary))
    _check_overlaps(ops)
    handle = SteeringHandle(generation_start=generation_start)
    hooks: list[Hook] = []
    if ops:
        hooks = [position_hook(model, handle, prompt_lens=prompt_lens, generation_start=generation_start),
                 # prepended: before transformers' hidden_states hooks (see transforms.steering.apply)
                 Hook(decoder_layers(model)[layer], _block_hook(handle, ops, positions, dictionary.input_scale),
                      prepend=True)]
        logger.debug("clamping at layer %d, %s: %s", layer, positions, "; ".join(op.clamp.describe() for op in ops))
    with attached(hooks):
        yield handle


def generate_clamped(
    model: nn.Module,
    tokenizer: Any,
    prompts_ids: Sequence[Sequence[int]],
    layer: int,
    dictionary: LatentDictionary,
    configs: Sequence[ClampConfig],
    gen: GenerationConfig,
    *,
    positions: str = "all",
    max_batch: int = 64,
) -> list[list[Generated]]:
    """Generate every prompt under every clamp configuration, ``result[config][prompt]``.

    Rows are laid out config-major (config ``c`` owns rows ``[c*P, (c+1)*P)``) and cut into
    sub-batches of at most ``max_batch`` rows, each ONE left-padded ``generate`` call
    (:func:`transforms.sequences.generate_batch`, seeded by the sub-batch index) with each
    configuration's clamps restricted to its rows. Greedy results equal running each
    configuration alone (up to float ties).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    prompts = [list(p) for p in prompts_ids]
    if not prompts or any(not p for p in prompts):
        raise ValueError("generate_clamped needs at least one prompt and no empty prompts")
    n_prompts, n_rows = len(prompts), len(configs) * len(prompts)
    flat: list[Generated] = []
    for batch_index, lo in enumerate(range(0, n_rows, max_batch)):
        hi = min(lo + max_batch, n_rows)
        row_clamps = [RowClamp(max(c * n_prompts, lo) - lo, min((c + 1) * n_prompts, hi) - lo, clamp)
                      for c in range(lo // n_prompts, (hi - 1) // n_prompts + 1) for clamp in configs[c].clamps]
        batch = [prompts[r % n_prompts] for r in range(lo, hi)]
        with clamp_latents(model, layer, dictionary, row_clamps, positions,
                           prompt_lens=[len(p) for p in batch], generation_start=max(len(p) for p in batch)):
            flat += generate_batch(model, tokenizer, batch, gen, batch_index)
        logger.info("clamped sub-batch %d: rows %d-%d of %d, %d clamps", batch_index, lo, hi, n_rows, len(row_clamps))
    return [flat[c * n_prompts:(c + 1) * n_prompts] for c in range(len(configs))]
