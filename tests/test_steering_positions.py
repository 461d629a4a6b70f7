"""Which positions a steering edit touches: ``response`` (the last prompt position, whose
state produces the first response token, plus every generated position), ``generated``
(generated positions only), ``prompt`` and ``all``; under KV-cache decoding, left padding
and the shared prefill of sweeps, on tiny models and on SmolLM2 / Gemma 3.

References are independent of ``transforms.steering``: plain hooks adding at explicitly
listed positions, uncached, one prompt at a time where it matters.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.test_steering import (
    FAMILIES,
    Tap,
    _batch,
    _generate,
    _positions,
    _reference_forward,
    _Tok,
    _vec,
)
from tests.test_layers import tiny_model
from transforms.steering import Edit, SteeringConfig, generate_steered, mean_residual_norms, steer


def _expected_where(positions: str, real: torch.Tensor, width: int) -> torch.Tensor:
    """Edited positions of a left-padded [B, T] frame whose prompts are ``width`` wide."""
    col = torch.arange(real.shape[1])[None, :]
    return {"all": real, "prompt": real & (col < width), "generated": real & (col >= width),
            "response": real & (col >= width - 1)}[positions]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["response", "generated", "all", "prompt"])
def test_kv_cache_generation_equals_uncached_recompute(family, positions):
    """Cached steered generation, left padded, two layers: each step's logits equal an
    uncached forward over prompt + tokens so far with plain hooks at explicit positions
    (gemma3's sliding window is 4: the prompts are longer)."""
    model = tiny_model(family)
    ids, mask = _batch([7, 4, 6], seed=2)
    width, n = ids.shape[1], 6
    edits = [Edit(1, _vec(3), 3.0, positions), Edit(2, _vec(4), -2.0, positions)]
    with steer(model, edits) as handle:
        seq, logits = _generate(model, ids, mask, n)
    assert handle.n_prefills == 1 and handle.generation_start == width and handle.n_forwards == n
    plain_seq, _ = _generate(model, ids, mask, n)
    full_mask = torch.cat([mask, torch.ones((3, n), dtype=torch.long)], dim=1)
    for t in range(n):
        cur_ids, cur_mask = seq[:, :width + t], full_mask[:, :width + t]
        where = _expected_where(positions, cur_mask.bool(), width)
        ref = _reference_forward(model, cur_ids, cur_mask, [(e.layer, e.coef * e.vector_D, where) for e in edits])
        torch.testing.assert_close(logits[:, t], ref[:, -1], rtol=1e-4, atol=1e-4)
        with steer(model, edits, generation_start=width), torch.inference_mode():  # ours, uncached
            mine = model(input_ids=cur_ids, attention_mask=cur_mask, position_ids=_positions(cur_mask)).logits
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-5)
    assert not torch.equal(seq, plain_seq) or positions == "prompt"


def test_positions_respected_during_prefill_and_decoding():
    model = tiny_model("llama")
    ids, mask = _batch([6, 3], seed=5)
    v, coef, k, n = _vec(6), 4.0, 1, 4
    width = ids.shape[1]
    for positions in ("response", "generated", "prompt", "all"):
        with steer(model, [Edit(k, v, coef, positions)]), Tap(model, k) as tap:
            _generate(model, ids, mask, n)
        assert len(tap.post) == n  # prefill + n-1 decoding steps
        raw0, post0 = tap.raw[0], tap.post[0]
        where = _expected_where(positions, mask.bool(), width)  # pads never steered
        assert torch.equal(post0[where], raw0[where] + coef * v), positions
        assert torch.equal(post0[~where], raw0[~where]), positions
        for raw, post in zip(tap.raw[1:], tap.post[1:]):  # one new token per row: a generated position
            assert raw.shape[1] == 1
            if positions == "prompt":
                assert torch.equal(post, raw)
            else:
                assert torch.equal(post, raw + coef * v)


