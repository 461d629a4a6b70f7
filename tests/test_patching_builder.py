"""The patching builders on SmolLM2: builders/patching.py (activation and head patching) and
builders/direction_patching.py (alpha x a direction at a layer).

The published numbers are checked against a direct :func:`patch_sweep` call and, for the
baselines and the direction patching, against plain forwards written here (a hand-made hook adds
the vector). Planted: adding the clean-minus-corrupted mean residual difference to the corrupted
prompt moves its logit difference towards the clean one.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from builders.shared import names

# two template pairs aligned token for token under SmolLM2 (the physicist pair of datasets/persona),
# one misaligned pair for the refusal
TEMPLATES = [("phd", "physicist", "expert", "academic", "You are a physics professor with a PhD."),
             ("kid", "physicist", "child", "childlike", "You are a little child who is five."),
             ("prof", "bad", "expert", "formal", "You are a professor."),
             ("tot", "bad", "child", "playful", "You are a very very small and silly little child.")]
QUESTIONS = [("sun", "What makes the sun shine so brightly?", "Nuclear", "Fire"),
             ("bolt", "What is a bolt of lightning made of?", "Electric", "Fire")]
PAIRS = "physicist/sun,physicist/bolt"
LAYERS = [3, 20]
VEC_LAYERS = [5, 10]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tests.persona_set import persona_catalog

    return persona_catalog(tmp_path_factory.mktemp("patching"), TEMPLATES, QUESTIONS,
                           prompt_format="{persona} {question} Answer with one word.")


def _base(store, catalog_path) -> list[str]:
    return ["--store", store.location.url, "--catalog", str(catalog_path), "-q", "--variant", "a",
            "--prompt-set", "persona_t", "--pairs", PAIRS]


def _pairs(env, smollm2):
    from builders.stages.logit_lens import load_pairs
    from transforms.prompts.persona import tokenize_pairs

    _, catalog, _ = env
    pairs = [p for p in load_pairs(catalog, "persona_t", None) if p.pair_id.startswith("physicist/")]
    return tokenize_pairs(pairs, smollm2.tokenizer)


_PLAIN: dict[tuple, float] = {}


def _plain_metric(model, ids: list[int], answer: tuple[int, int], cache: bool = True) -> float:
    """logit(answer[0]) - logit(answer[1]) at the last position, float64, from a plain forward."""
    key = (tuple(ids), tuple(answer))
    if cache and key in _PLAIN:
        return _PLAIN[key]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].double()
    value = float(logits[answer[0]] - logits[answer[1]])
    if cache:
        _PLAIN[key] = value
    return value


@pytest.mark.slow
def test_residual_and_head_patching_equal_a_direct_sweep(env, smollm2):
    from builders.patching import cli
    from transforms.circuits import PatchTarget, patch_sweep

    store, _, catalog_path = env
    layers = ",".join(map(str, LAYERS))
    assert cli(_base(store, catalog_path) + ["--kind", "residual", "--layers", layers, "--positions=-3:"]) == 0
    assert cli(_base(store, catalog_path) + ["--kind", "heads", "--heads", "L3H1,L20H8"]) == 0
    model, tok = smollm2.model, smollm2.tokenizer
    for kind in ("residual", "heads"):
        name = names.patching("s", "a", "persona_t", kind)
        data, base = store.read_table(name).to_pandas(), store.read_table(name, "baselines").to_pandas()
        assert sorted(base.pair_id) == ["physicist/bolt", "physicist/sun"]
        for pair in _pairs(env, smollm2):
            n = len(pair.clean_ids)
            b = base[base.pair_id == pair.pair_id].iloc[0]
            # baselines: plain forwards, float64 logits
            assert b.n_tokens == n and b.expert_token in ("Nuclear", "Electric") and b.simple_token == "Fire"
            np.testing.assert_allclose(b.clean_metric, _plain_metric(model, pair.clean_ids, pair.answer_ids), atol=1e-4)
            np.testing.assert_allclose(b.corrupted_metric, _plain_metric(model, pair.corrupted_ids, pair.answer_ids),
                                       atol=1e-4)
            assert b.gap == pytest.approx(b.clean_metric - b.corrupted_metric) and b.used == (abs(b.gap) >= 0.5)
            rows = data[data.pair_id == pair.pair_id]
            if kind == "residual":
                targets = [PatchTarget("residual", k, p) for k in LAYERS for p in range(n - 3, n)]
                got = rows.sort_values(["layer", "position"])
                assert got.from_end.tolist() == [t.position - n for t in targets]
                assert got.token.tolist() == [tok.decode([pair.corrupted_ids[t.position]]) for t in targets]
                assert got.clean_token.tolist() == [tok.decode([pair.clean_ids[t.position]]) for t in targets]
            else:
                targets = [PatchTarget("head", 3, None, 1), PatchTarget("head", 20, None, 8)]
                got = rows.sort_values(["layer", "head"])
                assert got.position.isna().all() and got.token.isna().all() and (got.component == "head").all()
            sweep = patch_sweep(model, pair.clean_ids, pair.corrupted_ids, pair.answer_ids, targets)
            np.testing.assert_allclose(got.metric.to_numpy(), sweep.metric, atol=1e-6, rtol=0)
            expected = (sweep.metric - b.corrupted_metric) / (b.clean_metric - b.corrupted_metric)
            if b.used:
                np.testing.assert_allclose(got.normalised.to_numpy(), expected, atol=1e-5)
            else:
                assert got.normalised.isna().all()
        files = store.resolve(name).files
        assert "figures/by_offset.png" in files if kind == "residual" else "figures/heads.png" in files
    assert {"figures/pair_0.png", "figures/pair_1.png"} <= set(store.resolve(names.patching(
        "s", "a", "persona_t", "residual")).files)


@pytest.mark.slow
def test_rebuild_is_a_noop_and_min_gap_blanks_normalised(env, smollm2, capsys):
    from builders.patching import cli

    store, _, catalog_path = env
    args = _base(store, catalog_path) + ["--kind", "mlp_out", "--layers", "28", "--positions=-1"]
    assert cli(args) == 0
    name = names.patching("s", "a", "persona_t", "mlp_out")
    first = store.resolve(name)
    capsys.readouterr()
    assert cli(args) == 0
    assert "up to date" in capsys.readouterr().out and store.resolve(name).ref == first.ref
    assert store.read_table(name).to_pandas().normalised.notna().any()
    assert cli(args + ["--min-gap", "1000"]) == 0
    blank = store.read_table(name).to_pandas()
    assert blank.normalised.isna().all() and not store.read_table(name, "baselines").to_pandas().used.any()


@pytest.mark.slow
@pytest.mark.parametrize("extra, match", [
    (["--pairs", "bad/sun"], "not aligned token for token"),
    (["--kind", "heads", "--heads", "L3H9"], "head 9 out of range"),
    (["--kind", "heads", "--heads", "L30H0"], "layer 30 out of range"),
    (["--kind", "residual", "--positions", "prompt[300]"], "outside the"),
    (["--kind", "residual", "--layers", "40"], "--layers"),
    (["--kind", "residual", "--pairs", "nope/sun"], "unknown pair id"),
    (["--kind", "residual", "--variant", "zzz"], "zzz"),
])
def test_bad_inputs_one_line_exit_2_nothing_published(env, capsys, extra, match):
    from builders.patching import cli

    store, _, catalog_path = env
    before = {m.ref for m in store.all_manifests()}
    capsys.readouterr()
    assert cli(_base(store, catalog_path) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert {m.ref for m in store.all_manifests()} == before


# --------------------------------------------------------------------------- direction patching

def _publish_vectors(store, name: str, vectors_LD: np.ndarray, layers: list[int]) -> str:
    from safetensors.numpy import save

    from store import BuildSpec

    def produce(writer):
        meta = {"layers": json.dumps(layers), "model_id": "pkg:smollm2-135m-instruct"}
        writer.write_bytes("vectors/mean_diff.safetensors",
                           save({"vectors": vectors_LD.astype(np.float32)}, metadata=meta))
        writer.write_table([{"layer": k} for k in layers])

    spec = BuildSpec(name=name, kind="vectors", builder="tests", code_version="1",
                     params={"variant": "a", "prompt_set": "persona_t", "n": int(vectors_LD.shape[1])},
                     parents={}, identity={})
    return store.build(spec, produce).manifest.ref


def _residual_directions(model, pairs, layers: list[int]) -> np.ndarray:
    """Per layer, the mean over pairs and prompt positions of clean - corrupted residual."""
    diffs = []
    with torch.inference_mode():
        for pair in pairs:
            hs = [model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
                  for ids in (pair.clean_ids, pair.corrupted_ids)]
            diffs.append([(hs[0][k + 1][0] - hs[1][k + 1][0]).double().mean(0).numpy() for k in layers])
    return np.mean(diffs, axis=0)


def _hooked_metric(model, ids, answer, layer: int, add_D: np.ndarray) -> float:
    """The metric with ``add_D`` added to block ``layer``'s output at every position (a plain hook)."""
    add = torch.tensor(add_D, dtype=torch.float32)

    def hook(module, args, out):
        return (out[0] + add, *out[1:]) if isinstance(out, tuple) else out + add

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        return _plain_metric(model, ids, answer, cache=False)
    finally:
        handle.remove()


