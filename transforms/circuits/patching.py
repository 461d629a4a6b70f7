"""Activation patching: clean activations written into a corrupted run, one target at a time.

One clean forward caches what the targets need; then the corrupted prompt runs as a batch of
``R`` identical rows where row ``r`` is patched at target ``r`` only, so many targets share one
forward (``batch_size`` rows per forward; ``batched=False`` runs one forward per target, same
hooks, for benchmarks and checks). Targets:

- ``residual`` / ``attn_out`` / ``mlp_out`` at layer k: the tensor read at
  :func:`transforms.capture.layers.component_module`'s site is replaced at the target
  position(s) by the clean one (everything downstream recomputed);
- ``head`` (layer k, head h): head h's slice of the input to the attention output projection
  (:mod:`transforms.circuits.sites`), which is exact under grouped-query attention.

The batched path also skips what every row of a forward shares (:mod:`transforms.circuits.replay`):
targets are sorted by (lowest block, earliest position); a chunk runs only the blocks from its
lowest block on (block ``L-1`` hands on the corrupted run's recorded output) and only the
tokens from its earliest patched position ``p`` on (the corrupted run's keys and values of
the tokens before ``p`` go in as a cache: causal attention makes every row equal the corrupted
run there). Targets at every position have ``p = 0``; models whose cache layers are not plain
or sliding-window dynamic layers get ``p = 0`` always. ``batched=False`` runs one full forward
per target, the plain reference.

``position=None`` patches every position; a negative position counts from the end. The metric
is the logit difference of ``answer_ids`` at the last position, from the full model (final
norm, LM head, any logit softcap), in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.capture.hooks import Hook, attached, input_device
from transforms.capture.layers import component_module, decoder_layers
from transforms.circuits.metrics import logit_diff, normalise
from transforms.circuits.replay import (final_logits, keeps_last, prefix_cache_supported, record_run, replay_logits,
                                        with_first)
from transforms.circuits.sites import check_heads, head_shape, head_site

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

PATCH_COMPONENTS: tuple[str, ...] = ("residual", "attn_out", "mlp_out", "head")


@dataclass(frozen=True)
class PatchTarget:
    """What one patched row replaces: ``component`` at ``layer``, at ``position`` (None =
    every position; negative = from the end) and, for ``component="head"``, query head ``head``."""

    component: str
    layer: int
    position: int | None
    head: int | None = None

    def __post_init__(self) -> None:
        if self.component not in PATCH_COMPONENTS:
            raise ValueError(f"unknown patch component {self.component!r}: expected one of {', '.join(PATCH_COMPONENTS)}")
        if (self.head is None) == (self.component == "head"):
            raise ValueError(f"{self.describe()}: a head index goes with component 'head' and only with it")

    def describe(self) -> str:
        where = "all" if self.position is None else str(self.position)
        head = "" if self.head is None else f".h{self.head}"
        return f"{self.component} L{self.layer}{head}@{where}"


@dataclass
class PatchSweep:
    """Raw metric (logit difference) per target, in the order of ``targets``, with the
    unpatched clean and corrupted metrics."""

    targets: list[PatchTarget]
    metric: np.ndarray
    clean_metric: float
    corrupted_metric: float

    @property
    def normalised(self) -> np.ndarray:
        """The metric as the fraction of the clean-vs-corrupted difference restored
        (clean = 1, corrupted = 0; NaN when the two are equal)."""
        return normalise(self.metric, self.clean_metric, self.corrupted_metric)


def residual_targets(n_layers: int, n_positions: int, component: str = "residual") -> list[PatchTarget]:
    """Every (layer, position) for ``component``, layer-major."""
    return [PatchTarget(component, k, p) for k in range(n_layers) for p in range(n_positions)]


def head_targets(model: nn.Module, per_position: bool, n_positions: int) -> list[PatchTarget]:
    """Every (layer, head), at all positions at once or (``per_position``) at each position;
    layer-major, then head, then position."""
    n_heads, _ = head_shape(model)
    positions: list[int | None] = list(range(n_positions)) if per_position else [None]
    return [PatchTarget("head", k, p, h) for k in range(len(decoder_layers(model)))
            for h in range(n_heads) for p in positions]


@dataclass(frozen=True)
class _Site:
    """A hook site shared by targets: a component output or a head-projection input."""

    key: tuple[str, int]  # ("residual" | "attn_out" | "mlp_out" | "head", layer)
    module: Any
    read: Any  # output -> tensor, for component sites
    head_dim: int = 0


def _sites(model: nn.Module, targets: Sequence[PatchTarget], n_tokens: int) -> dict[tuple[str, int], _Site]:
    """The sites the targets touch, every target validated (ValueError, one line)."""
    sites: dict[tuple[str, int], _Site] = {}
    for t in targets:
        if t.position is not None and not -n_tokens <= t.position < n_tokens:
            raise ValueError(f"{t.describe()}: position {t.position} is outside the prompt "
                             f"({n_tokens} tokens: valid positions {-n_tokens}..{n_tokens - 1})")
        kind = "head" if t.component == "head" else t.component
        if (kind, t.layer) in sites:
            if t.head is not None:
                check_heads(model, [(t.layer, t.head)])
            continue
        if t.head is not None:
            check_heads(model, [(t.layer, t.head)])
            hs = head_site(model, t.layer)
            sites[(kind, t.layer)] = _Site((kind, t.layer), hs.module, None, hs.head_dim)
        else:
            cs = component_module(model, t.layer, t.component)
            sites[(kind, t.layer)] = _Site((kind, t.layer), cs.module, cs.read)
    return sites


def _clean_cache(model: nn.Module, sites: dict, ids_1T: torch.Tensor, keep_last: bool):
    """One clean forward: ``({site key: activation [1, T, width]}, logits [1, V])``."""
    cache: dict[tuple[str, int], torch.Tensor] = {}

    def make(site: _Site) -> Hook:
        if site.key[0] == "head":
            return Hook(site.module, lambda m, args: cache.__setitem__(site.key, args[0].detach().clone()), pre=True)
        return Hook(site.module, lambda m, args, out: cache.__setitem__(site.key, site.read(out).detach().clone()))

    with attached([make(s) for s in sites.values()]):
        logits = final_logits(model, ids_1T, keep_last)
    return cache, logits


def _patch_hooks(sites: dict, cache: dict, rows: Sequence[PatchTarget], n_tokens: int, prefix: int = 0) -> list[Hook]:
    """Hooks making row r of the batch patched at ``rows[r]`` only (a mask per site: rows at
    other sites keep their corrupted activations); the forward sees positions ``prefix ..``."""
    import torch

    masks: dict[tuple[str, int], torch.Tensor] = {}
    for r, t in enumerate(rows):
        key = ("head" if t.component == "head" else t.component, t.layer)
        clean = cache[key]
        mask = masks.get(key)
        if mask is None:
            mask = masks[key] = torch.zeros((len(rows), n_tokens, clean.shape[-1]), dtype=torch.bool, device=clean.device)
        pos = slice(None) if t.position is None else t.position
        cols = slice(None) if t.head is None else slice(t.head * sites[key].head_dim, (t.head + 1) * sites[key].head_dim)
        mask[r, pos, cols] = True

    hooks = []
    for key, mask in masks.items():
        site, clean, mask = sites[key], cache[key][:, prefix:], mask[:, prefix:]
        if key[0] == "head":
            def pre(m: Any, args: tuple, mask: torch.Tensor = mask, clean: torch.Tensor = clean) -> tuple:
                return (torch.where(mask, clean, args[0]), *args[1:])

            hooks.append(Hook(site.module, pre, pre=True))
        else:
            def post(m: Any, args: tuple, out: Any, mask: torch.Tensor = mask, clean: torch.Tensor = clean,
                     read: Any = site.read) -> Any:
                return with_first(out, torch.where(mask, clean, read(out)))

            hooks.append(Hook(site.module, post))
    return hooks


def _first_block(target: PatchTarget) -> int:
    """The lowest block a row patched at ``target`` must run: a residual patch replaces block
    k's output, so block k itself can be replayed; the others act inside block k."""
    return target.layer + 1 if target.component == "residual" else target.layer


