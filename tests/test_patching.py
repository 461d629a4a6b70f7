"""Activation and head patching (``transforms.circuits.patching``) against independent
implementations: TransformerLens 3.9 ``HookedTransformer`` on a tiny GPT-2 carrying the same
weights (residual, attention output, MLP output, per-head patching via ``hook_z``), and a
plain numpy forward of a tiny grouped-query Llama for head patching. Then batched == one
forward per target, planted effects, bf16, and one-line errors for bad inputs.

``tiny_gpt2`` / ``tl_twin`` / ``tiny_gqa_llama`` are shared with tests/test_head_ablation.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from transforms.capture import decoder_layers
from transforms.circuits import patching as patching_module
from transforms.circuits import (PatchTarget, check_heads, head_site, head_targets, logit_diff, normalise,
                                 patch_sweep, residual_targets)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

VOCAB, D, HEADS, LAYERS = 100, 64, 4, 3
CLEAN = [5, 17, 42, 8, 63, 21, 9, 77]
CORRUPT = [5, 17, 13, 8, 63, 88, 9, 77]  # differs at positions 2 and 5
ANSWERS = (18, 29)
ATOL = 1e-5


def _reinit(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that patching moves the metric by O(1) (the default 0.02 init
    would make every difference tiny and every comparison pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


@functools.cache
def tiny_gpt2() -> torch.nn.Module:
    import transformers as tf

    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                        bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    model = tf.GPT2LMHeadModel(cfg)
    _reinit(model, 0)
    return model.float().eval()


@functools.cache
def tl_twin():
    """A HookedTransformer with ``tiny_gpt2``'s weights, no folding or centering."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf = tiny_gpt2()
    cfg = HookedTransformerConfig(n_layers=LAYERS, d_model=D, d_head=D // HEADS, n_heads=HEADS, d_mlp=4 * D,
                                  d_vocab=VOCAB, n_ctx=64, act_fn="gelu_new", normalization_type="LN",
                                  eps=hf.config.layer_norm_epsilon, positional_embedding_type="standard",
                                  default_prepend_bos=False, device="cpu")
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False)
    return tl.eval()


@functools.cache
def tiny_gqa_llama(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """6 query heads sharing 2 key/value heads, head_dim 8 (6 * 8 = 48 != d_model 36)."""
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=36, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg)
    _reinit(model, 1)
    return model.to(dtype).eval()


@functools.cache
def tiny_gemma3(sliding_window: int = 3) -> torch.nn.Module:
    """Sliding-window layers (window 3 < the 8-token prompt) around a full-attention layer,
    grouped-query attention, sandwich norms, head_dim 8 != d_model / n_heads."""
    import transformers as tf

    cfg = tf.Gemma3TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=sliding_window,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                              attn_implementation="eager")
    torch.manual_seed(0)
    model = tf.Gemma3ForCausalLM(cfg)
    _reinit(model, 2)
    return model.float().eval()


def _last_diff(logits_1TV: torch.Tensor) -> float:
    return float(logits_1TV[0, -1, ANSWERS[0]] - logits_1TV[0, -1, ANSWERS[1]])


# --------------------------------------------------------------------------- vs TransformerLens


def test_tl_twin_has_the_same_logits():
    hf, tl = tiny_gpt2(), tl_twin()
    ids = torch.tensor([CLEAN])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, tl(ids), atol=ATOL, rtol=0)


_TL_HOOK = {"residual": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "head": "attn.hook_z"}


def _tl_patch(target: PatchTarget) -> float:
    """The same patch written with TransformerLens hooks."""
    tl = tl_twin()
    name = f"blocks.{target.layer}.{_TL_HOOK[target.component]}"
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.tensor([CLEAN]), names_filter=[name])
        clean = cache[name]
        pos = slice(None) if target.position is None else target.position

        def hook(act, hook):
            if target.head is None:
                act[:, pos] = clean[:, pos]
            else:  # hook_z: [batch, pos, head, d_head]
                act[:, pos, target.head] = clean[:, pos, target.head]
            return act

        return _last_diff(tl.run_with_hooks(torch.tensor([CORRUPT]), fwd_hooks=[(name, hook)]))


