"""Per-token projections: stacked scores equal h·v̂; live scores during generation equal
scores computed afterwards from the same tokens (SmolLM2, KV cache, left padding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transforms.capture import LiveProjector, VectorStack, project

LAYERS = (10, 20)


def _stacks(d_model: int) -> list[VectorStack]:
    rng = np.random.default_rng(0)
    return [VectorStack.build(k, [(f"v{j}", rng.standard_normal(d_model), float(j)) for j in range(3)]) for k in LAYERS]


def test_project_equals_per_token_dot_products():
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((5, 16))
    vecs = [("a", rng.standard_normal(16), 0.5), ("b", rng.standard_normal(16), -1.0)]
    stack = VectorStack.build(3, vecs)
    got = project(acts, stack)
    for t in range(5):
        for k, (_, v, base) in enumerate(vecs):
            expected = float(acts[t] @ v / np.linalg.norm(v))
            assert got["raw"][t, k] == pytest.approx(expected)
            assert got["cosine"][t, k] == pytest.approx(expected / np.linalg.norm(acts[t]))
            assert got["centered"][t, k] == pytest.approx(expected - base)
    with pytest.raises(ValueError, match="zero vector"):
        VectorStack.build(0, [("z", np.zeros(4), 0.0)])


@pytest.mark.slow
def test_live_projection_equals_afterwards(smollm2):
    from transforms.sequences import GenerationConfig, generate_batch
    from transforms.sequences import format_prompt

    tok, model = smollm2.tokenizer, smollm2.model
    prompts = [format_prompt(tok, q).ids for q in ("Name a color.", "Tell me one thing about the ocean, briefly.")]
    stacks = _stacks(smollm2.d_model)
    projector = LiveProjector(stacks)
    with projector.attach(model):
        outs = generate_batch(model, tok, prompts, GenerationConfig(max_new_tokens=8), 0)
    width = max(len(p) for p in prompts)
    for row, (prompt, out) in enumerate(zip(prompts, outs)):
        ids = list(prompt) + list(out.response_ids)
        with torch.inference_mode():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for stack in stacks:
            raw, norms = projector.per_row(stack.layer, row)
            raw = raw[width - len(prompt):]  # drop this row's left padding
            n = len(ids) - 1  # the last generated token is never fed back
            expected = project(hs[stack.layer + 1][0, :n].double().numpy(), stack)
            np.testing.assert_allclose(raw[:n], expected["raw"], rtol=2e-3, atol=2e-3 * np.abs(expected["raw"]).max())
            np.testing.assert_allclose(norms[width - len(prompt):][:n], expected["norm"], rtol=2e-3)


@pytest.fixture(scope="module")
def proj_env(tmp_path_factory):
    import json as _json

    import yaml
    from safetensors.numpy import save

    from builders.shared.catalog import load_catalog
    from store import BuildSpec, Store

    root = tmp_path_factory.mktemp("proj")
    (root / "general.json").write_text(_json.dumps({"prompts": [{"id": i, "text": t} for i, t in
                                                                 enumerate(["Name a fruit.", "Describe rain in one line."])]}))
    natural = root / "natural"
    natural.mkdir()
    (natural / "positive.txt").write_text("Honestly, the best thing about my boss is\n")
    (natural / "negative.txt").write_text("Frankly, the worst thing about my boss is\n")
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"general": {"path": str(root / "general.json")}, "natural": {"path": str(natural)}},
        "experiments": {"p": {"variants": {"a": {"model": "smol"}}, "prompt_sets": ["general", "natural"]}},
        "defaults": {"experiment": "p", "responses": {"max_new_tokens": 6}},
    }))
    store = Store(str(root / "store"))
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((30, 576)).astype(np.float32)
    evaluation = [{"layer": k, "method": "mean_diff", "center_proj": float(k) / 10} for k in range(30)]

    def produce(w):
        w.write_bytes("vectors/mean_diff.safetensors", save({"vectors": vecs}, metadata={"layers": _json.dumps(list(range(30)))}))
        w.write_table(evaluation)

    spec = BuildSpec(name="vectors-p-a-t-response__-residual", kind="vectors", builder="test", code_version="1",
                     params={"prompt_set": "t", "variant": "a", "position": "response[:]"}, parents={}, identity={})
    return store, load_catalog(path), store.build(spec, produce).manifest, vecs


@pytest.mark.slow
def test_builder_stored_equals_independent_and_live_equals_stored(proj_env):
    import polars as pl

    from builders.stages.projections import build_projections

    store, catalog, vectors, vecs = proj_env
    spec = [f"{vectors.ref}:mean_diff"]
    stored = build_projections(store, catalog, "a", "general", spec, layers="10,20", quiet=True).manifest
    rows = store.read_table(stored)
    acts = store.resolve(stored.parents["activations"])
    array = store.open_array(acts, "acts")
    layer_pos = {int(k): j for j, k in enumerate(array.attrs["layers"])}
    for sample in store.read_table(acts).to_dicts():
        block = array[sample["token_start"]:sample["token_end"]]
        for layer in (10, 20):
            h = block[:, layer_pos[layer]].astype(np.float64)
            v = vecs[layer].astype(np.float64)
            mine = rows.filter((pl.col("prompt_id") == sample["prompt_id"]) & (pl.col("layer") == layer)).sort("token_index")
            assert mine["token_index"].to_list() == list(range(sample["span_start"], sample["span_end"]))
            np.testing.assert_allclose(mine["score"].to_numpy(), h @ v / np.linalg.norm(v), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(mine["centered"].to_numpy(), h @ v / np.linalg.norm(v) - layer / 10, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(mine["norm"].to_numpy(), np.linalg.norm(h, axis=1), rtol=1e-6)
    live = store.read_table(build_projections(store, catalog, "a", "general", spec, layers="10,20", live=True,
                                              quiet=True).manifest)
    joined = live.join(rows, on=["prompt_id", "token_index", "layer", "vector"], suffix="_stored")
    assert joined.height > 0 and joined.height == live.height  # same greedy tokens, every live token stored too
    assert (joined["token_id"] == joined["token_id_stored"]).all()
    np.testing.assert_allclose(joined["score"].to_numpy(), joined["score_stored"].to_numpy(), rtol=2e-3, atol=2e-2)


@pytest.mark.slow
def test_live_mode_formats_prompts_in_the_prompt_sets_style(proj_env):
    """A natural prefix is continued as plain text, as the responses builder does, not chat-wrapped."""
    from builders.shared.common import cached_model
    from builders.stages.projections import build_projections
    from builders.stages.responses import format_row

    store, catalog, vectors, _ = proj_env
    live = store.read_table(build_projections(store, catalog, "a", "natural", [f"{vectors.ref}:mean_diff"],
                                              layers="10", live=True, quiet=True).manifest)
    tokenizer = cached_model("pkg:smollm2-135m-instruct").tokenizer
    prompts = {r["prompt_id"]: r["prompt"] for r in store.read_table("prompts-natural").to_dicts()}
    assert len(prompts) == 2
    for prompt_id, text in prompts.items():
        fed = live.filter((live["prompt_id"] == prompt_id) & ~live["is_response"]).sort("token_index")
        assert fed["token_id"].to_list() == list(format_row(tokenizer, text, None, "natural").ids)
        assert fed["token_id"].to_list() != list(format_row(tokenizer, text, None, "instruction").ids)
