"""builders.weights against an independent computation from the two state dicts.

Tiny llama checkpoints (SmolLM2's tokenizer, so the logit lens decodes real tokens): A, B =
A with three matrices changed, a LoRA adapter over A (peft, random A and B), and the same
adapter merged into a full checkpoint (peft ``merge_and_unload``).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from builders.shared.catalog import load_catalog
from builders.stages.weights import analyze_weights
from store import BuildSpec, Store
from transforms.diffing import LoraAdapter, cosine_by_layer, parse_param
from transforms.diffing import token_ok

VOCAB = 49152


def _tiny(seed: int):
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            tie_word_embeddings=False)
    return tf.LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from transforms.models import resolve_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    smol = resolve_checkpoint("pkg:smollm2-135m-instruct")

    def save(model, name):
        folder = root / name
        model.save_pretrained(folder, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(f"{smol}/{f}", folder / f)
        return folder

    model_a = _tiny(0)
    a = save(model_a, "a")
    model_b = _tiny(0)
    with torch.no_grad():
        torch.manual_seed(1)
        for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight",
                     "model.layers.2.self_attn.q_proj.weight"):
            param = dict(model_b.named_parameters())[name]
            param.add_(0.05 * torch.randn_like(param))
    b = save(model_b, "b")
    lora = get_peft_model(_tiny(0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "down_proj"],
                                               init_lora_weights=False))
    adapter = root / "adapter"
    lora.save_pretrained(adapter)
    merged = save(lora.merge_and_unload(), "merged")
    return {"a": a, "b": b, "adapter": adapter, "merged": merged}


@pytest.fixture(scope="module")
def catalog_file(checkpoints, tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {name: {"id": str(checkpoints[name])} for name in ("a", "b", "merged")},
        "experiments": {"w": {"variants": {"a": {"model": "a"}, "a_again": {"model": "a"}, "b": {"model": "b"},
                                           "merged": {"model": "merged"},
                                           "lora": {"model": "a", "adapter": str(checkpoints["adapter"])}},
                              "prompt_sets": []}},
        "defaults": {"experiment": "w"},
    }))
    return path


@pytest.fixture(scope="module")
def env(catalog_file, tmp_path_factory):
    return Store(str(tmp_path_factory.mktemp("store"))), load_catalog(catalog_file)


def independent(folder_a, folder_b, top_k=20):
    """Norms, residual directions and logit-lens ids from full state dicts and the model's own norm."""
    import transformers as tf
    from transformers import AutoTokenizer

    sa, sb = load_file(f"{folder_a}/model.safetensors"), load_file(f"{folder_b}/model.safetensors")
    norms = {k: (float((sb[k].double() - sa[k].double()).norm()), float(sa[k].double().norm())) for k in sa}
    directions = {}
    for k in range(3):
        d = sum((sb[f"model.layers.{k}.{m}.weight"].double() - sa[f"model.layers.{k}.{m}.weight"].double()).mean(1)
                for m in ("self_attn.o_proj", "mlp.down_proj"))
        directions[k] = d
    model = tf.AutoModelForCausalLM.from_pretrained(folder_a).double()
    tok = AutoTokenizer.from_pretrained(folder_a)
    lens = {}
    with torch.no_grad():
        for k, d in directions.items():
            if float(d.norm()) == 0:
                continue
            logits = model.lm_head(model.model.norm(d[None, None]))[0, 0]
            for direction, order in (("up", torch.argsort(logits, descending=True)), ("down", torch.argsort(logits))):
                lens[(k, direction)] = [i for i in order.tolist() if token_ok(tok.decode([i]))][:top_k]
    return norms, directions, lens


def _tables(store, manifest):
    rows = {r["param"]: r for r in store.read_table(manifest).to_dicts()}
    lens = {}
    for r in store.read_table(manifest, "logit_lens").sort("rank").to_dicts():
        lens.setdefault((r["layer"], r["direction"]), []).append(r["token_id"])
    return rows, lens


