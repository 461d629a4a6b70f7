"""The logit lens (transforms/circuits/lens.py) and its builder (builders/logit_lens.py).

Exactness: at the last layer the lens is the model's own logits; at every other layer it equals
a plain-numpy computation of ``hidden_states[k+1]`` through the final norm (RMSNorm, Gemma's
``1 + w``, GPT-2's LayerNorm written out here), the unembedding and Gemma 2's softcap.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_layers import N_LAYERS, VOCAB, tiny_model
from transforms.circuits import final_norm_and_unembed, logit_lens

SOFTCAP = 0.05  # small enough that tiny random logits (~0.1) are visibly capped
FAMILIES = ("llama", "gemma2", "gemma3", "qwen2", "gpt2", "peft_llama")


def _model(family: str):
    if family != "gemma2":
        return tiny_model(family)
    model = copy.deepcopy(tiny_model("gemma2"))  # the cached one is shared with other tests
    model.config.final_logit_softcapping = SOFTCAP
    return model


def _ids(n: int = 9, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, VOCAB, n).tolist()


def _forward(model, ids: list[int]):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _hand_lens(model, family: str, x_D: np.ndarray, softcap: bool = True) -> np.ndarray:
    """Final norm + unembedding + softcap in float64, from the formulas, not the modules."""
    base = model.get_base_model() if family == "peft_llama" else model
    cfg = base.config
    if family == "gpt2":
        ln = base.transformer.ln_f
        c = x_D - x_D.mean()
        normed = c / np.sqrt((c ** 2).mean() + cfg.layer_norm_epsilon) * _np(ln.weight) + _np(ln.bias)
    else:
        w = _np(base.model.norm.weight)
        scale = 1.0 + w if family.startswith("gemma") else w
        normed = x_D / np.sqrt((x_D ** 2).mean() + cfg.rms_norm_eps) * scale
    logits = normed @ _np(base.get_output_embeddings().weight).T
    cap = getattr(cfg, "final_logit_softcapping", None)
    if softcap and cap:
        logits = np.tanh(logits / cap) * cap
    return logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("position", [-1, 3])
def test_lens_equals_model_logits_and_hand_computation(family, position):
    model, ids = _model(family), _ids()
    lens_LV = logit_lens(model, ids, position, range(N_LAYERS))
    assert lens_LV.dtype == np.float32 and lens_LV.shape == (N_LAYERS, VOCAB)
    out = _forward(model, ids)
    np.testing.assert_allclose(lens_LV[-1], _np(out.logits[0, position]), atol=1e-5, rtol=0)
    for k in range(N_LAYERS - 1):  # hidden_states[k+1] = layer k below the last (the last is post-norm)
        hand = _hand_lens(model, family, _np(out.hidden_states[k + 1][0, position]))
        np.testing.assert_allclose(lens_LV[k], hand, atol=1e-5, rtol=0)


def test_softcap_is_applied_and_matters():
    model, ids = _model("gemma2"), _ids()
    assert final_norm_and_unembed(model).softcap == SOFTCAP
    assert final_norm_and_unembed(tiny_model("llama")).softcap is None
    out = _forward(model, ids)
    x = _np(out.hidden_states[1][0, -1])
    capped, raw = _hand_lens(model, "gemma2", x), _hand_lens(model, "gemma2", x, softcap=False)
    assert np.abs(capped - raw).max() > 1e-3  # a lens without the softcap would fail the test above
    assert np.abs(capped).max() <= SOFTCAP


def test_head_applies_to_a_batch_of_residuals():
    model = tiny_model("gpt2")
    out = _forward(model, _ids())
    head = final_norm_and_unembed(model)
    x_BD = out.hidden_states[2][0, :4]
    expected = np.stack([_hand_lens(model, "gpt2", _np(x)) for x in x_BD])
    np.testing.assert_allclose(head(x_BD).numpy(), expected, atol=1e-5, rtol=0)


def test_layer_subsets_and_negative_positions():
    model, ids = tiny_model("llama"), _ids(7, seed=3)
    full = logit_lens(model, ids, 2, range(N_LAYERS))
    same = dict(atol=1e-6, rtol=0)  # a matmul over fewer rows may round differently
    np.testing.assert_allclose(logit_lens(model, ids, 2, [2, 0]), full[[2, 0]], **same)
    np.testing.assert_allclose(logit_lens(model, ids, 2 - len(ids), [1]), full[[1]], **same)
    np.testing.assert_allclose(logit_lens(model, ids, -len(ids), [0]), logit_lens(model, ids, 0, [0]), **same)
    assert np.abs(full[0] - full[2]).max() > 1e-3  # layers differ: the rows are not interchangeable


def test_bf16_model_gives_float32_logits():
    model = copy.deepcopy(tiny_model("llama")).to(torch.bfloat16)
    ids = _ids()
    lens_LV = logit_lens(model, ids, -1, range(N_LAYERS))
    assert lens_LV.dtype == np.float32 and np.isfinite(lens_LV).all()
    out = _forward(model, ids)
    np.testing.assert_allclose(lens_LV[-1], out.logits[0, -1].float().numpy(), atol=1e-5, rtol=0)
    fp32 = logit_lens(tiny_model("llama"), ids, -1, range(N_LAYERS))
    np.testing.assert_allclose(lens_LV, fp32, atol=0.05)  # bf16 rounding only


@pytest.mark.parametrize("position, layers, match", [
    (9, [0], "position 9 is outside a sequence of 9 tokens"),
    (-10, [0], "position -10 is outside"),
    (0, [N_LAYERS], "out of range"),
    (0, [-1], "out of range"),
    (0, [], "no layers"),
    (0, [1, 1], "duplicate"),
])
def test_bad_positions_and_layers(position, layers, match):
    with pytest.raises(ValueError, match=match) as err:
        logit_lens(tiny_model("llama"), _ids(9), position, layers)
    assert "\n" not in str(err.value)


def test_empty_sequence():
    with pytest.raises(ValueError, match="empty"):
        logit_lens(tiny_model("llama"), [], 0, [0])


def test_span_lens_is_the_lens_of_the_mean_residual():
    from transforms.circuits import span_logit_lens

    model, ids = tiny_model("qwen2"), _ids()
    out = _forward(model, ids)
    got = span_logit_lens(model, ids, 2, 6, [0, 1])
    for row, k in enumerate([0, 1]):
        hand = _hand_lens(model, "qwen2", _np(out.hidden_states[k + 1][0, 2:6]).mean(0))
        np.testing.assert_allclose(got[row], hand, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not inside"):
        span_logit_lens(model, ids, 4, 4, [0])


# --------------------------------------------------------------------------- the builder (SmolLM2)

LENS_LAYERS = [0, 14, 29]
TEMPLATES = [("phd", "p1", "expert", "formal", "You are a professor of physics."),
             ("kid", "p1", "child", "childlike", "You are a small child."),
             ("doc", "p2", "expert", "technical", "You are a research scientist."),
             ("tot", "p2", "child", "playful", "You are a little kid.")]
QUESTIONS = [("light", "Why is the sky blue?", " light", " big"),
             ("time", "Why does time pass?", " relativity", " fast")]


@pytest.fixture(scope="module")
def lens_env(tmp_path_factory):
    from tests.persona_set import persona_catalog

    return persona_catalog(tmp_path_factory.mktemp("lens"), TEMPLATES, QUESTIONS)


def _cli_base(store, catalog_path) -> list[str]:
    return ["--store", store.location.url, "--catalog", str(catalog_path), "-q", "--variant", "a",
            "--prompt-set", "persona_t", "--layers", ",".join(map(str, LENS_LAYERS))]


@pytest.mark.slow
def test_builder_tables_equal_an_independent_lens(lens_env, smollm2):
    from scipy import stats

    from builders.logit_lens import cli
    from builders.shared import names
    from transforms.sequences import format_prompt

    store, _, catalog_path = lens_env
    assert cli(_cli_base(store, catalog_path) + ["--limit-pairs", "3", "--top-k", "5"]) == 0
    name = names.logit_lens("s", "a", "persona_t", "prompt_m1")
    top, tracked = store.read_table(name, "top_tokens").to_pandas(), store.read_table(name, "tracked").to_pandas()
    assert len(tracked) == 3 * 2 * len(LENS_LAYERS) and len(top) == 5 * len(tracked)
    assert sorted(set(tracked.pair_id)) == ["p1/light", "p1/time", "p2/light"]

    model, tok = smollm2.model, smollm2.tokenizer
    ids = format_prompt(tok, "You are a small child. Why does time pass?").ids  # p1/time, child side
    out = _forward(model, ids)
    w_norm, w_out = _np(model.model.norm.weight), _np(model.get_output_embeddings().weight)
    for layer in LENS_LAYERS:
        if layer == 29:
            logits = _np(out.logits[0, -1])  # the model's own logits
        else:
            x = _np(out.hidden_states[layer + 1][0, -1])
            logits = (x / np.sqrt((x ** 2).mean() + model.config.rms_norm_eps) * w_norm) @ w_out.T
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        row = tracked[(tracked.pair_id == "p1/time") & (tracked.role == "corrupted") & (tracked.layer == layer)]
        a, b = tok.encode(" relativity", add_special_tokens=False)[0], tok.encode(" fast", add_special_tokens=False)[0]
        assert row.side.item() == "child" and (row.expert_id.item(), row.simple_id.item()) == (a, b)
        np.testing.assert_allclose(row.logit_diff.item(), logits[a] - logits[b], atol=1e-3)
        np.testing.assert_allclose(row.expert_prob.item(), probs[a], rtol=1e-3, atol=1e-9)
        t = top[(top.pair_id == "p1/time") & (top.role == "corrupted") & (top.layer == layer)].sort_values("rank")
        assert t.token_id.tolist() == np.argsort(-logits)[:5].tolist()
        np.testing.assert_allclose(t.prob.to_numpy(), np.sort(probs)[::-1][:5], rtol=1e-3)

    by_layer = store.read_table(name, "by_layer").to_pandas()
    for (side, layer), group in tracked.groupby(["side", "layer"]):
        x = group.logit_diff.to_numpy()
        r = by_layer[(by_layer.side == side) & (by_layer.layer == layer)]
        half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        np.testing.assert_allclose([r.mean_logit_diff.item(), r.ci_high.item()], [x.mean(), x.mean() + half], rtol=1e-6)
    manifest = store.resolve(name)
    assert any(f.endswith("figures/logit_diff.png") for f in manifest.files)

    before = {m.version for m in store.versions(name)}
    assert cli(_cli_base(store, catalog_path) + ["--limit-pairs", "3", "--top-k", "5"]) == 0  # a no-op
    assert {m.version for m in store.versions(name)} == before


@pytest.mark.slow
def test_builder_track_overrides_every_pair(lens_env):
    from builders.shared import names
    from builders.stages.logit_lens import LensOptions, build_logit_lens

    store, catalog, _ = lens_env
    options = LensOptions(position="prompt[-2]", layers="29", top_k=1, track=(" simple", " complex"), limit_pairs=2)
    result = build_logit_lens(store, catalog, "a", "persona_t", options=options, quiet=True)
    assert result.built and result.manifest.name == names.logit_lens("s", "a", "persona_t", "prompt_m2")
    tracked = store.read_table(result.manifest.name, "tracked").to_pandas()
    assert set(tracked.expert_token) == {" simple"} and set(tracked.simple_token) == {" complex"}
    assert not build_logit_lens(store, catalog, "a", "persona_t", options=options, quiet=True).built


@pytest.mark.slow
@pytest.mark.parametrize("extra, needle", [
    (["--track", " antidisestablishmentarianism", " fast"], "antidisestablishmentarianism"),
    (["--variant", "nope"], "unknown variant"),
    (["--position", "prompt[-500]"], "outside the"),
    (["--position", "response[0]"], "reads the prompt"),
    (["--layers", "99"], "--layers"),
    (["--top-k", "0"], "--top-k"),
])
def test_builder_bad_inputs_exit_2_one_line(lens_env, capsys, extra, needle):
    from builders.logit_lens import cli

    store, _, catalog_path = lens_env
    root = Path(store.location.url)
    before = set(store.datasets()) if root.exists() else set()
    assert cli(_cli_base(store, catalog_path) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    after = set(store.datasets()) if root.exists() else set()
    assert not any(n.startswith("logitlens-") for n in after - before)


def test_package_exports_the_function_not_the_module():
    import subprocess
    import sys

    code = ("import sys, transforms.circuits.lens, transforms.circuits as c; "
            "assert callable(c.logit_lens) and callable(c.final_norm_and_unembed); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
