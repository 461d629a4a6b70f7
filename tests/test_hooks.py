"""The one hook mechanism (``transforms.capture.hooks``): every hook it registers is removed,
also when the forward pass raises, for each user of it (capture, steering, residual norms,
live projections); an early stop ends the forward after the named module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_layers import D_MODEL, N_LAYERS, tiny_model
from transforms.capture import (Hook, LiveProjector, StopForward, VectorStack, allow_stop, attached, capture_pooled,
                                decoder_layers, hook_components, run_forward)
from transforms.steering import Edit, mean_residual_norms, steer


def _hook_counts(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(forward hooks, forward pre-hooks) of every module."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def _boom(module, args):
    raise RuntimeError("boom")


def _vec(seed: int) -> torch.Tensor:
    return torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed))


def _run_capture(model):
    capture_pooled(model, [{"ids": [5, 6, 7, 8], "prompt_len": 2}], "all[:]", [0, 2])


def _run_steer(model):
    edits = [Edit(0, _vec(1), 2.0, positions="all"), Edit(2, _vec(2), kind="ablate")]
    with steer(model, edits), torch.inference_mode():
        model(input_ids=torch.tensor([[5, 6, 7]]))


def _run_norms(model):
    mean_residual_norms(model, [[5, 6, 7, 8]], [0, 2], skip_first=0)


def _run_live(model):
    rng = np.random.default_rng(0)
    stacks = [VectorStack.build(k, [("v", rng.standard_normal(D_MODEL), 0.0)]) for k in (0, 2)]
    with LiveProjector(stacks).attach(model), torch.inference_mode():
        model(input_ids=torch.tensor([[5, 6, 7]]))


USERS = {"capture": _run_capture, "steer": _run_steer, "norms": _run_norms, "live": _run_live}


@pytest.mark.parametrize("user", sorted(USERS))
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_no_hook_left_when_the_forward_raises(user, family):
    """A block between the hooked layers raises mid-forward: only the test's own hook is left.
    The baseline is what the model had before (transformers 5 keeps its own output-recording
    hooks on a model once ``output_hidden_states`` has been asked of it: other tests do)."""
    model = tiny_model(family)
    before = _hook_counts(model)
    bomb = decoder_layers(model)[1].register_forward_pre_hook(_boom)
    armed = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        USERS[user](model)
    assert _hook_counts(model) == armed
    bomb.remove()
    assert _hook_counts(model) == before
    USERS[user](model)  # and it still works, leaving nothing behind
    assert _hook_counts(model) == before


def test_attached_removes_every_kind_of_hook_on_exception_and_on_a_failed_registration():
    model = tiny_model("llama")
    block = decoder_layers(model)[0]
    before, block_before = _hook_counts(model), _hook_counts(block)  # transformers' own hooks
    seen = []
    hooks = [Hook(block, lambda m, a, o: seen.append("post")),
             Hook(block, lambda m, a: seen.append("pre"), pre=True, prepend=True),
             Hook(block, lambda m, a, k: seen.append("pre-kw"), pre=True, with_kwargs=True)]
    with pytest.raises(KeyError):
        with attached(hooks):
            (f, p), *rest = block_before
            assert _hook_counts(block) == [(f + 1, p + 2), *rest]
            raise KeyError("body failed")
    assert _hook_counts(model) == before
    with pytest.raises(AttributeError):  # the second registration fails: the first is removed
        with attached([hooks[0], Hook(None, print)]):  # type: ignore[arg-type]
            pass
    assert _hook_counts(model) == before


def test_stop_after_the_deepest_layer_skips_the_rest_and_is_allowed_only_where_asked():
    model = tiny_model("llama")
    blocks = decoder_layers(model)
    before = _hook_counts(model)
    ran = []
    counters = [b.register_forward_pre_hook(lambda m, a, k=k: ran.append(k)) for k, b in enumerate(blocks)]
    ids = torch.tensor([[5, 6, 7]])
    with hook_components(model, [1], stop_after_last=True) as store:
        run_forward(model, ids, torch.ones_like(ids))
        assert ran == [0, 1] and set(store) == {1}
        ran.clear()
        with pytest.raises(StopForward):  # a plain call does not swallow the stop
            model(input_ids=ids)
        assert ran == [0, 1]
        ran.clear()
        with allow_stop(), torch.inference_mode():
            model(input_ids=ids)
        assert ran == [0, 1]
    for c in counters:
        c.remove()
    assert N_LAYERS > 2 and _hook_counts(model) == before