def test_full_checkpoints_equal_independent_computation(env, checkpoints):
    store, catalog = env
    manifest = analyze_weights(store, catalog, "a", "b").manifest
    rows, lens = _tables(store, manifest)
    norms, directions, expected_lens = independent(checkpoints["a"], checkpoints["b"])
    assert set(rows) == set(norms)
    for name, (diff, base) in norms.items():
        assert rows[name]["diff_norm"] == pytest.approx(diff, rel=1e-5, abs=1e-9)
        assert rows[name]["base_norm"] == pytest.approx(base, rel=1e-6)
        assert (rows[name]["layer"], rows[name]["component"]) == parse_param(name)
    changed = {n for n, r in rows.items() if r["diff_norm"] > 0}
    assert changed == {"model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight",
                       "model.layers.2.self_attn.q_proj.weight"}
    assert rows["lm_head.weight"]["layer"] is None and rows["model.embed_tokens.weight"]["component"] == "embed_tokens"
    assert set(lens) == set(expected_lens) == {(1, "up"), (1, "down")}  # layer 2 changed q only: no residual write
    for key, ids in expected_lens.items():
        assert lens[key] == ids and len(ids) == 20
    layers = {r["layer"]: r for r in store.read_table(manifest, "layers").to_dicts()}
    assert layers[1]["residual_direction_norm"] == pytest.approx(float(directions[1].norm()), rel=1e-5)


def test_adapter_equals_merged_checkpoint(env, checkpoints):
    store, catalog = env
    adapter = LoraAdapter(checkpoints["adapter"])
    assert adapter.scale("model.layers.0.self_attn.q_proj.weight") == pytest.approx(2.0)  # alpha 8 / r 4
    via_adapter = analyze_weights(store, catalog, "a", "lora").manifest
    via_merged = analyze_weights(store, catalog, "a", "merged").manifest
    rows_a, lens_a = _tables(store, via_adapter)
    rows_m, lens_m = _tables(store, via_merged)
    assert set(rows_a) == set(rows_m)
    for name in rows_a:
        assert rows_a[name]["diff_norm"] == pytest.approx(rows_m[name]["diff_norm"], rel=1e-4, abs=1e-6)
    assert sum(r["diff_norm"] > 0 for r in rows_a.values()) == 3 * 3  # q, o, down in each of 3 layers
    assert lens_a == lens_m


def _fake_vectors(store, prompt_set: str, seed: int):
    """A published vectors version of random unit-free vectors for layers 0-2 (width 32)."""
    from safetensors.numpy import save

    vecs = np.random.default_rng(seed).standard_normal((3, 32)).astype(np.float32)
    spec = BuildSpec(name=f"vectors-w-a-{prompt_set}-response__-residual", kind="vectors", builder="test",
                     code_version="1", params={"prompt_set": prompt_set, "variant": "a", "position": "response[:]"},
                     parents={}, identity={})
    data = save({"vectors": vecs}, metadata={"layers": json.dumps([0, 1, 2])})
    return vecs, store.build(spec, lambda w: w.write_bytes("vectors/mean_diff.safetensors", data)).manifest


def test_alignment_with_vectors(env, checkpoints):
    store, catalog = env
    vecs, fake = _fake_vectors(store, "fake", seed=0)
    manifest = analyze_weights(store, catalog, "a", "b", vectors=[fake.ref]).manifest
    rows = store.read_table(manifest, "alignment").to_dicts()
    _, directions, _ = independent(checkpoints["a"], checkpoints["b"])
    d = directions[1].numpy()
    expected = float(d @ vecs[1] / (np.linalg.norm(d) * np.linalg.norm(vecs[1])))
    assert [r["layer"] for r in rows] == [1] and rows[0]["cosine"] == pytest.approx(expected, rel=1e-5)
    assert cosine_by_layer({1: d}, vecs, [0, 1, 2]) == {1: pytest.approx(expected)}