def test_plain_forward_over_a_prompt_steers_only_its_last_position_for_response():
    """Without a cache or ``generation_start`` the forward is a prefill: ``response`` edits
    its last position (it would produce the first response token), ``generated`` nothing."""
    model = tiny_model("gemma3")
    ids, mask = _batch([8, 5], seed=7)
    with torch.inference_mode():
        clean = model(input_ids=ids, attention_mask=mask).logits
        with steer(model, [Edit(1, _vec(8), 5.0, "generated")]):
            generated = model(input_ids=ids, attention_mask=mask).logits
        with steer(model, [Edit(1, _vec(8), 5.0, "response")]):
            response = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(clean, generated)
    assert torch.equal(clean[:, :-1], response[:, :-1])  # causal: earlier positions cannot see it
    assert (clean[:, -1] - response[:, -1]).abs().amax(-1).min() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["response", "generated", "all"])
def test_short_prompt_in_padded_batch_equals_alone(family, positions):
    model = tiny_model(family)
    ids, mask = _batch([9, 4, 6], seed=9)
    edits = [Edit(0, _vec(10), 3.0, positions), Edit(2, _vec(11), 2.0, positions)]
    with steer(model, edits):
        seq, logits = _generate(model, ids, mask, 6)
    for row in (1, 2):
        alone_ids = ids[row:row + 1, mask[row].bool()]
        with steer(model, edits):
            alone_seq, alone_logits = _generate(model, alone_ids, torch.ones_like(alone_ids), 6)
        assert seq[row, ids.shape[1]:].tolist() == alone_seq[0, alone_ids.shape[1]:].tolist()
        torch.testing.assert_close(logits[row], alone_logits[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_is_used_and_exact_for_response_and_generated(family, monkeypatch):
    """The shared prefill covers the first W-1 positions (unsteered under both names); the
    last prompt position runs inside the steered ``generate``. Shared = unshared = alone."""
    import transforms.steering.generate as steering_mod
    from transforms.sequences import GenerationConfig

    calls = []
    real_prefill = steering_mod._prefill_distinct
    monkeypatch.setattr(steering_mod, "_prefill_distinct", lambda *a: calls.append(1) or real_prefill(*a))
    model = tiny_model(family)
    g = torch.Generator().manual_seed(30)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (7, 1, 5)]
    configs = [SteeringConfig.single(1, _vec(31), 4.0, positions="response"),
               SteeringConfig.single(1, _vec(31), 4.0, positions="generated"),
               SteeringConfig.multi([(0, _vec(32), 2.0), (2, _vec(33), -3.0)], positions="response")]
    gen = GenerationConfig(max_new_tokens=6, min_new_tokens=6)
    shared = generate_steered(model, _Tok(), prompts, configs, gen, max_batch=4)
    assert len(calls) == 3  # every sub-batch took the shared path
    full = generate_steered(model, _Tok(), prompts, configs, gen, share_prefill=False)
    alone = [generate_steered(model, _Tok(), [p], [c], gen, share_prefill=False)[0][0] for c in configs for p in prompts]
    ids = lambda res: [x.response_ids for rows in res for x in rows]
    assert ids(shared) == ids(full) == [x.response_ids for x in alone]
    assert ids(full)[:3] != ids(full)[3:6]  # steering the last prompt position matters


# --------------------------------------------------------------------------- real models

TEXTS = ["Can you explain how a rainbow forms?", "Write a haiku.", "Give me one practical tip for sleeping well at night."]


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_real_model_positions_under_kv_cache_and_left_padding(which, request):
    """Left-padded cached generation on the real models: the prefill edit lands exactly on
    the last prompt column (``response``) or nowhere (``generated``); every step's logits
    equal each prompt alone, unpadded, uncached, with a plain hook at explicit positions;
    the batched sweep (shared prefill or not) reproduces the same tokens."""
    from transforms.sequences import GenerationConfig, left_pad
    from transforms.sequences import format_prompt

    loaded = request.getfixturevalue(which)
    model, tok = loaded.model, loaded.tokenizer
    prompts = [format_prompt(tok, t).ids for t in TEXTS]
    assert len({len(p) for p in prompts}) == 3
    k, n = loaded.n_layers // 2, 5
    h = mean_residual_norms(model, prompts, [k])[k]
    v = _vec(40 + k, d=loaded.d_model)
    coef = 1.0 * h / float(v.norm())
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, mask = left_pad(prompts, pad_id)
    width = ids.shape[1]
    first_logits = {}
    for positions in ("response", "generated"):
        edit = Edit(k, v, coef, positions)
        with steer(model, [edit]), Tap(model, k) as tap, torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True)
        seq, logits = out.sequences, torch.stack(out.logits, dim=1).float()
        edited = (tap.post[0] != tap.raw[0]).any(-1)  # prefill, [B, W]
        expect = torch.zeros_like(edited)
        if positions == "response":
            expect[:, width - 1] = True
        assert torch.equal(edited, expect), positions
        assert all((post != raw).any(-1).all() for raw, post in zip(tap.raw[1:], tap.post[1:]))
        for row, p in enumerate(prompts):
            full = torch.tensor([p + seq[row, width:].tolist()])
            start = len(p) - 1 if positions == "response" else len(p)
            where = torch.zeros(full.shape, dtype=torch.bool)
            where[:, start:] = True
            ref = _reference_forward(model, full, torch.ones_like(full), [(k, edit.coef * edit.vector_D, where)])
            torch.testing.assert_close(logits[row], ref[0, len(p) - 1:len(p) - 1 + n].float(), rtol=1e-3, atol=2e-3)
        first_logits[positions] = logits[:, 0]
        gen = GenerationConfig(max_new_tokens=n, min_new_tokens=n)
        for share in (True, False):
            got = generate_steered(model, tok, prompts, [SteeringConfig((edit,))], gen, share_prefill=share)[0]
            assert [x.response_ids for x in got] == seq[:, width:].tolist(), (positions, share)
    # the two names really differ where they should: the first response token's logits
    assert (first_logits["response"] - first_logits["generated"]).abs().amax(-1).min() > 0.1