@pytest.mark.parametrize("component", ["residual", "attn_out", "mlp_out"])
def test_component_patching_matches_transformer_lens(component):
    targets = residual_targets(LAYERS, len(CLEAN), component) + [PatchTarget(component, k, None) for k in range(LAYERS)]
    sweep = patch_sweep(tiny_gpt2(), CLEAN, CORRUPT, ANSWERS, targets, batch_size=16)
    want = np.array([_tl_patch(t) for t in targets])
    tl = tl_twin()
    with torch.no_grad():
        assert sweep.clean_metric == pytest.approx(_last_diff(tl(torch.tensor([CLEAN]))), abs=ATOL)
        assert sweep.corrupted_metric == pytest.approx(_last_diff(tl(torch.tensor([CORRUPT]))), abs=ATOL)
    assert abs(sweep.clean_metric - sweep.corrupted_metric) > 0.5  # the pair moves the metric
    assert np.ptp(want) > 0.5  # and the targets differ: the comparison can fail
    np.testing.assert_allclose(sweep.metric, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("per_position", [False, True])
def test_head_patching_matches_transformer_lens_hook_z(per_position):
    model = tiny_gpt2()
    targets = head_targets(model, per_position, len(CLEAN))
    assert len(targets) == LAYERS * HEADS * (len(CLEAN) if per_position else 1)
    sweep = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batch_size=20)
    want = np.array([_tl_patch(t) for t in targets])
    assert np.ptp(want) > 0.1
    np.testing.assert_allclose(sweep.metric, want, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- GQA vs numpy


def _np_llama(model: torch.nn.Module, ids: list[int], patch=None, record: dict | None = None) -> np.ndarray:
    """A plain numpy float64 Llama forward (RMSNorm, rotate-half RoPE, grouped-query attention,
    SwiGLU). ``record[layer]`` receives z [T, H, hd]; ``patch = (layer, head, pos, z_clean)``
    overwrites head ``head`` of z at ``pos`` (None = all) before the output projection."""
    cfg = model.config
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    n_h, n_kv, hd, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)

    def rms(x, g):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * g

    t = len(ids)
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.concatenate([np.outer(np.arange(t), inv)] * 2, axis=1)  # [T, hd]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(x):  # [T, heads, hd]
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
        return x * cos + rot * sin

    x = w["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((t, t), -np.inf), 1)
    for k in range(cfg.num_hidden_layers):
        p = f"model.layers.{k}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, n_h, hd))
        kk = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, n_kv, hd))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, n_kv, hd)
        z = np.empty((t, n_h, hd))
        for head in range(n_h):
            g = head // (n_h // n_kv)  # the key/value head this query head reads
            s = q[:, head] @ kk[:, g].T / np.sqrt(hd) + causal
            a = np.exp(s - s.max(-1, keepdims=True))
            z[:, head] = (a / a.sum(-1, keepdims=True)) @ v[:, g]
        if record is not None:
            record[k] = z.copy()
        if patch is not None and patch[0] == k:
            _, head, pos, z_clean = patch
            sel = slice(None) if pos is None else pos
            z[sel, head] = z_clean[sel, head]
        x = x + z.reshape(t, n_h * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    logits = rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T
    return logits[-1, ANSWERS[0]] - logits[-1, ANSWERS[1]]


def test_gqa_head_patching_matches_a_numpy_llama():
    model = tiny_gqa_llama()
    site = head_site(model, 1)
    assert (site.n_heads, site.head_dim) == (6, 8) and site.module is model.model.layers[1].self_attn.o_proj
    clean_z: dict[int, np.ndarray] = {}
    clean_ref = _np_llama(model, CLEAN, record=clean_z)
    with torch.no_grad():
        assert _last_diff(model(torch.tensor([CLEAN])).logits) == pytest.approx(clean_ref, abs=ATOL)
    targets = head_targets(model, False, len(CLEAN)) + [t for t in head_targets(model, True, len(CLEAN))
                                                        if t.position in (2, 5, 7)]
    sweep = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batch_size=9)
    want = np.array([_np_llama(model, CORRUPT, patch=(t.layer, t.head, t.position, clean_z[t.layer]))
                     for t in targets])
    assert sweep.clean_metric == pytest.approx(clean_ref, abs=ATOL)
    assert sweep.corrupted_metric == pytest.approx(_np_llama(model, CORRUPT), abs=ATOL)
    assert np.ptp(want) > 0.1
    np.testing.assert_allclose(sweep.metric, want, atol=ATOL, rtol=0)