@pytest.mark.slow
def test_direction_patching_planted_direction(env, smollm2):
    from builders.direction_patching import cli

    store, _, catalog_path = env
    model, pairs = smollm2.model, _pairs(env, smollm2)
    d = _residual_directions(model, pairs, VEC_LAYERS)
    ref = _publish_vectors(store, "vectors-t-planted", d, VEC_LAYERS)
    base = ["--store", store.location.url, "--catalog", str(catalog_path), "-q", "--vectors", ref,
            "--method", "mean_diff", "--prompt-set", "persona_t", "--pairs", PAIRS, "--layer", "10"]
    assert cli(base + ["--alphas=-1,0,1", "--scale", "raw"]) == 0
    name = names.patching("s", "a", "persona_t", "direction")
    data = store.read_table(name).to_pandas()
    assert len(data) == 2 * 3 * 2 and set(data.vectors) == {ref} and set(data.method) == {"mean_diff"}
    for pair in pairs:
        for side, ids in (("clean", pair.clean_ids), ("corrupted", pair.corrupted_ids)):
            rows = data[(data.pair_id == pair.pair_id) & (data.side == side)].set_index("alpha")
            # alpha 0 = the unsteered run; alpha 1 = a hand-made hook adding the vector
            np.testing.assert_allclose(rows.metric[0.0], _plain_metric(model, ids, pair.answer_ids), atol=1e-4)
            assert rows.delta[0.0] == 0.0
            np.testing.assert_allclose(rows.metric[1.0], _hooked_metric(model, ids, pair.answer_ids, 10, d[1]),
                                       atol=1e-3)
        corrupted = data[(data.pair_id == pair.pair_id) & (data.side == "corrupted")].set_index("alpha")
        clean_metric = _plain_metric(model, pair.clean_ids, pair.answer_ids)
        assert clean_metric > corrupted.metric[0.0]  # the persona moves this pair's metric
        assert corrupted.delta[1.0] > 0 > corrupted.delta[-1.0]  # planted: towards clean, and away
    by_alpha = store.read_table(name, "by_alpha").to_pandas()
    assert len(by_alpha) == 6 and "figures/delta_by_alpha.png" in store.resolve(name).files
    means = data.groupby(["side", "alpha"]).delta.mean()
    np.testing.assert_allclose(by_alpha.set_index(["side", "alpha"]).mean_delta.sort_index(), means.sort_index())

    # unit scale: alpha = the added norm; the coefficient is alpha / ||v||
    assert cli(base + ["--alphas", "0,5", "--scale", "unit"]) == 0
    unit = store.read_table(name).to_pandas()
    np.testing.assert_allclose(unit[unit.alpha == 5.0].coef, 5.0 / np.linalg.norm(d[1].astype(np.float32)), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("what, match", [("narrow", "has width 7"), ("layer", "has no layer 3"),
                                         ("alphas", "--alphas")])
def test_direction_patching_bad_inputs(env, capsys, what, match):
    from builders.direction_patching import cli

    store, _, catalog_path = env
    if what == "narrow":
        ref = _publish_vectors(store, "vectors-t-narrow", np.ones((2, 7)), VEC_LAYERS)
    else:
        ref = _publish_vectors(store, "vectors-t-wide", np.ones((2, 576)), VEC_LAYERS)
    layer = "3" if what == "layer" else "10"
    alphas = "1,x" if what == "alphas" else "0,1"
    before = {m.ref for m in store.all_manifests()}
    capsys.readouterr()
    code = cli(["--store", store.location.url, "--catalog", str(catalog_path), "-q", "--vectors", ref,
                "--method", "mean_diff", "--prompt-set", "persona_t", "--layer", layer, "--alphas", alphas])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and "\n" not in err
    assert {m.ref for m in store.all_manifests()} == before
