"""Replay (seed 001 step 4c): variant B runs over variant A's response token ids.

The demo pair does not share a tokenizer, so this uses SmolLM2 as A and a small random
llama carrying SmolLM2's tokenizer as B (the way a base/instruct pair shares one).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from builders.stages.activations import capture_activations
from builders.shared.catalog import load_catalog
from builders.stages.responses import generate_responses
from store import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, smollm2):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=smollm2.model.config.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=smollm2.tokenizer.bos_token_id, eos_token_id=smollm2.tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    smollm2.tokenizer.save_pretrained(folder)
    catalog_path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}, "tiny": {"id": str(folder)}},
        "prompt_sets": {"general": {"path": str(REPO / "datasets/inference/general.json")}},
        "experiments": {"pair": {"variants": {"A": {"model": "smol"}, "B": {"model": "tiny"}},
                                 "prompt_sets": ["general"]}},
        "defaults": {"experiment": "pair"},
    }))
    store = Store(str(tmp_path_factory.mktemp("store")))
    catalog = load_catalog(catalog_path)
    generate_responses(store, catalog, "A", "general", overrides={"max_new_tokens": 6}, quiet=True)
    return store, catalog, folder


def test_replay_uses_a_response_ids_and_b_prompt_format(pair):
    import torch
    from transformers import AutoModelForCausalLM

    store, catalog, folder = pair
    manifest = capture_activations(store, catalog, "B", "general", "response[:]", replay_from="A", quiet=True).manifest
    assert manifest.name.endswith("-replay_A")
    source = {r["prompt_id"]: r for r in store.read_table("responses-pair-A-general").to_dicts()}
    rows = store.read_table(manifest).sort("sample").to_dicts()
    acts = store.open_array(manifest, "acts")[:]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for i, row in enumerate(rows):
        a = source[row["prompt_id"]]
        assert row["token_ids"][row["prompt_len"]:] == a["token_ids"][a["prompt_len"]:]  # same response ids
        assert row["source_variant"] == "A" and row["variant"] == "B"
        assert row["source_formatted_prompt"] == a["formatted_prompt"]
        with torch.inference_mode():
            states = model(input_ids=torch.tensor([row["token_ids"]]), output_hidden_states=True).hidden_states
        expected = np.stack([s[0, row["prompt_len"]:].mean(0).numpy() for s in states[1:-1]])
        np.testing.assert_allclose(acts[i, :-1], expected, rtol=1e-4, atol=1e-5)


def test_replay_of_unknown_variant_is_refused(pair):
    from builders.shared.catalog import CatalogError

    store, catalog, _ = pair
    with pytest.raises(CatalogError, match="unknown variant 'C'"):
        capture_activations(store, catalog, "B", "general", "response[:]", replay_from="C", quiet=True)


def test_sampled_rollouts_are_seeded_and_work_in_a_memory_store(pair):
    import uuid

    _, catalog, _ = pair
    memory = Store(f"memory://replay-{uuid.uuid4().hex[:8]}")
    settings = {"max_new_tokens": 5, "temperature": 1.0, "rollouts": 2, "seed": 7, "batch_size": 4}
    first = generate_responses(memory, catalog, "B", "general", overrides=settings, quiet=True).manifest
    rows = memory.read_table(first).to_dicts()
    assert len(rows) == 20 and {r["rollout"] for r in rows} == {0, 1}
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r["token_ids"])
    assert any(a != b for a, b in by_prompt.values())  # sampling: rollouts differ
    again = generate_responses(memory, catalog, "B", "general", overrides=settings, force=True, quiet=True).manifest
    assert again.version == first.version and again.content_hash == first.content_hash  # same seed, same bytes
    other = generate_responses(memory, catalog, "B", "general", overrides={**settings, "seed": 8}, quiet=True).manifest
    assert other.version != first.version

    acts = capture_activations(memory, catalog, "B", "general", "response[:2]", quiet=True).manifest
    array = memory.open_array(acts, "acts")
    assert array.shape == (20, 3, 64) and np.isfinite(array[:]).all()
