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

from builders.shared.catalog import load_catalog
from builders.shared.common import BuildError
from builders.stages.replay import replay_sequences
from builders.stages.similarity import activation_similarity
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
    other = dataclasses.replace(smollm2, vocabulary_fingerprint="something-else")
    with pytest.raises(BuildError, match="does not share the tokenizer"):
        replay_sequences(store, responses, smollm2, other, "inference")
    with pytest.raises(BuildError, match="same depth"):
        activation_similarity(store, catalog, "a", "g", "general", quiet=True)


def _fake_vectors(store, name, seed):
    from safetensors.numpy import save

    from store import BuildSpec

    vecs = np.random.default_rng(seed).standard_normal((30, 576)).astype(np.float32)
    spec = BuildSpec(name=name, kind="vectors", builder="test", code_version="1",
                     params={"prompt_set": name, "variant": "a", "position": "response[:]"}, parents={}, identity={})
    payload = save({"vectors": vecs}, metadata={"layers": json.dumps(list(range(30)))})
    return store.build(spec, lambda w: w.write_bytes("vectors/mean_diff.safetensors", payload)).manifest, vecs


def test_compare_variants_equals_numpy(env, smollm2):
    from builders.stages.compare import compare_variants

    store, catalog, lora = env
    trait, v = _fake_vectors(store, "vectors-s-a-trait-response__-residual", 1)
    control, c = _fake_vectors(store, "vectors-s-a-other-response__-residual", 2)
    manifest = compare_variants(store, catalog, "a", "b", "general", [trait.ref], controls=[control.ref],
                                n_random=1000, quiet=True).manifest
    rows = {r["layer"]: r for r in store.read_table(manifest).to_dicts()}
    controls = {r["layer"]: r for r in store.read_table(manifest, "controls").to_dicts()}
    responses = store.read_table(store.resolve(manifest.parents["responses"])).sort("prompt_id").to_dicts()
    means_a, means_b = [], []
    with torch.inference_mode():
        for row in responses:
            ids = torch.tensor([row["token_ids"]])
            p = row["prompt_len"]
            means_a.append([h[0, p:].double().mean(0).numpy() for h in smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states[1:]])
            means_b.append([h[0, p:].double().mean(0).numpy() for h in lora(input_ids=ids, output_hidden_states=True).hidden_states[1:]])
    A, B = np.array(means_a), np.array(means_b)  # [N, 30, D]
    for k in (3, 15, 28):
        u = v[k] / np.linalg.norm(v[k])
        pa, pb = A[:, k] @ u, B[:, k] @ u
        diff = B[:, k].mean(0) - A[:, k].mean(0)
        d = pb - pa
        pooled = np.sqrt((pa.var(ddof=1) + pb.var(ddof=1)) / 2)  # equal group sizes
        assert rows[k]["diff_cosine"] == pytest.approx(diff @ u / np.linalg.norm(diff), abs=1e-4)
        assert rows[k]["shift"] == pytest.approx(d.mean(), rel=1e-4, abs=1e-6)
        assert rows[k]["d_paired"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-3)
        assert rows[k]["d_unpaired"] == pytest.approx((pb.mean() - pa.mean()) / pooled, rel=1e-3)
        cu = c[k] / np.linalg.norm(c[k])
        assert controls[k]["diff_cosine"] == pytest.approx(diff @ cu / np.linalg.norm(diff), abs=1e-4)
        assert 0.02 < rows[k]["random_mean_abs_cos"] < 0.05  # E|cos| of random directions in 576-d: ~0.033
        assert 0.0 <= rows[k]["random_share_as_aligned"] <= 1.0
    positive = sum(r["shift"] > 0 for r in rows.values())
    text = store.read_bytes(manifest, "report.md").decode()
    assert f"positive at {positive} of 30 layers" in text
    assert ("did NOT move toward" in text) == (positive <= 15)
