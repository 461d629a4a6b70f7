"""builders.similarity against an independent computation from output_hidden_states.

A = SmolLM2-135M-Instruct, B = SmolLM2 + a random LoRA adapter (a local PEFT folder named
by the catalog), both on a 3-prompt inference set.
"""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from builders.catalog import load_catalog
from builders.common import BuildError
from builders.similarity import activation_similarity, replay_sequences
from store import Store

pytestmark = pytest.mark.slow

PROMPTS = ["Name a fruit.", "What is the capital of Italy?", "Say something about the sea."]


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("sim")
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
        "defaults": {"experiment": "s", "responses": {"max_new_tokens": 6}},
    }))
    return Store(str(root / "store")), load_catalog(path), lora


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_similarity_equals_numpy_from_hidden_states(env, smollm2):
    store, catalog, lora = env
    manifest = activation_similarity(store, catalog, "a", "b", "general", quiet=True).manifest
    layers = {r["layer"]: r for r in store.read_table(manifest).to_dicts()}
    positions = store.read_table(manifest, "positions").to_dicts()
    prompts = store.read_table(manifest, "prompts").to_dicts()
    assert len(layers) == 30 and all(r["same_prompt_ids"] for r in prompts)
    responses = store.read_table(store.resolve(manifest.parents["responses"])).sort("prompt_id").to_dicts()
    per_layer = {k: [] for k in range(30)}
    per_pos: dict[tuple[int, int], list[float]] = {}
    with torch.inference_mode():
        for row in responses:
            ids = torch.tensor([row["token_ids"]])
            ha = smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states
            hb = lora(input_ids=ids, output_hidden_states=True).hidden_states  # unmerged adapter
            p = row["prompt_len"]
            for k in range(29):  # the last entry of hidden_states is after the final norm
                a = ha[k + 1][0, p:].double().numpy()
                b = hb[k + 1][0, p:].double().numpy()
                per_layer[k].append(_cos(a.mean(0), b.mean(0)))
                for t in range(a.shape[0]):
                    per_pos.setdefault((t, k), []).append(_cos(a[t], b[t]))
    for k in range(29):
        assert layers[k]["mean_cosine"] == pytest.approx(np.mean(per_layer[k]), abs=1e-5)
        assert layers[k]["prompts"] == len(responses)
    reached = {t for (t, _), v in per_pos.items() if len(v) >= 0.8 * len(responses)}
    assert {r["position"] for r in positions} == reached
    for r in positions:
        if r["layer"] < 29:
            assert r["mean_cosine"] == pytest.approx(np.mean(per_pos[(r["position"], r["layer"])]), abs=1e-5)
            assert r["prompts"] == len(per_pos[(r["position"], r["layer"])])
    assert min(r["mean_cosine"] for r in layers.values()) < 0.9999  # the adapter changed something


def test_replay_refuses_another_tokenizer_and_depth(env, smollm2):
    store, catalog, _ = env
    responses = store.resolve("responses-s-a-general")
    other = dataclasses.replace(smollm2, tokenizer_fingerprint="something-else")
    with pytest.raises(BuildError, match="does not share the tokenizer"):
        replay_sequences(store, responses, smollm2, other, "inference")
    with pytest.raises(BuildError, match="same depth"):
        activation_similarity(store, catalog, "a", "g", "general", quiet=True)