def test_head_sites_read_the_config_head_shape():
    """SmolLM2's shape (9 query heads, 3 KV heads, 576 = 9 x 64) and a Gemma 3 whose head_dim is
    not d_model / n_heads (as in Gemma 3 270M); built on the meta device, no weights."""
    import transformers as tf

    with torch.device("meta"):
        smol = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=576, intermediate_size=64,
                                                  num_hidden_layers=3, num_attention_heads=9, num_key_value_heads=3))
        gemma = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         num_key_value_heads=1, head_dim=16))
    s = head_site(smol, 2)
    assert (s.n_heads, s.head_dim, s.module) == (9, 64, smol.model.layers[2].self_attn.o_proj)
    g = head_site(gemma, 1)
    assert (g.n_heads, g.head_dim, g.module.in_features) == (4, 16, 64)
    assert head_site(tiny_gpt2(), 0).module is tiny_gpt2().transformer.h[0].attn.c_proj
    assert check_heads(smol, [(0, 8), (2, 0)]) == [(0, 8), (2, 0)]


# --------------------------------------------------------------------------- batching, planted, bf16


def _mixed_targets(model, n_tokens: int) -> list[PatchTarget]:
    n_layers = len(decoder_layers(model))
    out = [PatchTarget(c, k, p) for c in ("residual", "attn_out", "mlp_out") for k in range(n_layers)
           for p in (None, 0, 2, -1)]
    return out + [t for t in head_targets(model, True, n_tokens) if t.position in (1, 2, 5)]


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_gqa_llama])
def test_batched_equals_one_forward_per_target(make):
    model = make()
    targets = _mixed_targets(model, len(CLEAN))
    one = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batched=False)
    assert np.ptp(one.metric) > 0.1
    for batch_size in (7, 16, len(targets) + 5):  # 7 does not divide the target count
        assert len(targets) % 7 != 0
        many = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batch_size=batch_size)
        np.testing.assert_allclose(many.metric, one.metric, atol=ATOL, rtol=0)
        assert (many.clean_metric, many.corrupted_metric) == (one.clean_metric, one.corrupted_metric)
    # nothing left behind: no hooks, no replaced block forward (skipped blocks are restored)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all("forward" not in b.__dict__ for b in decoder_layers(model))


def _per_position_targets(model, n_tokens: int) -> list[PatchTarget]:
    n_layers = len(decoder_layers(model))
    out = [PatchTarget(c, k, p) for c in ("residual", "attn_out", "mlp_out") for k in range(n_layers)
           for p in range(-1, n_tokens)]  # -1 == the last position, by another name
    return out + head_targets(model, True, n_tokens) + [PatchTarget("attn_out", 1, None)]


def _embedded_lengths(model, fn) -> list[int]:
    """Run ``fn`` and return the number of tokens of every forward (the embedding's input)."""
    lengths: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    try:
        fn()
    finally:
        handle.remove()
    return lengths


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_gqa_llama, tiny_gemma3])
def test_prefix_cached_rows_equal_the_plain_path(make):
    """Rows patched at position p run only tokens p.. with the corrupted keys/values before p
    as a cache (GPT-2's absolute positions, Llama's RoPE + GQA, Gemma 3's sliding windows):
    the same numbers as one full forward per target."""
    model = make()
    targets = _per_position_targets(model, len(CLEAN))
    one = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batched=False)
    assert np.ptp(one.metric) > 0.1
    for batch_size in (5, 16):
        box = {}
        lengths = _embedded_lengths(model, lambda: box.setdefault(
            "s", patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batch_size=batch_size)))
        np.testing.assert_allclose(box["s"].metric, one.metric, atol=ATOL, rtol=0)
        # the clean and corrupted runs see the whole prompt; the late chunks only their suffix
        assert lengths[:2] == [len(CLEAN)] * 2 and min(lengths) < len(CLEAN) // 2
    assert all("forward" not in b.__dict__ for b in decoder_layers(model))


def test_gemma3_sliding_window_is_in_effect():
    """The tiny Gemma 3's window is shorter than the prompt and changes its output, so a
    prefix cache that ignored the window would fail the test above."""
    small, wide = tiny_gemma3(3), tiny_gemma3(64)
    wide.load_state_dict(small.state_dict())
    assert small.config.sliding_window < len(CLEAN)
    with torch.no_grad():
        a, b = small(torch.tensor([CORRUPT])).logits, wide(torch.tensor([CORRUPT])).logits
    assert (a[0, -1] - b[0, -1]).abs().max() > 1e-2
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-5)  # the first 3 tokens fit in both windows


