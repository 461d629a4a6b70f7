"""builders.crosscoder end to end on SmolLM2 vs SmolLM2 + a random LoRA adapter.

The paired activations are checked against ``output_hidden_states``, the published weights
load through the public-checkpoint loader, the latent table against an independent numpy
encode of the published activations, and bad inputs against the one-line contract.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml

from builders.crosscoder import cli
from builders.shared.catalog import load_catalog
from builders.shared.common import BuildError
from builders.stages.crosscoder import CrosscoderOptions, build_crosscoder, load_crosscoder_version
from builders.stages.paired_activations import paired_activations
from store import Store

pytestmark = pytest.mark.slow

PROMPTS = ["Name a fruit.", "What is the capital of Italy?", "Say something about the sea.", "Count to three."]
LAYER = 5
OPTIONS = CrosscoderOptions(dict_size=64, epochs=2, batch_size=16, resample_every=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("cc")
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(smollm2.model), LoraConfig(r=4, lora_alpha=4, target_modules=["o_proj", "down_proj"],
                                                                   init_lora_weights=False))
    lora.save_pretrained(root / "adapter")
    (root / "general.json").write_text(json.dumps({"prompts": [{"id": i, "text": t} for i, t in enumerate(PROMPTS)]}))
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}, "gemma": {"id": "pkg:gemma3-270m"}},
        "prompt_sets": {"general": {"path": str(root / "general.json")}},
        "experiments": {"s": {"variants": {"a": {"model": "smol"}, "b": {"model": "smol", "adapter": str(root / "adapter")},
                                           "g": {"model": "gemma"}}, "prompt_sets": ["general"]}},
        "defaults": {"experiment": "s", "responses": {"max_new_tokens": 8}},
    }))
    return Store(str(root / "store")), load_catalog(path), path, lora


@pytest.fixture(scope="module")
def built(env):
    store, catalog, _, _ = env
    return build_crosscoder(store, catalog, "a", "b", "general", LAYER, OPTIONS, quiet=True).manifest


def test_paired_rows_are_the_same_tokens_from_hidden_states(env, built, smollm2):
    store, catalog, _, lora = env
    paired = paired_activations(store, catalog, "s", "a", "b", "general", LAYER, quiet=True)
    acts = np.concatenate([x for _, x in paired.ordered(store, 7)])
    assert acts.shape == (paired.n_tokens, 2, 576)
    rows = store.read_table(paired.a).sort("sample").to_dicts()
    for r in rows[:2]:
        ids = torch.tensor([r["token_ids"]])
        for m, model in enumerate((smollm2.model, lora)):
            with torch.no_grad():
                hidden = model(ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
            want = hidden[r["span_start"]:r["span_start"] + r["n_tokens"]].numpy()
            np.testing.assert_allclose(acts[r["token_start"]:r["token_end"], m], want, atol=2e-4, rtol=1e-4)


def test_weights_load_with_the_public_loader_and_the_table_matches_numpy(env, built):
    store, catalog, _, _ = env
    model = load_crosscoder_version(store, built)
    assert model.n_models == 2 and model.dict_size == 64 and model.d_model == 576
    table = {r["latent"]: r for r in store.read_table(built).to_dicts()}
    assert len(table) == 64
    paired = paired_activations(store, catalog, "s", "a", "b", "general", LAYER, quiet=True)
    x = np.concatenate([x for _, x in paired.ordered(store, 100)]).astype(np.float64)
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    scale = model.input_scale.double().numpy()
    xn = x * scale[None, :, None]
    f = np.maximum(np.einsum("bmd,mdf->bf", xn, sd["encoder.weight"]) + sd["encoder.bias"], 0)
    norms = np.linalg.norm(sd["decoder.weight"], axis=2)  # [2, F]
    for j in (0, 17, 63):
        row = table[j]
        assert row["dec_norm_a"] == pytest.approx(norms[0, j], rel=1e-5)
        assert row["dec_norm_b"] == pytest.approx(norms[1, j], rel=1e-5)
        want_diff = ((norms[0, j] - norms[1, j]) / max(norms[:, j].max(), 1e-30) + 1) / 2
        assert row["dec_norm_diff"] == pytest.approx(want_diff, abs=1e-6)
        assert row["frequency"] == pytest.approx(float((f[:, j] > 0).mean()), abs=1e-6)
    examples = store.read_table(built, "top_examples").to_dicts()
    assert examples and {"prompt_id", "token_text", "left", "right"} <= set(examples[0])
    top = max(range(len(f)), key=lambda n: f[n, examples[0]["latent"]])
    assert examples[0]["value"] == pytest.approx(f[top, examples[0]["latent"]], rel=1e-4)
    assert "figures/dec_norm_diff.png" in built.files
    assert store.read_table(built, "training").height > 0


def test_rebuild_is_a_no_op_and_an_import_of_the_published_weights_is_identical(env, built):
    store, catalog, _, _ = env
    again = build_crosscoder(store, catalog, "a", "b", "general", LAYER, OPTIONS, quiet=True)
    assert not again.built and again.manifest.version == built.version
    folder = store.local_dir(built, "crosscoder")
    imported = build_crosscoder(store, catalog, "a", "b", "general", LAYER, checkpoint=str(folder), quiet=True).manifest
    assert imported.name.endswith("-imported")
    assert store.read_table(imported).equals(store.read_table(built))
    assert store.read_table(imported, "top_examples").equals(store.read_table(built, "top_examples"))


def test_bad_inputs_are_one_line_and_publish_nothing(env, built, tmp_path, capsys):
    store, catalog, path, _ = env
    before = set(store.datasets())
    common = ["--store", str(store.location.url if hasattr(store.location, "url") else store.root), "--catalog", str(path),
              "-q", "--prompts", "general"]
    with pytest.raises(BuildError, match="d_model 576.*640"):
        build_crosscoder(store, catalog, "a", "g", "general", LAYER, OPTIONS, quiet=True)
    with pytest.raises(BuildError, match="--layer 30"):
        build_crosscoder(store, catalog, "a", "b", "general", 30, OPTIONS, quiet=True)
    from transforms.dictionaries import CrossCoder, save_crosscoder

    save_crosscoder(CrossCoder(2, 64, 32), tmp_path / "narrow")
    assert cli([*common, "--a", "a", "--b", "b", "--layer", str(LAYER), "--checkpoint", str(tmp_path / "narrow")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "64" in err[0] and "576" in err[0]
    assert cli([*common, "--a", "a", "--b", "b", "--layer", str(LAYER), "--checkpoint", str(tmp_path / "missing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert set(store.datasets()) == before
