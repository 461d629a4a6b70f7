"""Head ablation: a head's slice of the attention output projection's input set to zero or to
its mean over reference tokens, at every position.

The edit is a pre-hook on the projection (:mod:`transforms.circuits.sites`) and does not
depend on the position, so it is the same under ``generate`` with a KV cache (the hook then
sees only the new tokens, and the cached keys/values never pass through it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from transforms.capture.hooks import Hook, attached, run_forward, stop_after
from transforms.circuits.sites import check_heads, head_site

if TYPE_CHECKING:
    import torch
    from torch import nn

ABLATION_MODES: tuple[str, ...] = ("zero", "mean")


def head_means(
    model: nn.Module, ids_list: Sequence[list[int]], layers: Sequence[int], *, skip_first: int = 0,
) -> dict[int, torch.Tensor]:
    """Per layer, the mean of each head's projection input over every token of ``ids_list``
    (after the first ``skip_first`` of each sequence, e.g. a BOS whose activations are
    atypical): ``{layer: float32 [n_heads, head_dim]}`` on the CPU. One forward per sequence,
    stopped after the deepest layer."""
    import torch

    layers = sorted({int(k) for k in layers})
    if not layers:
        raise ValueError("no layers requested")
    sites = {k: head_site(model, k) for k in layers}
    sums = {k: torch.zeros(s.n_heads * s.head_dim, dtype=torch.float64) for k, s in sites.items()}
    count = 0

    def make(k: int) -> Hook:
        def hook(module: Any, args: tuple) -> None:
            sums[k] += args[0][0, skip_first:].double().sum(0).cpu()

        return Hook(sites[k].module, hook, pre=True)

    hooks = [make(k) for k in layers] + [stop_after(sites[layers[-1]].module)]
    with attached(hooks):
        for ids in ids_list:
            ids = [int(i) for i in ids]
            if len(ids) <= skip_first:
                continue
            ids_1T = torch.tensor([ids])
            run_forward(model, ids_1T, torch.ones_like(ids_1T))
            count += len(ids) - skip_first
    if count == 0:
        raise ValueError(f"no reference tokens: {len(ids_list)} sequences, skip_first={skip_first}")
    return {k: (sums[k] / count).float().view(s.n_heads, s.head_dim) for k, s in sites.items()}


@contextmanager
def ablated_heads(
    model: nn.Module,
    heads: Sequence[tuple[int, int]],
    mode: str = "zero",
    means: dict[int, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Within the block, every ``(layer, head)`` of ``heads`` contributes zero (``mode="zero"``)
    or its reference mean (``mode="mean"``, ``means`` from :func:`head_means`) at every
    position; the hooks are always removed on exit."""
    import torch

    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}: expected one of {', '.join(ABLATION_MODES)}")
    heads = check_heads(model, heads)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    if mode == "mean":
        missing = sorted(k for k in by_layer if means is None or k not in means)
        if missing:
            raise ValueError(f"mean ablation needs head means for layers {missing} (see head_means)")

    def make(layer: int, chosen: list[int]) -> Hook:
        site = head_site(model, layer)
        if mode == "mean":
            table = means[layer]  # type: ignore[index]
            if tuple(table.shape) != (site.n_heads, site.head_dim):
                raise ValueError(f"head means of layer {layer} have shape {tuple(table.shape)}, "
                                 f"expected ({site.n_heads}, {site.head_dim})")
        mask = torch.zeros(site.n_heads, 1, dtype=torch.bool)
        mask[chosen] = True
        fill = torch.zeros(site.n_heads, site.head_dim) if mode == "zero" else table.float()
        cached: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(module: Any, args: tuple) -> tuple:
            x = args[0]
            key = (x.device, x.dtype)
            if key not in cached:  # moved once per device/dtype, not per decoding step
                cached[key] = (mask.to(x.device), fill.to(device=x.device, dtype=x.dtype))
            m, f = cached[key]
            heads_x = x.reshape(*x.shape[:-1], site.n_heads, site.head_dim)
            return (torch.where(m, f, heads_x).reshape(x.shape), *args[1:])

        return Hook(site.module, hook, pre=True)

    with attached([make(k, hs) for k, hs in sorted(by_layer.items())]):
        yield