def test_models_without_prefix_support_replay_whole_prompts(monkeypatch):
    model = tiny_gemma3()
    targets = _per_position_targets(model, len(CLEAN))[::3]
    want = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batch_size=6).metric
    monkeypatch.setattr(patching_module, "prefix_cache_supported", lambda m: False)
    box = {}
    lengths = _embedded_lengths(model, lambda: box.setdefault(
        "s", patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batch_size=6)))
    assert set(lengths) == {len(CLEAN)}
    np.testing.assert_allclose(box["s"].metric, want, atol=ATOL, rtol=0)


def test_planted_effects_of_whole_residual_and_last_layer_patches():
    """Patching the whole residual at any layer gives the clean metric; at the last layer only
    the last position matters (nothing downstream mixes positions)."""
    model = tiny_gqa_llama()
    last = model.config.num_hidden_layers - 1
    targets = [PatchTarget("residual", k, None) for k in range(last + 1)]
    targets += [PatchTarget("residual", last, p) for p in range(len(CLEAN))]
    sweep = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batch_size=5)
    m = sweep.metric
    np.testing.assert_allclose(m[:last + 1], sweep.clean_metric, atol=ATOL)
    np.testing.assert_allclose(m[last + 1:-1], sweep.corrupted_metric, atol=ATOL)
    assert m[-1] == pytest.approx(sweep.clean_metric, abs=ATOL)
    norm = sweep.normalised
    np.testing.assert_allclose(norm[:last + 1], 1.0, atol=1e-4)
    np.testing.assert_allclose(norm[last + 1:-1], 0.0, atol=1e-4)
    # unchanged positions: patching the residual at position 0 of layer 0 changes nothing
    same = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, [PatchTarget("residual", 0, 0), PatchTarget("residual", 0, 1)])
    np.testing.assert_allclose(same.metric, same.corrupted_metric, atol=ATOL)


def test_bf16_model_runs_with_a_float32_metric():
    model = tiny_gqa_llama(torch.bfloat16)
    targets = [PatchTarget("residual", 1, None), PatchTarget("residual", 0, 2), PatchTarget("head", 1, None, 3)]
    sweep = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets)
    assert sweep.metric.dtype == np.float64 and np.isfinite(sweep.metric).all()
    assert sweep.metric[0] == pytest.approx(sweep.clean_metric, abs=0.05)
    one = patch_sweep(model, CLEAN, CORRUPT, ANSWERS, targets, batched=False)
    np.testing.assert_allclose(sweep.metric, one.metric, atol=0.1)


def test_metric_helpers_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 10)).astype(np.float32)
    pairs = np.array([[1, 2], [3, 3], [9, 0], [4, 5]])
    got = logit_diff(torch.from_numpy(logits).bfloat16(), pairs)
    assert got.dtype == torch.float32
    bf = torch.from_numpy(logits).bfloat16().float().numpy()
    np.testing.assert_allclose(got.numpy(), bf[np.arange(4), pairs[:, 0]] - bf[np.arange(4), pairs[:, 1]])
    assert normalise(3.0, 5.0, 1.0) == 0.5
    np.testing.assert_allclose(normalise(np.array([1.0, 5.0, 7.0]), 5.0, 1.0), [0.0, 1.0, 1.5])
    assert np.isnan(normalise(2.0, 1.0, 1.0))


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kwargs, message", [
    ({"corrupted": CORRUPT[:-1]}, "differ in length"),
    ({"targets": [PatchTarget("head", 0, None, 4)]}, "head 4 out of range: valid heads are 0-3"),
    ({"targets": [PatchTarget("head", 3, None, 0)]}, "layer 3 out of range"),
    ({"targets": [PatchTarget("residual", 0, 8)]}, "position 8 is outside the prompt"),
    ({"targets": [PatchTarget("mlp_out", 1, -9)]}, "position -9 is outside the prompt"),
    ({"targets": [PatchTarget("attn_out", 5, 0)]}, "layer 5 out of range"),
    ({"targets": []}, "no patch targets"),
    ({"answers": (3, VOCAB)}, "answer ids"),
])
def test_bad_inputs_are_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        patch_sweep(tiny_gpt2(), CLEAN, kwargs.get("corrupted", CORRUPT), kwargs.get("answers", ANSWERS),
                    kwargs.get("targets", [PatchTarget("residual", 0, 0)]))
    assert "\n" not in str(err.value)


def test_patch_target_validation():
    with pytest.raises(ValueError, match="unknown patch component"):
        PatchTarget("resid", 0, 0)
    with pytest.raises(ValueError, match="head index"):
        PatchTarget("head", 0, 0)
    with pytest.raises(ValueError, match="head index"):
        PatchTarget("residual", 0, 0, head=1)
