"""Clamping dictionary latents during generation (transforms/steering/clamp.py) on a tiny llama.

References are independent of ``transforms.steering``: the edit ``(f' - f) @ dec[S] / scale``
recomputed in float64 numpy from the block's unedited output (read by a plain hook), and
re-encoding with an orthogonal dictionary, where encode(decode(f)) = f is exact.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from tests.test_layers import D_MODEL, N_LAYERS, VOCAB, tiny_model
from tests.test_steering import Tap, _batch, _generate, _positions, _Tok
from transforms.capture import decoder_layers, decoder_trunk
from transforms.sequences import GenerationConfig, generate_batch
from transforms.steering import Clamp, ClampConfig, LatentDictionary, RowClamp, clamp_latents, generate_clamped

F = 12
LAYER = 1


def _np(dic: LatentDictionary) -> dict:
    as_np = lambda t: None if t is None else t.numpy().astype(np.float64)
    return {"enc": as_np(dic.enc_weight_DF), "b": as_np(dic.enc_bias_F), "dec": as_np(dic.dec_weight_FD),
            "thr": as_np(dic.threshold_F), "pre": as_np(dic.pre_bias_D), "scale": dic.input_scale}


def np_encode(x_TD: np.ndarray, d: dict) -> np.ndarray:
    """All F latents, float64."""
    xs = x_TD * d["scale"] - (0.0 if d["pre"] is None else d["pre"])
    pre = xs @ d["enc"] + d["b"]
    return np.maximum(pre, 0.0) if d["thr"] is None else pre * (pre > d["thr"])


def np_delta(x_TD: np.ndarray, d: dict, clamps: list[Clamp]) -> np.ndarray:
    f = np_encode(x_TD, d)
    delta = np.zeros_like(x_TD)
    for c in clamps:
        s = list(c.latents)
        target = {"set": np.full_like(f[..., s], c.value), "scale": f[..., s] * c.value,
                  "zero": np.zeros_like(f[..., s])}[c.mode]
        delta += (target - f[..., s]) @ d["dec"][s]
    return delta / d["scale"]


@functools.cache
def _x_rms() -> float:
    ids, _ = _batch([9], seed=40)
    with torch.inference_mode():
        hs = tiny_model("llama")(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    return float(hs[LAYER + 1].pow(2).mean().sqrt())


def jumprelu_dictionary(seed: int = 0) -> LatentDictionary:
    """Random, not orthogonal, JumpReLU, input scaled to unit RMS, with a pre-encoder bias."""
    rng = np.random.default_rng(seed)
    return LatentDictionary(rng.normal(size=(D_MODEL, F)) / np.sqrt(D_MODEL), rng.normal(size=F) * 0.1,
                            rng.normal(size=(F, D_MODEL)) / np.sqrt(D_MODEL), threshold_F=np.full(F, 0.2),
                            input_scale=1.0 / _x_rms(), pre_bias_D=rng.normal(size=D_MODEL) * 0.1)


def orthogonal_dictionary(active: tuple[int, ...], seed: int = 1) -> LatentDictionary:
    """Orthonormal decoder rows, encoder = decoder^T, relu; the ``active`` latents get a large
    bias so they are on at every position (then the re-encoded value is exactly the target)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D_MODEL, F)))
    bias = np.zeros(F)
    bias[list(active)] = 50.0
    return LatentDictionary(q, bias, q.T)


def _where(positions: str, real: torch.Tensor, width: int) -> torch.Tensor:
    col = torch.arange(real.shape[1])[None, :]
    return {"all": real, "prompt": real & (col < width), "generated": real & (col >= width)}[positions]


def _hook_counts(model) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


# --------------------------------------------------------------------------- the edit


@pytest.mark.parametrize("mode,value", [("set", 3.0), ("scale", -2.0), ("zero", 0.0)])
def test_edit_is_delta_f_times_decoder(mode, value):
    model = tiny_model("llama")
    dic = jumprelu_dictionary()
    clamps = [Clamp((0, 5, 7), mode, value), Clamp((3,), "set", 1.5)]  # two clamps on one layer
    ids, mask = _batch([8, 5], seed=41)
    with clamp_latents(model, LAYER, dic, clamps), Tap(model, LAYER) as tap, torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                    output_hidden_states=True, use_cache=False)
    raw, post = tap.raw[0], tap.post[0]
    d = _np(dic)
    f = np_encode(raw.numpy().astype(np.float64), d)
    assert (f[..., [0, 5, 7]] == 0).any() and (f[..., [0, 5, 7]] > 0).any()  # both sides of the threshold
    expected = raw.numpy().astype(np.float64) + np_delta(raw.numpy().astype(np.float64), d, clamps)
    real = mask.bool()
    np.testing.assert_allclose(post[real].numpy(), expected[real.numpy()], rtol=1e-5, atol=1e-5)
    assert torch.equal(post[~real], raw[~real])  # pads never edited
    assert torch.equal(out.hidden_states[LAYER + 1], post)  # hidden_states see the edit
    assert not np.allclose(post[real].numpy(), raw[real].numpy(), atol=1e-3)


