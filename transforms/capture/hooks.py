"""The one way this project puts hooks on a model: register, run, always remove.

- :class:`Hook` says what to register (a forward hook, or a pre-hook with ``pre=True``;
  ``prepend`` runs it before hooks already there; ``with_kwargs`` passes the call's keyword
  arguments). :func:`attached` registers a sequence of them in order and removes every one
  on exit, also when the forward pass (or a hook) raises.
- :class:`StopForward` ends a forward pass early: :func:`stop_after` is a hook that raises
  it once a module has run (register it after the hooks that read that module), and
  :func:`allow_stop` swallows it around the forward call. Capture stops after the deepest
  requested layer; nothing later is computed.
- :func:`hook_components` reads a component (``residual`` / ``attn_out`` / ``mlp_out``, see
  :func:`transforms.capture.layers.component_module`) at several layers, and
  :func:`run_forward` runs the decoder trunk (no LM head) under ``inference_mode``, stopping
  quietly. Capture, steering norms and live projections all go through these two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.capture.layers import COMPONENTS, component_module, decoder_trunk, model_dims

if TYPE_CHECKING:
    import torch
    from torch import nn


class StopForward(Exception):
    """Raised by a hook to end the forward pass: the outputs needed have been read."""


@dataclass(frozen=True)
class Hook:
    """One hook to register on ``module``: ``fn(module, args, output)`` after it runs, or
    ``fn(module, args)`` before it (``pre=True``; ``fn(module, args, kwargs)`` with
    ``with_kwargs``). A returned value replaces the output (or the arguments) as in torch."""

    module: nn.Module
    fn: Callable[..., Any]
    pre: bool = False
    prepend: bool = False
    with_kwargs: bool = False


@contextmanager
def attached(hooks: Sequence[Hook]) -> Iterator[None]:
    """Register ``hooks`` in order for the ``with`` block; all of them are removed on exit,
    also after an exception (including one raised while registering)."""
    handles = []
    try:
        for hook in hooks:
            register = hook.module.register_forward_pre_hook if hook.pre else hook.module.register_forward_hook
            handles.append(register(hook.fn, prepend=hook.prepend, with_kwargs=hook.with_kwargs))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


def _raise_stop(module: Any, args: Any, output: Any) -> None:
    raise StopForward


def stop_after(module: nn.Module) -> Hook:
    """A forward hook ending the pass once ``module`` has run; put it after the hooks that
    read ``module`` (hooks run in registration order) and run the forward in :func:`allow_stop`."""
    return Hook(module, _raise_stop)


@contextmanager
def allow_stop() -> Iterator[None]:
    """Swallow the :class:`StopForward` of an early-stopped forward pass."""
    try:
        yield
    except StopForward:
        pass


def check_layers(model: nn.Module, layers: Sequence[int], component: str) -> list[int]:
    """``layers`` as ints, validated: a known component, not empty, no duplicates, in range."""
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
    tensor in the yielded dict ``{layer: tensor_BTD}``. With ``stop_after_last`` the forward
    pass stops once the deepest layer has been read (:func:`stop_after`); run the model
    through :func:`run_forward`, which allows the stop.
    """
    layers = check_layers(model, layers, component)
    store: dict[int, torch.Tensor] = {}

    def make_hook(layer: int, read: Callable[[Any], torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = read(output)
            if callback is not None:
                callback(layer, tensor)
            else:
                store[layer] = tensor.detach()

        return hook

    sites = {layer: component_module(model, layer, component) for layer in layers}
    hooks = [Hook(site.module, make_hook(layer, site.read)) for layer, site in sites.items()]
    if stop_after_last:
        hooks.append(stop_after(sites[max(layers)].module))
    with attached(hooks):
        yield store


def input_device(model: nn.Module) -> torch.device:
    """Where ``model`` (or its decoder trunk) reads token ids: inputs are built on the CPU."""
    import torch

    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(model.parameters()).device


def run_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> None:
    """Run the decoder trunk of ``model`` (no LM head) on a batch, ``use_cache=False``, under
    ``inference_mode``; an early stop (:func:`hook_components` ``stop_after_last``,
    :func:`stop_after`) ends it quietly. ``position_ids`` only when given (left-padded rows)."""
    import torch

    trunk = decoder_trunk(model)
    device = input_device(trunk)
    extra = {} if position_ids is None else {"position_ids": position_ids.to(device)}
    with allow_stop(), torch.inference_mode():
        trunk(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False, **extra)
