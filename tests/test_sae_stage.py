"""builders.sae and builders.decompose on SmolLM2 (5 prompts, 6 new tokens, layer 3, 64 features).

Every published number is recomputed here from the stored activations and the stored weights
with plain numpy; the decomposition is checked on a planted vector whose answer is known.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from builders.sae import cli as sae_cli
from builders.shared.catalog import load_catalog
from builders.stages.crosscoder import CrosscoderOptions
from builders.stages.decomposition import crosscoder_slice, decompose_vectors
from builders.stages.sae import build_sae, load_sae_version
from store import BuildSpec, Store

PROMPTS = ["Name a fruit.", "What is the capital of Italy?", "Say something about the sea.",
           "Count to three.", "Describe a cat."]
LAYER = 3
D = 576  # SmolLM2-135M width
OPTIONS = CrosscoderOptions(dict_size=64, epochs=2, batch_size=16, l1_coefficient=0.5, resample_every=0)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sae")
    (root / "general.json").write_text(json.dumps({"prompts": [{"id": i, "text": t} for i, t in enumerate(PROMPTS)]}))
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"general": {"path": str(root / "general.json")}},
        "experiments": {"s": {"variants": {"a": {"model": "smol"}}, "prompt_sets": ["general"]}},
        "defaults": {"experiment": "s", "responses": {"max_new_tokens": 6}},
    }))
    return Store(str(root / "store")), load_catalog(path), root, path


@pytest.fixture(scope="module")
def trained(env):
    store, catalog, _, _ = env
    return build_sae(store, catalog, "a", "general", LAYER, OPTIONS, quiet=True).manifest


def _stored_acts(store, manifest):
    acts = store.resolve(manifest.parents["activations"])
    array = store.open_array(acts, "acts")
    return acts, np.asarray(array[:, list(array.attrs["layers"]).index(LAYER), :], dtype=np.float64)


def _weights(store, manifest):
    from safetensors.numpy import load_file

    folder = store.local_dir(manifest, "crosscoder")
    state = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    return state, float(config["traitstore"]["input_scale"][0])


def _check_features(store, manifest, f, x, margin):
    """data table vs numpy codes f [N, F]; ``margin``: distance of what decides "active" from its
    boundary, so that codes within rounding of it may go either way."""
    table = store.read_table(manifest).sort("latent").to_dicts()
    assert len(table) == f.shape[1]
    certain, possible = (f > 0) & (margin > 1e-4), (f > 0) | (margin <= 1e-4)
    for j, row in enumerate(table):
        assert certain[:, j].sum() <= row["n_active"] <= possible[:, j].sum()
        assert row["frequency"] == pytest.approx(row["n_active"] / len(x))
        if certain[:, j].sum() == possible[:, j].sum() and row["n_active"]:
            assert row["mean_active"] == pytest.approx(f[certain[:, j], j].mean(), rel=1e-3, abs=1e-5)
            assert row["max_activation"] == pytest.approx(f[:, j].max(), rel=1e-3, abs=1e-5)
    assert sum(r["n_active"] for r in table) > 0  # something fired: the comparison is not vacuous
    return table


@pytest.mark.slow
def test_trained_sae_equals_trainer_and_numpy(env, trained, smollm2):
    from transforms.dictionaries import load_crosscoder, train_crosscoder

    from builders.stages.paired_activations import variant_activations

    store, catalog, _, _ = env
    assert trained.name == "sae-s-a-general-L3-l1"
    acts, x = _stored_acts(store, trained)
    # the trainer run here on the same stored rows, same seed: identical weights
    source = variant_activations(store, catalog, "s", "a", "general", LAYER, quiet=True)
    assert source.manifest.ref == acts.ref
    rows = np.concatenate(list(source.shuffled(store, OPTIONS.batch_size, OPTIONS.seed)(0)))[:, 0]
    assert np.array_equal(np.sort(rows, axis=0), np.sort(x.astype(np.float32), axis=0))  # every row once
    direct = train_crosscoder(source.shuffled(store, OPTIONS.batch_size, OPTIONS.seed), 1, D,
                              OPTIONS.train_config(), progress=False)
    published = load_crosscoder(str(store.local_dir(trained, "crosscoder")))
    assert published.n_models == 1 and published.dict_size == 64
    for key, value in direct.model.state_dict().items():
        assert torch.equal(published.state_dict()[key], value), key
    assert torch.equal(published.input_scale, direct.model.input_scale)
    assert store.read_table(trained, "training").height == len(direct.log)

    # feature statistics against a numpy encode of the stored activations
    state, scale = _weights(store, trained)
    pre = (x * scale) @ state["encoder.weight"][0].astype(np.float64) + state["encoder.bias"]
    f = np.maximum(pre, 0)
    table = _check_features(store, trained, f, x, np.abs(pre))
    dec = state["decoder.weight"][0].astype(np.float64)
    assert [r["decoder_norm"] for r in table] == pytest.approx(np.linalg.norm(dec, axis=1).tolist(), rel=1e-5)
    x_hat = (f @ dec + state["decoder.bias"][0]) / scale
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert trained.summary["analysis_explained_variance"] == pytest.approx(ev, abs=1e-4)
    assert trained.summary["never_active"] == int((f.max(0) <= 0).sum())
    assert trained.summary["rms_norm"] == pytest.approx(np.sqrt((x ** 2).sum(1).mean()), rel=1e-5)

    # top examples: the largest code of a feature, at the token the table names
    examples = store.read_table(trained, "top_examples")
    samples = {r["sample"]: r for r in store.read_table(acts).to_dicts()}
    j = int(np.argmax(f.max(0)))
    first = examples.filter((examples["latent"] == j) & (examples["rank"] == 1)).to_dicts()[0]
    assert first["value"] == pytest.approx(f[:, j].max(), rel=1e-4)
    ids = samples[first["sample"]]["token_ids"]
    assert first["token_text"] == smollm2.tokenizer.decode([ids[first["token"]]])
    row = int(np.argmax(f[:, j]))
    s = samples[first["sample"]]
    assert s["token_start"] + first["token"] - s["span_start"] == row  # the row the max came from


def _gemma_scope(folder: Path, d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {"W_enc": rng.standard_normal((d, 32)).astype(np.float32) * 0.05,
              "W_dec": rng.standard_normal((32, d)).astype(np.float32),
              "b_enc": rng.standard_normal(32).astype(np.float32) * 0.1,
              "b_dec": np.zeros(d, np.float32), "threshold": np.full(32, 0.05, np.float32)}
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    return params


@pytest.mark.slow
def test_gemma_scope_import(env, trained):
    store, catalog, root, _ = env
    params = _gemma_scope(root / "gs" / "layer_3" / "width_32" / "average_l0_9", D, 0)
    manifest = build_sae(store, catalog, "a", "general", LAYER, checkpoint=str(root / "gs"),
                         subfolder="layer_3/width_32/average_l0_9", quiet=True).manifest
    assert manifest.name == "sae-s-a-general-L3-imported"
    original = root / "gs" / "layer_3" / "width_32" / "average_l0_9" / "params.npz"
    assert store.read_bytes(manifest, "sae/params.npz") == original.read_bytes()
    _, x = _stored_acts(store, manifest)
    pre = x @ params["W_enc"].astype(np.float64) + params["b_enc"]
    f = np.where(pre > params["threshold"], np.maximum(pre, 0), 0.0)
    _check_features(store, manifest, f, x, np.abs(pre - params["threshold"]))
    assert load_sae_version(store, manifest).activation == "jumprelu"


@pytest.mark.slow
def test_wrong_checkpoint_is_one_line(env, trained, capsys):
    store, _, root, catalog_path = env
    _gemma_scope(root / "narrow" / "layer_3" / "w", 100, 1)
    _gemma_scope(root / "other" / "layer_7" / "w", D, 2)
    before = store.datasets()
    base = ["--store", str(root / "store"), "--catalog", str(catalog_path), "--variant", "a", "--prompts", "general",
            "--layer", "3", "-q"]
    assert sae_cli(base + ["--checkpoint", str(root / "narrow"), "--subfolder", "layer_3/w"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "d_model=100" in err and "576" in err
    assert sae_cli(base + ["--checkpoint", str(root / "other"), "--subfolder", "layer_7/w"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "layer 7" in err and "--layer 3" in err
    assert store.datasets() == before


def _vectors(store, name, vector_D, seed):
    from safetensors.numpy import save

    vecs = np.random.default_rng(seed).standard_normal((30, D)).astype(np.float32)
    vecs[LAYER] = vector_D
    spec = BuildSpec(name=name, kind="vectors", builder="test", code_version="1",
                     params={"variant": "a", "seed": seed}, parents={}, identity={})
    payload = save({"vectors": vecs}, metadata={"layers": json.dumps(list(range(30)))})
    return store.build(spec, lambda w: w.write_bytes("vectors/mean_diff.safetensors", payload)).manifest


@pytest.mark.slow
def test_decomposition_finds_planted_features(env, trained):
    store, _, _, _ = env
    W_dec = load_sae_version(store, trained).W_dec.detach().double().numpy()
    unit = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
    active = [r["latent"] for r in store.read_table(trained).to_dicts() if r["n_active"]]
    cos = np.abs(unit[active] @ unit[active].T) + np.eye(len(active))
    a, b = np.unravel_index(np.argmin(cos), cos.shape)  # two live, nearly orthogonal features
    i, j = active[a], active[b]
    planted = unit[i] + unit[j]
    vectors = _vectors(store, "vectors-s-a-trait-response__-residual", planted, 3)
    manifest = decompose_vectors(store, trained.name, vectors.name, top_n=5).manifest
    assert manifest.name == "decomposition-sae-s-a-general-L3-l1-s-a-trait-response__-residual"
    rows = store.read_table(manifest).to_dicts()
    by_cos = sorted((r for r in rows if r["ranking"] == "cosine"), key=lambda r: r["rank"])
    assert len(by_cos) == 5 and {by_cos[0]["latent"], by_cos[1]["latent"]} == {i, j}
    expected = unit @ (planted / np.linalg.norm(planted))
    for r in by_cos:
        assert r["cosine"] == pytest.approx(expected[r["latent"]], abs=1e-5)
    assert by_cos[0]["explained_fraction"] == pytest.approx(1.0, abs=1e-6)
    examples = store.read_table(trained, "top_examples").sort(["latent", "rank"]).to_dicts()
    want = [f"{e['left']}«{e['token_text']}»{e['right']}" for e in examples if e["latent"] == i][:3]
    assert next(r for r in by_cos if r["latent"] == i)["contexts"] == want
    assert manifest.summary["scale_from"] == "dictionary rms_norm"
    assert "figures/top_cosines.png" in manifest.files


@pytest.mark.slow
def test_decompose_refuses_wrong_width(env, trained, capsys):
    from builders.decompose import cli

    store, _, root, catalog_path = env
    from safetensors.numpy import save

    spec = BuildSpec(name="vectors-s-a-narrow-response__-residual", kind="vectors", builder="test", code_version="1",
                     params={"variant": "a"}, parents={}, identity={})
    payload = save({"vectors": np.ones((30, 8), np.float32)}, metadata={"layers": json.dumps(list(range(30)))})
    store.build(spec, lambda w: w.write_bytes("vectors/mean_diff.safetensors", payload))
    before = store.datasets()
    code = cli(["--store", str(root / "store"), "--catalog", str(catalog_path), "--dictionary", trained.name,
                "--vectors", spec.name])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "width 8" in err and "576" in err
    assert store.datasets() == before


def test_crosscoder_slice_equals_numpy():
    from transforms.dictionaries import CrossCoder

    cc = CrossCoder(2, 16, 8, kind="batch_topk", k=2, seed=1)
    with torch.no_grad():
        cc.encoder.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        cc.threshold.fill_(0.3)
    cc.set_input_scale([2.0, 0.5])
    x = np.random.default_rng(0).standard_normal((5, 16))
    enc, dec = cc.encoder.weight.detach().double().numpy(), cc.decoder.weight.detach().double().numpy()
    for m, s in ((0, 2.0), (1, 0.5)):
        pre = (x * s) @ enc[m] + cc.encoder.bias.detach().double().numpy()
        latent_scale = np.linalg.norm(dec, axis=2).sum(0)
        want = np.where(np.maximum(pre, 0) * latent_scale > 0.3, np.maximum(pre, 0), 0.0)
        got = crosscoder_slice(cc, m).encode(torch.tensor(x, dtype=torch.float32)).detach().double().numpy()
        assert np.allclose(got, want, atol=1e-5)
        assert np.allclose(crosscoder_slice(cc, m).W_dec.detach().numpy(), dec[m])


@pytest.mark.parametrize(("module", "stage"), [("builders.sae", "builders.stages.sae"),
                                               ("builders.decompose", "builders.stages.decomposition")])
def test_help_imports_no_torch(module, stage):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert stage in imported and "torch" not in imported and "numpy" not in imported