# --------------------------------------------------------------------------- builders


def test_generation_cache_keys_follow_the_meaning_of_positions():
    """``response`` changed meaning: its cached generations must not be reused, while
    ``generated`` is exactly the old ``response`` and keeps those generations."""
    from builders.stages.steering_eval import config_key

    setup = SimpleNamespace(identity={"model": "m"}, questions=[SimpleNamespace(prompt_ids=(1, 2))],
                            gen=SimpleNamespace(as_dict=lambda: {"max_new_tokens": 4}))
    keys = {p: config_key(setup, SteeringConfig.single(3, [1.0, 2.0], 1.5, positions=p))
            for p in ("response", "generated", "prompt", "all")}
    assert len(set(keys.values())) == 4
    assert [e["positions"] for e in json.loads(keys["generated"])["edits"]] == ["response"]  # pre-change key
    assert [e["positions"] for e in json.loads(keys["prompt"])["edits"]] == ["prompt"]


def test_old_steering_runs_are_read_with_the_positions_they_steered():
    from builders.stages.combinations import run_positions

    def run(code_version: str, positions: str) -> SimpleNamespace:
        return SimpleNamespace(code_version=code_version, params={"positions": positions})

    assert run_positions(run("2", "response")) == "generated"  # before the last prompt position was included
    assert run_positions(run("3", "response")) == "response"
    assert run_positions(run("2", "all")) == "all"
    assert run_positions(run("3", "generated")) == "generated"


def test_cli_accepts_generated_and_rejects_unknown_positions():
    from builders.steering import build_parser
    from builders.stages.steering import steer_vectors
    from builders.shared.common import BuildError

    assert build_parser().parse_args(["--vectors", "x", "--positions", "generated"]).positions == "generated"
    with pytest.raises(BuildError, match="--positions: expected"):
        steer_vectors(None, SimpleNamespace(experiment=lambda name: SimpleNamespace(name="e", application="a")),
                      "x", "mean_diff", positions="middle")