@pytest.mark.parametrize("mode,value", [("set", 4.0), ("scale", 0.25), ("zero", 0.0)])
def test_reencoded_latent_takes_the_target(mode, value):
    """Orthogonal dictionary: re-encoding the edited state gives the target for the clamped
    latents and leaves every other latent as it was."""
    model = tiny_model("llama")
    clamped = (2, 9)
    dic = orthogonal_dictionary(clamped)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(42))
    with clamp_latents(model, LAYER, dic, Clamp(clamped, mode, value)), Tap(model, LAYER) as tap:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    d = _np(dic)
    f_before = np_encode(tap.raw[0].numpy().astype(np.float64), d)
    f_after = np_encode(tap.post[0].numpy().astype(np.float64), d)
    target = {"set": np.full_like(f_before[..., clamped], value), "scale": f_before[..., clamped] * value,
              "zero": np.zeros_like(f_before[..., clamped])}[mode]
    np.testing.assert_allclose(f_after[..., clamped], target, atol=1e-4)  # f ~ 50: float32 states
    others = [i for i in range(F) if i not in clamped]
    np.testing.assert_allclose(f_after[..., others], f_before[..., others], atol=1e-4)
    assert np.abs(f_before[..., clamped] - target).min() > 0.1  # the clamp had something to do


def test_row_clamps_edit_their_rows_only():
    model = tiny_model("llama")
    dic = jumprelu_dictionary()
    ids, mask = _batch([6, 6, 6], seed=43)
    rows = [RowClamp(0, 1, Clamp((1,), "set", 2.0)), RowClamp(2, 3, Clamp((1, 4), "zero"))]  # row 1: none
    with clamp_latents(model, LAYER, dic, rows), Tap(model, LAYER) as tap, torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    raw, post, d = tap.raw[0], tap.post[0], _np(dic)
    x = raw.numpy().astype(np.float64)
    np.testing.assert_allclose(post[0].numpy(), x[0] + np_delta(x[0], d, [rows[0].clamp]), atol=1e-5)
    assert torch.equal(post[1], raw[1])
    np.testing.assert_allclose(post[2].numpy(), x[2] + np_delta(x[2], d, [rows[1].clamp]), atol=1e-5)


def test_bf16_model_edits_in_float32():
    model = copy.deepcopy(tiny_model("llama")).to(torch.bfloat16)
    dic = jumprelu_dictionary()
    clamp = Clamp((0, 5), "set", 3.0)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(44))
    with clamp_latents(model, LAYER, dic, clamp), Tap(model, LAYER) as tap, torch.inference_mode():
        model(input_ids=ids, use_cache=False)
    raw, post = tap.raw[0], tap.post[0]
    assert post.dtype == torch.bfloat16
    x = raw.float().numpy().astype(np.float64)
    expected = x + np_delta(x, _np(dic), [clamp])
    # the exact result rounded once to bf16: within half a bf16 spacing (2^-9 relative)
    np.testing.assert_allclose(post.float().numpy(), expected, rtol=2.0 ** -8, atol=1e-6)


# --------------------------------------------------------------------------- KV cache and positions


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_kv_cache_generation_equals_uncached_recompute(positions):
    """Greedy cached generation with the clamp, left padded: each step's logits and the
    clamped layer's state equal an uncached forward over prompt + tokens so far."""
    model = tiny_model("llama")
    dic = jumprelu_dictionary()
    clamps = [Clamp((0, 5), "set", 6.0), Clamp((7,), "scale", 3.0)]
    ids, mask = _batch([7, 4], seed=45)
    width, n = ids.shape[1], 6
    with clamp_latents(model, LAYER, dic, clamps, positions) as handle, Tap(model, LAYER) as tap:
        seq, logits = _generate(model, ids, mask, n)
    assert handle.n_prefills == 1 and handle.generation_start == width and handle.n_forwards == n
    full_mask = torch.cat([mask, torch.ones((2, n), dtype=torch.long)], dim=1)
    for t in range(n):
        cur_ids, cur_mask = seq[:, :width + t], full_mask[:, :width + t]
        with clamp_latents(model, LAYER, dic, clamps, positions, generation_start=width), \
                Tap(model, LAYER) as ref_tap, torch.inference_mode():
            ref = model(input_ids=cur_ids, attention_mask=cur_mask, position_ids=_positions(cur_mask),
                        use_cache=False).logits
        torch.testing.assert_close(logits[:, t], ref[:, -1], rtol=0, atol=1e-5)
        cached_state = tap.post[t][:, -1] if t else tap.post[0]
        ref_state = ref_tap.post[0][:, -1] if t else ref_tap.post[0]
        real = cur_mask.bool() if t == 0 else torch.ones(2, dtype=torch.bool)
        torch.testing.assert_close(cached_state[real], ref_state[real], rtol=0, atol=1e-5)
    plain_seq, _ = _generate(model, ids, mask, n)
    assert not torch.equal(seq, plain_seq)  # the clamp changed the tokens


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_positions_with_left_padding(positions):
    model = tiny_model("llama")
    dic = jumprelu_dictionary()
    clamp = Clamp((2, 6), "set", 5.0)
    ids, mask = _batch([6, 3], seed=46)
    width, n = ids.shape[1], 4
    with clamp_latents(model, LAYER, dic, clamp, positions), Tap(model, LAYER) as tap:
        _generate(model, ids, mask, n)
    assert len(tap.post) == n
    d = _np(dic)
    for step, (raw, post) in enumerate(zip(tap.raw, tap.post)):
        if step == 0:
            where = _where(positions, mask.bool(), width)
        else:  # one generated token per row
            where = torch.full((2, 1), positions != "prompt")
        x = raw.numpy().astype(np.float64)
        expected = x + np_delta(x, d, [clamp])
        np.testing.assert_allclose(post[where].numpy(), expected[where.numpy()], rtol=1e-5, atol=1e-5)
        assert torch.equal(post[~where], raw[~where]), (positions, step)
        if where.any():
            assert not torch.allclose(post[where], raw[where], atol=1e-3)


