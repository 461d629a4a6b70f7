"""builders.clamping on SmolLM2 (A) vs SmolLM2 + a random LoRA (B), 3 questions, 6 new tokens.

The crosscoder is written here with ``save_crosscoder`` (planted: latents 0-3 have a tiny A
decoder, so they are ``b_only``) and imported with ``build_crosscoder(checkpoint=...)``, which
computes its latent table on the pair's tokens. References are independent of the stage: a
direct ``generate_batch`` per prompt under ``clamp_latents`` with a dictionary built here from
the crosscoder's tensors, plain numpy for the pure helpers.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from builders.clamping import cli as clamping_cli
from builders.shared.catalog import load_catalog
from builders.shared.common import BuildError
from builders.shared.judges import JudgeChoice
from builders.stages.clamping import ClampingOptions, clamp_run, crosscoder_slice, matched_random_latents, top_b_only
from store import Store

from .trait_set import write_trait_set

pytestmark = pytest.mark.slow

QUESTIONS = ["Describe a rainy afternoon.", "What do you think about Mondays?", "Say something about the sea."]
LAYER, F, B_ONLY = 12, 32, (0, 1, 2, 3)
# Cheap judges (as tests/test_precision.py): the perplexity judge's calibration scores 305 answers
# on the adapted model, minutes on a CPU; the stage's judging path is the same whichever judge.
JUDGES = JudgeChoice(trait="sentiment", coherence="local", allow_uncalibrated=True)
CHEAP_JUDGE_ARGS = ["--coherence-judge", "local", "--allow-uncalibrated"]


def _planted_crosscoder(rms: float):
    """Random encoder columns (unit norm) with a positive bias so most latents fire; decoder
    rows of norm 8 in the scaled space; latents 0-3 almost absent from model A's decoder."""
    from transforms.dictionaries import CrossCoder

    model = CrossCoder(2, 576, F, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        enc = torch.randn(2, 576, F, generator=g)
        model.encoder["weight"].copy_(enc / enc.norm(dim=1, keepdim=True))
        model.encoder["bias"].fill_(0.5)
        dec = torch.randn(2, F, 576, generator=g)
        dec = dec / dec.norm(dim=2, keepdim=True) * 8.0
        dec[0, list(B_ONLY)] *= 0.01
        model.decoder["weight"].copy_(dec)
    model.set_input_scale([1.0 / rms, 1.0 / rms])
    return model


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2):
    from peft import LoraConfig, get_peft_model

    from builders.stages.crosscoder import build_crosscoder
    from transforms.dictionaries import save_crosscoder
    from transforms.sequences import format_prompt

    root = tmp_path_factory.mktemp("clamping")
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(smollm2.model), LoraConfig(r=4, lora_alpha=4, target_modules=["o_proj", "down_proj"],
                                                                   init_lora_weights=False))
    lora.save_pretrained(root / "adapter")
    (root / "general.json").write_text(json.dumps({"prompts": [{"id": f"g{i}", "text": t} for i, t in enumerate(QUESTIONS)]}))
    (root / "trait").mkdir()
    trait = write_trait_set(root / "trait")
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "traits": {"optimism": {"definition": str(trait / "definition.txt"), "sentiment": "positive"}},
        "prompt_sets": {"general": {"path": str(root / "general.json")},
                        "optimism_instruction": {"path": str(trait), "trait": "optimism"}},
        "experiments": {"s": {"variants": {"a": {"model": "smol"}, "b": {"model": "smol", "adapter": str(root / "adapter")}},
                              "prompt_sets": ["general", "optimism_instruction"]}},
        "defaults": {"experiment": "s", "responses": {"max_new_tokens": 6}, "steering": {"max_new_tokens": 6}},
    }))
    store, catalog = Store(str(root / "store")), load_catalog(path)
    with torch.inference_mode():
        ids = torch.tensor([format_prompt(smollm2.tokenizer, QUESTIONS[0]).ids])
        rms = float(smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1].pow(2).mean().sqrt())
    crosscoder = _planted_crosscoder(rms)
    save_crosscoder(crosscoder, root / "checkpoint")
    manifest = build_crosscoder(store, catalog, "a", "b", "general", LAYER, checkpoint=str(root / "checkpoint"),
                                top_k=2, quiet=True).manifest
    return store, catalog, path, crosscoder, manifest


@pytest.fixture(scope="module")
def zero_run(env):
    store, catalog, _, _, xc = env
    return clamp_run(store, catalog, xc.ref, "b", "general", latents=[0, 1, 2, 3], judges=JUDGES, quiet=True).manifest


