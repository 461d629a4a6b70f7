"""Head ablation (``transforms.circuits.ablation``): zero and mean ablation against
TransformerLens 3.9 with ``hook_z`` edited on a tiny GPT-2 carrying the same weights, the
reference means against TransformerLens' cache, and ``generate`` with a KV cache against an
uncached recompute (the pre-hook then sees one new token at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_patching import CLEAN, CORRUPT, tiny_gpt2, tiny_gqa_llama, tl_twin
from transforms.circuits import ablated_heads, head_means, head_site

ATOL = 1e-5
HEADS = [(0, 1), (1, 3), (2, 0), (2, 2)]
REFERENCE = [CLEAN, CORRUPT, [3, 9, 27, 81, 43, 29], [50, 51, 52, 53, 54, 55, 56, 57, 58, 59]]


def _tl_logits(values: dict[tuple[int, int], torch.Tensor | None], ids: list[int]) -> torch.Tensor:
    """TransformerLens logits with ``hook_z`` of each (layer, head) set to ``values`` (None = 0)."""
    tl = tl_twin()
    hooks = []
    for (layer, head), value in values.items():
        def hook(z, hook, head=head, value=value):
            z[:, :, head] = 0.0 if value is None else value
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    with torch.no_grad():
        return tl.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)


def test_zero_ablation_matches_transformer_lens():
    model = tiny_gpt2()
    ids = torch.tensor([CLEAN])
    with torch.no_grad():
        plain = model(ids).logits
        with ablated_heads(model, HEADS, "zero"):
            ablated = model(ids).logits
        after = model(ids).logits
    want = _tl_logits({h: None for h in HEADS}, CLEAN)
    assert (ablated - plain).abs().max() > 0.1  # the ablation moves the logits
    torch.testing.assert_close(ablated, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(after, plain, atol=0, rtol=0)  # hooks gone


def test_head_means_and_mean_ablation_match_transformer_lens():
    model, tl = tiny_gpt2(), tl_twin()
    means = head_means(model, REFERENCE, [0, 1, 2])
    # TransformerLens: mean of hook_z over every reference token
    with torch.no_grad():
        zs = {k: [] for k in range(3)}
        for ids in REFERENCE:
            _, cache = tl.run_with_cache(torch.tensor([ids]))
            for k in zs:
                zs[k].append(cache[f"blocks.{k}.attn.hook_z"][0].numpy())
    for k in zs:
        want = np.concatenate(zs[k]).mean(0)  # [n_heads, d_head]
        assert tuple(means[k].shape) == want.shape and means[k].dtype == torch.float32
        np.testing.assert_allclose(means[k].numpy(), want, atol=ATOL, rtol=0)
    with torch.no_grad(), ablated_heads(model, HEADS, "mean", means):
        got = model(torch.tensor([CORRUPT])).logits
    want = _tl_logits({(k, h): means[k][h] for k, h in HEADS}, CORRUPT)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    with torch.no_grad(), ablated_heads(model, HEADS, "zero"):
        zero = model(torch.tensor([CORRUPT])).logits
    assert (zero - got).abs().max() > 0.05  # mean and zero ablation differ: the test can tell


def test_head_means_skip_first_against_numpy():
    model = tiny_gqa_llama()
    site = head_site(model, 1)
    seen = []
    handle = site.module.register_forward_pre_hook(lambda m, a: seen.append(a[0][0].double().numpy()))
    try:
        with torch.no_grad():
            for ids in REFERENCE:
                model(torch.tensor([ids]))
    finally:
        handle.remove()
    want = np.concatenate([x[2:] for x in seen]).mean(0).reshape(6, 8)
    got = head_means(model, REFERENCE, [1], skip_first=2)[1]
    np.testing.assert_allclose(got.numpy(), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("make, heads", [(tiny_gpt2, HEADS), (tiny_gqa_llama, [(0, 4), (1, 1), (1, 5)])])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_generate_with_kv_cache_equals_an_uncached_recompute(make, heads, mode):
    model = make()
    means = head_means(model, REFERENCE, sorted({k for k, _ in heads})) if mode == "mean" else None
    prompt = torch.tensor([CORRUPT])
    widths = []
    spy = head_site(model, heads[0][0]).module.register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[1]))
    try:
        with torch.no_grad(), ablated_heads(model, heads, mode, means):
            out = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=True,
                                 output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    finally:
        spy.remove()
    assert widths == [len(CORRUPT)] + [1] * 4  # decoding steps see only the new token
    cached = torch.stack(out.logits, dim=1)[0]  # [new, V]
    seq = out.sequences
    with torch.no_grad():
        with ablated_heads(model, heads, mode, means):
            full = model(seq, use_cache=False).logits[0, len(CORRUPT) - 1:-1]
        plain = model(seq, use_cache=False).logits[0, len(CORRUPT) - 1:-1]
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    assert (cached - plain).abs().max() > 0.05


@pytest.mark.parametrize("args, message", [
    (([(0, 4)], "zero"), "head 4 out of range: valid heads are 0-3"),
    (([(3, 0)], "zero"), "layer 3 out of range"),
    (([(0, 0)], "random"), "unknown ablation mode"),
    (([(0, 0), (2, 1)], "mean", {0: torch.zeros(4, 16)}), r"needs head means for layers \[2\]"),
    (([(0, 0)], "mean", {0: torch.zeros(4, 8)}), "expected \\(4, 16\\)"),
])
def test_bad_ablation_requests_are_one_line_value_errors(args, message):
    model = tiny_gpt2()
    with pytest.raises(ValueError, match=message) as err:
        with ablated_heads(model, *args):
            pass
    assert "\n" not in str(err.value)
    assert all(not m._forward_pre_hooks for m in model.modules())
