"""Steering hooks (add / ablate, rows, pads, hook hygiene), batched sweeps, search; which
positions an edit touches is in ``tests/test_steering_positions.py``.

References are independent of ``transforms.steering``: plain inline hooks that add to a
block's output at explicitly listed positions, run without a cache over the full sequence.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_layers import N_LAYERS, VOCAB, tiny_model
from transforms.capture import decoder_layers, decoder_trunk
from transforms.steering import (Edit, RowEdit, SteeringConfig, combine_vectors, generate_steered, mean_residual_norms, steer)
from transforms.steering import (AdaptiveSearch, coefficient_grid, perturbation_ratio, searches_from_norms, start_coefficient)

FAMILIES = ("llama", "gemma3", "gpt2")
D = 32


def _vec(seed: int, d: int = D, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * scale


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts (ids >= 3: no pad/bos/eos) and their mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # what generate uses for left-padded rows


def _generate(model, ids, mask, n: int):
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)  # [B, W+n], [B, n, V]


def _reference_forward(model, ids, mask, adds: list[tuple[int, torch.Tensor, torch.Tensor]]):
    """Uncached forward with plain hooks: ``adds`` = (layer, delta_D, where_BT bool)."""
    blocks = decoder_layers(model)
    handles = []
    for layer, delta, where in adds:
        def hook(mod, args, out, delta=delta, where=where):
            h = out[0] if isinstance(out, tuple) else out
            new = torch.where(where[..., None], h.float() + delta, h.float()).to(h.dtype)
            return (new, *out[1:]) if isinstance(out, tuple) else new
        handles.append(blocks[layer].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


class Tap:
    """Inside a steering context: block ``layer``'s output before (``raw``) and after
    (``post``) the steering hook, one entry per forward pass."""

    def __init__(self, model, layer: int):
        self.block = decoder_layers(model)[layer]
        self.raw: list[torch.Tensor] = []
        self.post: list[torch.Tensor] = []

    def __enter__(self):
        grab = lambda store: lambda m, a, o: store.append((o[0] if isinstance(o, tuple) else o).detach().clone())
        self.handles = [self.block.register_forward_hook(grab(self.raw), prepend=True),
                        self.block.register_forward_hook(grab(self.post))]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("family", FAMILIES)
def test_hooked_forward_equals_manual_add(family):
    model = tiny_model(family)
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    v, coef, k = _vec(0), 2.5, 1
    with torch.inference_mode():
        clean = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    with steer(model, [Edit(k, v, coef, "all")]), Tap(model, k) as tap, torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    delta = coef * v
    assert torch.equal(tap.raw[0], clean.hidden_states[k + 1])
    assert torch.equal(tap.post[0], clean.hidden_states[k + 1] + delta)  # exact, fp32
    assert torch.equal(out.hidden_states[k + 1], tap.post[0])  # hidden_states see the edit
    ref = _reference_forward(model, ids, torch.ones_like(ids), [(k, delta, torch.ones_like(ids, dtype=torch.bool))])
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-5)
    assert not torch.allclose(out.logits, clean.logits, atol=1e-3)


def test_prompt_lens_mark_pads_without_a_mask():
    """Pads given by ``prompt_lens`` alone (no attention mask reaches the trunk)."""
    model = tiny_model("llama")
    ids, mask = _batch([5, 2], seed=12)
    with steer(model, [Edit(1, _vec(13), 2.0, "all")], prompt_lens=[5, 2]), Tap(model, 1) as tap:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    raw, post = tap.raw[0], tap.post[0]
    assert torch.equal(post[mask == 0], raw[mask == 0])
    assert torch.equal(post[mask == 1], raw[mask == 1] + 2.0 * _vec(13))


# --------------------------------------------------------------------------- rows, ablation


def test_row_edits_touch_only_their_rows():
    model = tiny_model("llama")
    ids, mask = _batch([5, 5, 5, 5], seed=14)
    v1, v2 = _vec(15), _vec(16)
    edits = [RowEdit(0, 2, Edit(1, v1, 1.5, "all")), RowEdit(2, 3, Edit(1, v2, -1.0, "all"))]
    with steer(model, edits), Tap(model, 1) as tap, torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    raw, post = tap.raw[0], tap.post[0]
    assert torch.equal(post[:2], raw[:2] + 1.5 * v1)
    assert torch.equal(post[2], raw[2] + -1.0 * v2)
    assert torch.equal(post[3], raw[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_ablation_removes_the_direction(family):
    model = tiny_model(family)
    ids, mask = _batch([7, 5, 6], seed=17)
    u = _vec(18, scale=3.0)
    unit = u / u.norm()
    edits = [RowEdit(0, 2, Edit(1, u, 123.0, "all", kind="ablate"))]  # coef is ignored
    with steer(model, edits), Tap(model, 1) as tap, torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    raw, post = tap.raw[0], tap.post[0]
    real = mask.bool()
    dots = post @ unit
    assert dots[:2][real[:2]].abs().max() < 1e-5 * raw.norm(dim=-1).max()
    assert (raw @ unit)[:2][real[:2]].abs().max() > 1e-2  # there was something to remove
    restored = post[:2] + (raw[:2] @ unit)[..., None] * unit
    torch.testing.assert_close(restored[real[:2]], raw[:2][real[:2]], rtol=0, atol=1e-5)
    assert torch.equal(post[2], raw[2])  # row outside the edit
    assert torch.equal(post[~real], raw[~real])  # pads


# --------------------------------------------------------------------------- hook hygiene


def _hook_counts(model) -> list[tuple[int, int]]:
    mods = [decoder_trunk(model), *decoder_layers(model)]
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in mods]


def test_hooks_removed_after_exceptions():
    model = tiny_model("llama")
    ids, _ = _batch([4, 4], seed=19)
    before = _hook_counts(model)
    with pytest.raises(KeyError):
        with steer(model, [Edit(0, _vec(1), 1.0, "all"), Edit(2, _vec(2), 1.0)]):
            assert _hook_counts(model) != before
            raise KeyError("boom")
    assert _hook_counts(model) == before
    with pytest.raises(ValueError, match="exceed the batch"):  # raised inside a hook
        with steer(model, [RowEdit(0, 5, Edit(1, _vec(1), 1.0, "all"))]), torch.inference_mode():
            model(input_ids=ids)
    assert _hook_counts(model) == before
    with pytest.raises(ValueError, match="out of range"):
        with steer(model, [Edit(N_LAYERS, _vec(1), 1.0)]):
            pass
    with pytest.raises(ValueError, match="d_model"):
        with steer(model, [Edit(0, _vec(1, d=D + 1), 1.0)]):
            pass
    assert _hook_counts(model) == before


def test_edit_validation_and_helpers():
    with pytest.raises(ValueError, match="positions"):
        Edit(0, _vec(1), 1.0, "middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero vector"):
        Edit(0, torch.zeros(D), kind="ablate")
    with pytest.raises(ValueError, match="1-D"):
        Edit(0, torch.zeros(2, D))
    e = Edit(3, [1.0, 2.0], 2)
    assert e.vector_D.dtype == torch.float32 and e.coef == 2.0
    cfg = SteeringConfig.multi([(1, _vec(1), 0.5), (2, _vec(2), 0.5)])
    assert [x.layer for x in cfg.edits] == [1, 2] and "L1" in cfg.describe()
    assert SteeringConfig().describe() == "baseline"
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 5.0])
    torch.testing.assert_close(combine_vectors([a, b]), torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_mean_residual_norms_match_hidden_states():
    model = tiny_model("llama")
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    got = mean_residual_norms(model, prompts, [0, 1], batch_size=2, skip_first=0)
    got_skip = mean_residual_norms(model, prompts, [1], skip_first=1)
    norms = {0: [], 1: []}
    for p in prompts:
        with torch.inference_mode():
            hs = model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states
        for k in (0, 1):
            norms[k].append(hs[k + 1][0].norm(dim=-1))
    for k in (0, 1):
        assert got[k] == pytest.approx(float(torch.cat(norms[k]).mean()), rel=1e-5)
    assert got_skip[1] == pytest.approx(float(torch.cat([n[1:] for n in norms[1]]).mean()), rel=1e-5)


# --------------------------------------------------------------------------- sweeps


class _Tok:
    pad_token_id, eos_token_id = 0, 2


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_equals_full_prefill(family):
    """Response-only sweeps prefill each distinct prompt once; the tokens do not change
    (prompts of different lengths, one of a single token: a fully padded prefill row)."""
    from transforms.sequences import GenerationConfig

    model = tiny_model(family)
    g = torch.Generator().manual_seed(20)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (7, 1, 5)]
    configs = [SteeringConfig(), SteeringConfig.single(1, _vec(21), 4.0),
               SteeringConfig.multi([(0, _vec(22), 2.0), (2, _vec(23), -3.0)]),
               SteeringConfig((Edit(1, _vec(24), kind="ablate"),))]
    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=6)
    shared = generate_steered(model, _Tok(), prompts, configs, gen, max_batch=5)
    full = generate_steered(model, _Tok(), prompts, configs, gen, share_prefill=False)
    singles = [generate_steered(model, _Tok(), [p], [cfg], gen, share_prefill=False)[0][0]
               for cfg in configs for p in prompts]
    ids = lambda res: [g.response_ids for rows in res for g in rows]
    assert ids(shared) == ids(full) == [g.response_ids for g in singles]
    assert len({tuple(r) for r in ids(full)}) > len(prompts)  # steering changed something


# --------------------------------------------------------------------------- real model sweep


def test_batched_sweep_equals_each_config_alone(smollm2):
    from transforms.sequences import GenerationConfig
    from transforms.sequences import format_prompt

    model, tok = smollm2.model, smollm2.tokenizer
    texts = ["Can you explain how a rainbow forms?", "Write a haiku about rain.", "Give me one tip for sleeping well."]
    prompts = [format_prompt(tok, t).ids for t in texts]
    h = mean_residual_norms(model, prompts, [8, 12, 20], skip_first=1)
    v = {k: _vec(100 + k, d=smollm2.d_model) for k in (8, 12, 20)}
    c = {k: 0.6 * h[k] / float(v[k].norm()) for k in v}
    configs = [  # with max_batch=7: rows 0-6 response-only (shared prefill), 7-13 and 14 not
        SteeringConfig(label="baseline"),
        SteeringConfig.single(12, v[12], c[12]),
        SteeringConfig.multi([(8, v[8], c[8] / 2), (20, v[20], c[20] / 2)]),
        SteeringConfig.single(8, v[8], -c[8], positions="all"),
        SteeringConfig((Edit(12, v[12], kind="ablate", positions="all"),)),
    ]
    gen = GenerationConfig(max_new_tokens=12, temperature=0.0)
    together = generate_steered(model, tok, prompts, configs, gen, max_batch=7)  # chunks cut configs
    assert [len(r) for r in together] == [3] * 5
    for cfg, rows in zip(configs, together):
        alone = generate_steered(model, tok, prompts, [cfg], gen, share_prefill=False)[0]
        assert [g.response_ids for g in rows] == [g.response_ids for g in alone], cfg.describe()
    changed = sum(together[i] != together[0] for i in range(1, 5))
    assert changed >= 3  # the steering does something


# --------------------------------------------------------------------------- search


def _run(search: AdaptiveSearch, coherence, trait=lambda c: c) -> list[dict[int, float]]:
    seen = []
    while not search.done:
        cur = search.current()
        seen.append(cur)
        search.update({k: (trait(c), coherence(c)) for k, c in cur.items()})
    return seen


def test_search_without_momentum_is_the_plain_rule():
    s = AdaptiveSearch([3], {3: 1.0}, threshold=70, momentum=0.0, steps=8)
    seen = [d[3] for d in _run(s, lambda c: 100 - 10 * c)]  # coherent while coef <= 3
    expect, c = [], 1.0
    for _ in range(8):
        expect.append(c)
        c *= 1.3 if 100 - 10 * c >= 70 else 0.85
    assert seen == pytest.approx(expect, rel=1e-12)
    assert seen[:5] == pytest.approx([1.0, 1.3, 1.69, 2.197, 2.8561])
    best = s.best()[3]
    assert best is not None and best.coef <= 3.0 and best.coef == max(t.coef for t in s.trials(3) if t.coef <= 3.0)


def test_search_momentum_accelerates_and_reverses_at_once():
    s = AdaptiveSearch([0], {0: 1.0}, momentum=0.5, steps=6)
    seen = [d[0] for d in _run(s, lambda c: 100 if c < 3 else 0)]
    g_up, g_down = math.log(1.3), math.log(0.85)
    v1 = g_up
    v2 = 0.5 * v1 + g_up
    v3 = 0.5 * v2 + g_up
    c = [1.0, math.exp(v1), math.exp(v1 + v2), math.exp(v1 + v2 + v3)]
    assert seen[:4] == pytest.approx(c)  # 1, 1.3, 1.3*1.3**1.5, ...: accelerating
    assert c[3] >= 3 > c[2]
    assert seen[4] == pytest.approx(c[3] * 0.85)  # first failure: exactly x0.85, no overshoot
    v5 = 0.5 * g_down + g_down if seen[4] >= 3 else g_up
    assert seen[5] == pytest.approx(seen[4] * math.exp(v5))
    with pytest.raises(RuntimeError):
        s.update({0: (1.0, 1.0)})


def test_search_parallel_layers_and_direction():
    starts = {4: 2.0, 7: -0.5}  # start signs do not matter: direction decides
    s = AdaptiveSearch([7, 4], starts, direction=-1, momentum=0.0, steps=5)
    assert s.current() == {4: -2.0, 7: -0.5}
    # layer 4 loses coherence beyond |c| = 2.5; the trait falls with |c| (negative steering)
    seen = _run(s, lambda c: 90 if abs(c) <= 2.5 else 40, trait=lambda c: 50 + 10 * c)
    assert all(c < 0 for step in seen for c in step.values())
    assert [step[4] for step in seen][:3] == pytest.approx([-2.0, -2.6, -2.21])
    best = s.best()
    assert best[4] is not None
    assert best[4].coef == min(t.coef for t in s.trials(4) if abs(t.coef) <= 2.5)  # largest coherent push
    assert best[4].trait == min(t.trait for t in s.trials(4) if t.coherence >= 70)
    assert s.best(min_coherence=95) == {4: None, 7: None}
    assert s.best_overall() == best[4]
    with pytest.raises(ValueError, match="no results"):
        AdaptiveSearch([1, 2], {1: 1.0, 2: 1.0}).update({1: (0.0, 0.0)})


def test_search_none_scores_and_validation():
    s = AdaptiveSearch([0], {0: 1.0}, momentum=0.0, steps=2)
    s.update({0: (None, None)})  # judge gave no score: incoherent
    assert s.current()[0] == pytest.approx(0.85)
    for bad in ({"up": 0.9}, {"down": 1.2}, {"momentum": 1.0}, {"steps": 0}, {"direction": 0}):
        with pytest.raises(ValueError):
            AdaptiveSearch([0], {0: 1.0}, **bad)
    with pytest.raises(ValueError, match="start coefficient"):
        AdaptiveSearch([0, 1], {0: 1.0})


def test_start_coefficient_and_grids():
    assert start_coefficient(10.0, 2.0) == pytest.approx(3.5)
    assert start_coefficient(10.0, 2.0, direction=-1) == pytest.approx(-3.5)
    assert perturbation_ratio(-3.5, 2.0, 10.0) == pytest.approx(0.7)
    s = searches_from_norms([1, 2], {1: 10.0, 2: 20.0}, {1: 1.0, 2: 4.0}, steps=3)
    assert s.current() == pytest.approx({1: 7.0, 2: 3.5})
    assert coefficient_grid(4.0, 5, 0.5) == pytest.approx([2.0, 3.0, 4.0, 5.0, 6.0])
    g = coefficient_grid(-4.0, 3, 0.5, log=True)
    assert g == pytest.approx([-2.0, -4.0 * math.sqrt(0.75), -6.0])