def _direct(loaded, prompts: list[list[int]], dictionary=None, clamp=None) -> list[list[int]]:
    """Each prompt alone: generate_batch, under clamp_latents when a clamp is given."""
    from transforms.sequences import GenerationConfig, generate_batch
    from transforms.steering import clamp_latents

    gen = GenerationConfig(max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    out = []
    for p in prompts:
        if clamp is None:
            out.append(generate_batch(loaded.model, loaded.tokenizer, [p], gen, 0)[0].response_ids)
            continue
        with clamp_latents(loaded.model, LAYER, dictionary, clamp, "all", prompt_lens=[len(p)], generation_start=len(p)):
            out.append(generate_batch(loaded.model, loaded.tokenizer, [p], gen, 0)[0].response_ids)
    return out


def test_zero_clamp_and_baseline_equal_direct_generation(env, zero_run):
    from builders.shared.variants import variant_model
    from builders.stages.responses import format_row
    from transforms.steering import Clamp, LatentDictionary

    store, catalog, _, crosscoder, _ = env
    runs = store.read_table(zero_run).to_dicts()
    responses = store.read_table(zero_run, "responses")
    assert [r["control"] for r in runs] == ["baseline", "chosen", "random"]
    chosen, random_row = runs[1], runs[2]
    assert chosen["latents"] == "0,1,2,3" and chosen["mode"] == "zero" and chosen["n"] == 3
    randoms = [int(i) for i in random_row["latents"].split(",")]
    assert len(randoms) == 4 and not set(randoms) & set(B_ONLY)

    loaded = variant_model(store, catalog.variant("s", "b"))
    prompts = [format_row(loaded.tokenizer, q, None, "instruction").ids for q in QUESTIONS]
    # the dictionary from the crosscoder's tensors, model B's slice
    dic = LatentDictionary(crosscoder.encoder["weight"][1].detach().numpy(), crosscoder.encoder["bias"].detach().numpy(),
                           crosscoder.decoder["weight"][1].detach().numpy(), input_scale=float(crosscoder.input_scale[1]))
    expected = {"baseline": _direct(loaded, prompts),
                "chosen": _direct(loaded, prompts, dic, Clamp((0, 1, 2, 3), "zero")),
                "random": _direct(loaded, prompts, dic, Clamp(tuple(randoms), "zero"))}
    for row in runs:
        mine = responses.filter(pl.col("run_id") == row["run_id"]).to_dicts()
        assert [r["question"] for r in mine] == QUESTIONS
        for r, ids in zip(mine, expected[row["control"]]):
            assert r["response"] == loaded.tokenizer.decode(ids, skip_special_tokens=True) and r["n_tokens"] == len(ids)
        traits = [r["trait"] for r in mine]
        assert row["trait_mean"] == pytest.approx(np.mean(traits)) and row["trait_std"] == pytest.approx(np.std(traits))
        assert row["coherence_mean"] == pytest.approx(np.mean([r["coherence"] for r in mine if r["coherence"] is not None]))
        assert row["delta"] == pytest.approx(row["trait_mean"] - runs[0]["trait_mean"])
    assert chosen["control_delta"] == pytest.approx(chosen["trait_mean"] - random_row["trait_mean"])
    assert expected["chosen"] != expected["baseline"]  # the planted latents do change the answers


def test_rerun_is_a_noop_and_generations_are_cached(env, zero_run, monkeypatch):
    import transforms.steering as steering_mod

    store, catalog, _, _, xc = env
    again = clamp_run(store, catalog, xc.ref, "b", "general", latents=[0, 1, 2, 3], judges=JUDGES, quiet=True)
    assert not again.built and again.manifest.version == zero_run.version
    calls = []
    original = steering_mod.generate_clamped
    monkeypatch.setattr(steering_mod, "generate_clamped", lambda *a, **k: calls.append(1) or original(*a, **k))
    forced = clamp_run(store, catalog, xc.ref, "b", "general", latents=[0, 1, 2, 3], judges=JUDGES, force=True,
                       quiet=True)
    assert calls == [] and forced.manifest.version == zero_run.version  # every generation from the cache


def test_scale_mode_and_top_b_only_from_the_cli(env):
    store, _, catalog_path, _, xc = env
    table = store.read_table(xc).to_dicts()
    args = ["--store", str(store.location.url), "--catalog", str(catalog_path), "-q", "--variant", "b",
            "--dictionary", xc.ref, "--prompts", "general", "--mode", "scale", "--values", "0,2", *CHEAP_JUDGE_ARGS]
    assert clamping_cli(args + ["--top-b-only", "2"]) == 0
    run = store.latest(f"clamping-s-b-general-{xc.name}")
    rows = store.read_table(run).to_dicts()
    assert [(r["control"], r["value"]) for r in rows] == [("baseline", None), ("chosen", 0.0), ("random", 0.0),
                                                          ("chosen", 2.0), ("random", 2.0)]
    # independent pick: b_only, nu_error < 0.5 when known, lowest dec_norm_diff
    ok = [r for r in table if r["tag"] == "b_only" and (r["nu_error"] is not None and r["nu_error"] < 0.5)]
    expected = [r["latent"] for r in sorted(ok, key=lambda r: (r["dec_norm_diff"], r["latent"]))[:2]]
    assert run.params["latents"] == expected and rows[1]["latents"] == ",".join(map(str, expected))
    assert run.params["judges"]["trait"] == "sentiment"  # the catalog gives optimism a sentiment direction


def test_bad_inputs_exit_2_and_publish_nothing(env, zero_run, capsys):
    from builders.stages.crosscoder import write_weights
    from store import BuildSpec
    from transforms.dictionaries import CrossCoder

    store, _, catalog_path, _, xc = env
    narrow = store.build(BuildSpec(name="crosscoder-s-a-b-general-L3-imported", kind="crosscoder", builder="test",
                                   code_version="1", params={"a": "a", "b": "b", "layer": 3}, parents={}, identity={}),
                         lambda w: write_weights(w, CrossCoder(2, 8, 16), {})).manifest
    deep = store.build(BuildSpec(name="crosscoder-s-a-b-general-L40-imported", kind="crosscoder", builder="test",
                                 code_version="1", params={"a": "a", "b": "b", "layer": 40}, parents={}, identity={}),
                       lambda w: write_weights(w, CrossCoder(2, 576, 16), {})).manifest
    before = {m.ref for m in store.all_manifests()}
    common = ["--store", str(store.location.url), "--catalog", str(catalog_path), "-q", "--prompts", "general"]
    cases = [
        (["--variant", "b", "--dictionary", xc.ref, "--latents", "5,32"], "out of range"),
        (["--variant", "b", "--dictionary", xc.ref, "--latents", "1", "--layer", "3"], "does not match"),
        (["--variant", "b", "--dictionary", narrow.ref, "--latents", "1"], "d_model is 576"),
        (["--variant", "b", "--dictionary", deep.ref, "--latents", "1"], "layers 0-29"),
        (["--variant", "b", "--dictionary", xc.ref, "--latents", "1", "--mode", "set"], "needs --values"),
        (["--variant", "b", "--dictionary", xc.ref, "--latents", "1", "--model-index", "2"], "--model-index"),
        (["--variant", "b", "--dictionary", xc.ref, "--latents", "1,x"], "--latents"),
        (["--variant", "b", "--dictionary", zero_run.ref, "--latents", "1"], "not a crosscoder"),
    ]
    for extra, expected in cases:
        assert clamping_cli(common + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err
    assert {m.ref for m in store.all_manifests()} == before


def test_slice_encodes_like_the_crosscoder_on_one_model():
    """A batch_topk crosscoder with a threshold: the slice's JumpReLU code equals the
    crosscoder's own code when the other model's input is zero."""
    from transforms.dictionaries import CrossCoder

    model = CrossCoder(2, 16, 24, kind="batch_topk", k=4, seed=1)
    with torch.no_grad():
        model.encoder["bias"].fill_(0.1)
        model.threshold.fill_(0.05)
    model.set_input_scale([0.5, 2.0])
    model.eval()
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(2))
    sliced = crosscoder_slice(model, 1)
    both = torch.stack([torch.zeros_like(x), x], dim=1)
    with torch.no_grad():
        expected = model.encode(model.normalize(both)).numpy()
    got = sliced.encode(x, list(range(24))).numpy()
    assert np.abs(expected).sum() > 0 and np.allclose(got, expected, atol=1e-5)
    with pytest.raises(BuildError, match="--model-index"):
        crosscoder_slice(model, 2)


def test_top_b_only_and_matched_random_latents():
    rows = [{"latent": 0, "tag": "b_only", "dec_norm_diff": 0.05, "nu_error": 0.1},
            {"latent": 1, "tag": "b_only", "dec_norm_diff": 0.01, "nu_error": 0.9},  # sparsity artefact
            {"latent": 2, "tag": "b_only", "dec_norm_diff": 0.02, "nu_error": 0.2},
            {"latent": 3, "tag": "shared", "dec_norm_diff": 0.5, "nu_error": 0.1},
            {"latent": 4, "tag": "b_only", "dec_norm_diff": 0.08, "nu_error": None}]
    assert top_b_only(rows, 5) == [2, 0]
    assert top_b_only([{**r, "nu_error": None} for r in rows], 2) == [1, 2]  # no ratios: tag and order only
    with pytest.raises(BuildError, match="b_only"):
        top_b_only(rows[3:4], 1)
    # three frequency bands of 20 latents: each control latent comes from its chosen latent's band
    freq = [1e-4] * 20 + [1e-2] * 20 + [0.3] * 20
    chosen = [0, 25, 45]
    picks = matched_random_latents(freq, chosen, seed=7)
    assert len(set(picks)) == 3 and not set(picks) & set(chosen)
    assert [p // 20 for p in picks] == [0, 1, 2]
    assert picks == matched_random_latents(freq, chosen, seed=7)
    assert len({tuple(matched_random_latents(freq, chosen, seed=s)) for s in range(6)}) > 1
    uniform = matched_random_latents([None] * 60, chosen, seed=1)
    assert len(set(uniform)) == 3 and not set(uniform) & set(chosen)
    with pytest.raises(BuildError, match="too few"):
        matched_random_latents([0.1] * 5, [0, 1, 2], seed=0)


def test_options_check():
    with pytest.raises(BuildError, match="needs --values"):
        ClampingOptions(mode="scale").check()
    assert ClampingOptions(mode="scale", values=(2.0, 2.0, 1.0)).clamp_values() == [2.0, 1.0]
    assert ClampingOptions().clamp_values() == [0.0]