# --------------------------------------------------------------------------- batched configurations


def test_generate_clamped_equals_each_config_alone():
    model = tiny_model("llama")
    dic = jumprelu_dictionary()
    g = torch.Generator().manual_seed(47)
    prompts = [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in (7, 3, 5)]
    configs = [ClampConfig(), ClampConfig((Clamp((0, 5), "set", 6.0),)),
               ClampConfig((Clamp((7,), "scale", 4.0), Clamp((3,), "zero")))]
    gen = GenerationConfig(max_new_tokens=5, min_new_tokens=5)
    batched = generate_clamped(model, _Tok(), prompts, LAYER, dic, configs, gen, max_batch=4)
    for cfg, rows in zip(configs, batched):
        for prompt, got in zip(prompts, rows):
            with clamp_latents(model, LAYER, dic, cfg.clamps):
                alone = generate_batch(model, _Tok(), [prompt], gen, 0)[0]
            assert got.response_ids == alone.response_ids, cfg.describe()
    ids = [tuple(g.response_ids) for rows in batched for g in rows]
    assert len(set(ids)) > len(prompts)  # clamping changed something


# --------------------------------------------------------------------------- hygiene and errors


def test_hooks_removed_after_context_and_on_exception():
    model = tiny_model("llama")
    dic = jumprelu_dictionary()
    block, trunk = decoder_layers(model)[LAYER], decoder_trunk(model)
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(48))
    before = _hook_counts(model)
    n_block, n_trunk = len(block._forward_hooks), len(trunk._forward_pre_hooks)
    with torch.inference_mode():
        clean = model(input_ids=ids, use_cache=False).logits
    with clamp_latents(model, LAYER, dic, Clamp((1,), "set", 5.0)):
        assert (len(block._forward_hooks), len(trunk._forward_pre_hooks)) == (n_block + 1, n_trunk + 1)
    assert _hook_counts(model) == before
    with pytest.raises(KeyError), clamp_latents(model, LAYER, dic, Clamp((1,), "zero")):
        raise KeyError("boom")
    assert _hook_counts(model) == before
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, clean)


def _one_line_error(match: str, fn) -> None:
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_bad_inputs_raise_one_line_value_errors():
    model = tiny_model("llama")
    dic = jumprelu_dictionary()

    def enter(layer=LAYER, dictionary=dic, clamps=Clamp((0,)), positions="all"):
        with clamp_latents(model, layer, dictionary, clamps, positions):
            pass

    _one_line_error(rf"layer {N_LAYERS} out of range: valid layers are 0-{N_LAYERS - 1}", lambda: enter(layer=N_LAYERS))
    _one_line_error(r"layer -1 out of range", lambda: enter(layer=-1))
    _one_line_error(rf"latent indices \[{F}\] out of range: valid latents are 0-{F - 1}",
                    lambda: enter(clamps=Clamp((1, F))))
    _one_line_error(r"latent indices \[-1\] out of range", lambda: enter(clamps=[RowClamp(0, 1, Clamp((-1,)))]))
    _one_line_error(r"unknown clamp mode 'clip': expected one of set, scale, zero", lambda: Clamp((0,), "clip"))
    narrow = LatentDictionary(np.ones((16, 4)), np.zeros(4), np.ones((4, 16)))
    _one_line_error(rf"dictionary width 16 does not match the model: d_model is {D_MODEL}",
                    lambda: enter(dictionary=narrow))
    _one_line_error(r"unknown positions 'middle'", lambda: enter(positions="middle"))
    _one_line_error(r"dec_weight_FD has shape \(4, 8\), expected \(4, 16\)",
                    lambda: LatentDictionary(np.ones((16, 4)), np.zeros(4), np.ones((4, 8))))
    _one_line_error(r"latents \[0\] are clamped twice", lambda: enter(clamps=[Clamp((0, 1)), Clamp((0,), "set", 1.0)]))
    _one_line_error(r"input_scale must be finite and > 0", lambda: LatentDictionary(np.ones((4, 2)), np.zeros(2),
                                                                                     np.ones((2, 4)), input_scale=0.0))