def _svd(delta):
    """Top left singular vectors of ``delta`` by LAPACK SVD, sign-fixed by the rule the builder
    documents (largest-magnitude entry positive)."""
    u, s, _ = torch.linalg.svd(delta.double(), full_matrices=False)
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))[0]
    return s, u * signs


def test_singular_directions_equal_lapack_svd(env, checkpoints):
    import transformers as tf

    store, catalog = env
    vecs, fake = _fake_vectors(store, "svd", seed=1)
    manifest = analyze_weights(store, catalog, "a", "b", vectors=[fake.ref], singular_k=2).manifest
    rows = store.read_table(manifest, "directions").to_dicts()
    sa, sb = load_file(f"{checkpoints['a']}/model.safetensors"), load_file(f"{checkpoints['b']}/model.safetensors")
    model = tf.AutoModelForCausalLM.from_pretrained(checkpoints["a"]).double()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(checkpoints["a"])
    lens = {}
    for r in store.read_table(manifest, "directions_lens").sort("rank").to_dicts():
        lens.setdefault((r["layer"], r["matrix"], r["index"], r["direction"]), []).append(r["token_id"])
    align = {(r["layer"], r["matrix"], r["index"]): r for r in store.read_table(manifest, "directions_alignment").to_dicts()}
    assert {(r["layer"], r["matrix"], r["index"]) for r in rows} == {
        (1, m, i) for m in ("o_proj", "down_proj") for i in range(2)}  # layer 2 changed q only
    for r in rows:
        name = f"model.layers.1.{'self_attn' if r['matrix'] == 'o_proj' else 'mlp'}.{r['matrix']}.weight"
        delta = sb[name].double() - sa[name].double()
        s, u = _svd(delta)
        i = r["index"]
        assert r["singular_value"] == pytest.approx(float(s[i]), rel=1e-5)
        assert r["energy_share"] == pytest.approx(float(s[i] ** 2 / (s ** 2).sum()), rel=1e-5)
        np.testing.assert_allclose(r["vector"], u[:, i].numpy(), atol=1e-5)
        with torch.no_grad():
            logits = model.lm_head(model.model.norm(u[:, i][None, None]))[0, 0]
        for direction, order in (("up", torch.argsort(logits, descending=True)), ("down", torch.argsort(logits))):
            assert lens[(1, r["matrix"], i, direction)] == [t for t in order.tolist() if token_ok(tok.decode([t]))][:20]
        cos = float(u[:, i].numpy() @ vecs[1] / np.linalg.norm(vecs[1]))
        got = align[(1, r["matrix"], i)]
        assert got["cosine"] == pytest.approx(cos, rel=1e-4, abs=1e-6) and got["vectors"] == fake.ref
        assert 0 < got["random_abs_cos_mean"] < got["random_abs_cos_p95"] < 1


def test_adapter_singular_directions_equal_merged(env):
    store, catalog = env
    via_adapter = store.read_table(analyze_weights(store, catalog, "a", "lora").manifest, "directions").to_dicts()
    via_merged = store.read_table(analyze_weights(store, catalog, "a", "merged").manifest, "directions").to_dicts()
    key = lambda r: (r["layer"], r["matrix"], r["index"])  # noqa: E731
    merged = {key(r): r for r in via_merged}
    assert len(via_adapter) == 3 * 2 * 3 and set(merged) == {key(r) for r in via_adapter}  # rank 4 ≥ k = 3
    for r in via_adapter:
        assert r["singular_value"] == pytest.approx(merged[key(r)]["singular_value"], rel=1e-3)
        assert abs(float(np.dot(r["vector"], merged[key(r)]["vector"]))) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("b", ["a", "a_again"])
def test_same_weights_on_both_sides_refused(env, catalog_file, capsys, b):
    from builders.weights import cli

    store, _ = env
    before = {name: len(store.versions(name)) for name in store.datasets()}
    assert cli(["--store", store.location.url, "--catalog", str(catalog_file),
                "--a", "a", "--b", b]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--b" in err
    assert {name: len(store.versions(name)) for name in store.datasets()} == before