def patch_sweep(
    model: nn.Module,
    clean_ids_T: list[int],
    corrupted_ids_T: list[int],
    answer_ids: tuple[int, int],
    targets: Sequence[PatchTarget],
    *,
    batch_size: int = 64,
    batched: bool = True,
) -> PatchSweep:
    """Patch clean activations into the corrupted run at each of ``targets``; the metric is
    ``logit[answer_ids[0]] - logit[answer_ids[1]]`` at the last position. ValueError (one line)
    for prompts of unequal length, no targets, a position outside the prompt, a layer or head
    out of range, or an answer id outside the vocabulary."""
    import numpy as np
    import torch

    clean_ids_T, corrupted_ids_T = [int(i) for i in clean_ids_T], [int(i) for i in corrupted_ids_T]
    if len(clean_ids_T) != len(corrupted_ids_T):
        raise ValueError(f"clean and corrupted prompts differ in length ({len(clean_ids_T)} vs "
                         f"{len(corrupted_ids_T)} tokens): patching needs them aligned token for token")
    if not clean_ids_T:
        raise ValueError("empty prompt: nothing to patch")
    targets = list(targets)
    if not targets:
        raise ValueError("no patch targets")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_tokens = len(clean_ids_T)
    sites = _sites(model, targets, n_tokens)
    rows_per_forward = batch_size if batched else 1
    device = input_device(model)
    keep_last = keeps_last(model)
    clean_1T = torch.tensor([clean_ids_T], device=device)
    corrupted_1T = torch.tensor([corrupted_ids_T], device=device)

    with torch.inference_mode():
        cache, clean_logits = _clean_cache(model, sites, clean_1T, keep_last)
        vocab = clean_logits.shape[-1]
        bad = [a for a in answer_ids if not 0 <= int(a) < vocab]
        if len(answer_ids) != 2 or bad:
            raise ValueError(f"answer ids {tuple(answer_ids)} must be two token ids in 0..{vocab - 1}")
        pair = [[int(a) for a in answer_ids]]
        clean_metric = float(logit_diff(clean_logits, pair)[0])
        run = record_run(model, corrupted_1T, keep_last, with_prefix=batched and prefix_cache_supported(model))
        corrupted_metric = float(logit_diff(run.logits, pair)[0])
        # batched: rows sorted by (first block run, first position patched) so that a chunk's
        # lowest block and earliest position, below which it replays the corrupted run, are high
        plan = [(_first_block(t), 0 if t.position is None else t.position % n_tokens) if batched else (0, 0)
                for t in targets]
        if run.keys_values is None:
            plan = [(b, 0) for b, _ in plan]
        order = sorted(range(len(targets)), key=lambda i: plan[i]) if batched else list(range(len(targets)))
        metric = np.empty(len(targets), dtype=np.float64)
        for at in range(0, len(order), rows_per_forward):
            idx = order[at:at + rows_per_forward]
            start, prefix = min(plan[i][0] for i in idx), min(plan[i][1] for i in idx)
            with attached(_patch_hooks(sites, cache, [targets[i] for i in idx], n_tokens, prefix)):
                logits = replay_logits(model, run, start, prefix, len(idx), keep_last)
            metric[idx] = logit_diff(logits, pair * len(idx)).cpu().numpy()
    logger.debug("patched %d targets in %d forwards", len(targets), -(-len(targets) // rows_per_forward))
    return PatchSweep(targets, metric, clean_metric, corrupted_metric)
