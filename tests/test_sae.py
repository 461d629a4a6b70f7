"""SAEs: the Gemma Scope and SAELens layouts written here by hand, loaded, and checked against
encode/decode computed in plain numpy; layer parsing; one-line refusals; a local Hugging Face cache;
decomposing a planted vector; a one-model crosscoder as an SAE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transforms.dictionaries import (
    DictionaryError,
    HookInfo,
    SAEFormatError,
    SparseAutoencoder,
    check_sae_width,
    decompose_vector,
    hook_info_from_folder,
    hook_info_from_name,
    load_sae,
    sae_from_crosscoder,
)

D, F = 16, 48
GS_FOLDER = "layer_12/width_16k/average_l0_82"


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(D, F)).astype(np.float32) / 4,
        "W_dec": rng.normal(size=(F, D)).astype(np.float32) / 4,
        "b_enc": rng.normal(size=F).astype(np.float32) / 4,
        "b_dec": rng.normal(size=D).astype(np.float32),
        "threshold": rng.uniform(0.2, 0.6, size=F).astype(np.float32),
    }


def np_encode(x, w, *, act="relu", apply_b_dec=False, scale=1.0, k=None, threshold=None):
    x = x.astype(np.float64) * scale
    if apply_b_dec:
        x = x - w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    if act == "relu":
        return np.maximum(pre, 0)
    if act == "jumprelu":
        return np.where(pre > threshold, pre, 0.0) * (pre > 0)
    out = np.zeros_like(pre)
    for row, p in zip(out, pre):
        idx = np.argsort(-p)[:k]
        row[idx] = np.maximum(p[idx], 0)
    return out


def np_decode(f, w, scale=1.0):
    return (f @ w["W_dec"].astype(np.float64) + w["b_dec"]) / scale


def inputs(seed: int = 1, n: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def run(sae: SparseAutoencoder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(x))
        return f.double().numpy(), sae.decode(f).double().numpy()


def write_saelens(folder, cfg: dict, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))


def saelens_cfg(**extra) -> dict:
    return {"d_in": D, "d_sae": F, "dtype": "float32", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "hook_name": "blocks.5.hook_resid_post",
            "model_name": "tiny", **extra}


def one_line(exc: BaseException) -> str:
    assert isinstance(exc, DictionaryError)  # builders turn these into one line, exit 2
    msg = str(exc)
    assert msg and "\n" not in msg
    return msg


# ---- Gemma Scope -----------------------------------------------------------------------------


def test_gemma_scope_params_npz_encodes_like_numpy_jumprelu(tmp_path):
    w = weights()
    (tmp_path / GS_FOLDER).mkdir(parents=True)
    np.savez(tmp_path / GS_FOLDER / "params.npz", **w)
    sae = load_sae(tmp_path, subfolder=GS_FOLDER)
    assert (sae.d_model, sae.dict_size, sae.activation, sae.layer) == (D, F, "jumprelu", 12)
    assert not sae.apply_b_dec_to_input
    x = inputs()
    f, recon = run(sae, x)
    want = np_encode(x, w, act="jumprelu", threshold=w["threshold"])
    np.testing.assert_allclose(f, want, atol=1e-5)
    np.testing.assert_allclose(recon, np_decode(want, w), atol=1e-5)
    # the threshold matters here: some features are positive but below it
    assert (np_encode(x, w) > 0).sum() > (want > 0).sum() > 0
    # leading dimensions pass through
    assert sae(torch.from_numpy(x).reshape(4, 8, D)).shape == (4, 8, D)


# ---- SAELens ---------------------------------------------------------------------------------


def test_saelens_standard_with_b_dec_and_norm_scaling_factor(tmp_path):
    w = weights(1)
    cfg = saelens_cfg(architecture="standard", normalize_activations="expected_average_only_in")
    write_saelens(tmp_path, cfg, {k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
    with pytest.raises(SAEFormatError) as caught:
        load_sae(tmp_path)
    assert "cfg.json" in one_line(caught.value) and "norm_scaling_factor" in str(caught.value)

    sae = load_sae(tmp_path, norm_scaling_factor=0.5)
    assert (sae.layer, sae.hook.component, sae.hook.model_name, sae.input_scale) == (5, "residual", "tiny", 0.5)
    x = inputs(2)
    f, recon = run(sae, x)
    want = np_encode(x, w, apply_b_dec=True, scale=0.5)
    np.testing.assert_allclose(f, want, atol=1e-5)
    np.testing.assert_allclose(recon, np_decode(want, w, scale=0.5), atol=1e-5)
    assert not np.allclose(want, np_encode(x, w, apply_b_dec=True))  # the scale is not a no-op

    # the factor may also sit in the config; the v6 metadata block carries the hook
    cfg = saelens_cfg(architecture="standard", normalize_activations="expected_average_only_in",
                      norm_scaling_factor=0.5, hook_name=None, metadata={"hook_name": "blocks.3.hook_mlp_out"})
    write_saelens(tmp_path / "b", cfg, {k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
    sae = load_sae(tmp_path / "b")
    assert (sae.layer, sae.hook.component, sae.input_scale) == (3, "mlp_out", 0.5)


@pytest.mark.parametrize("key", ["threshold", "log_threshold"])
def test_saelens_jumprelu_threshold_or_log_threshold(tmp_path, key):
    w = weights(2)
    tensors = {k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    tensors[key] = w["threshold"] if key == "threshold" else np.log(w["threshold"])
    write_saelens(tmp_path, saelens_cfg(architecture="jumprelu", apply_b_dec_to_input=False), tensors)
    sae = load_sae(tmp_path)
    x = inputs(3)
    f, recon = run(sae, x)
    want = np_encode(x, w, act="jumprelu", threshold=w["threshold"])
    np.testing.assert_allclose(f, want, atol=1e-5)
    np.testing.assert_allclose(recon, np_decode(want, w), atol=1e-5)


@pytest.mark.parametrize("style", ["v6", "activation_fn_str"])
def test_saelens_topk(tmp_path, style):
    w = weights(3)
    cfg = (saelens_cfg(architecture="topk", k=5) if style == "v6"
           else saelens_cfg(architecture="standard", activation_fn_str="topk", activation_fn_kwargs={"k": 5}))
    write_saelens(tmp_path, cfg, {k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
    sae = load_sae(tmp_path)
    assert (sae.activation, sae.k) == ("topk", 5)
    x = inputs(4) * 4  # large inputs: most of the top 5 are positive
    f, recon = run(sae, x)
    want = np_encode(x, w, act="topk", k=5, apply_b_dec=True)
    np.testing.assert_allclose(f, want, atol=1e-4)
    np.testing.assert_allclose(recon, np_decode(want, w), atol=1e-4)
    assert ((f > 0).sum(axis=1) <= 5).all() and (f > 0).sum(axis=1).max() == 5


def test_saelens_finetuning_scaling_factor_is_folded_into_the_decoder(tmp_path):
    w = weights(4)
    s = np.linspace(0.5, 2.0, F).astype(np.float32)
    tensors = {k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")} | {"scaling_factor": s}
    write_saelens(tmp_path, saelens_cfg(architecture="standard", finetuning_scaling_factor=True), tensors)
    x = inputs(5)
    f, recon = run(load_sae(tmp_path), x)
    want = np_encode(x, w, apply_b_dec=True)
    np.testing.assert_allclose(recon, (want * s) @ w["W_dec"] + w["b_dec"], atol=1e-5)


def test_bad_files_are_refused_in_one_line_naming_the_file(tmp_path):
    w = weights()
    base = {k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    cases = {
        "gated": (saelens_cfg(architecture="gated"), base, "'gated' is not supported"),
        "norm": (saelens_cfg(normalize_activations="constant_norm_rescale"), base, "constant_norm_rescale"),
        "no_b_enc": (saelens_cfg(), {k: v for k, v in base.items() if k != "b_enc"}, "missing b_enc"),
        "width": (saelens_cfg(d_in=D + 1), base, "d_in=17"),
        "shape": (saelens_cfg(), base | {"b_dec": np.zeros(D + 2, np.float32)}, "b_dec has shape (18,)"),
        "jr": (saelens_cfg(architecture="jumprelu"), base, "missing threshold"),
        "fn": (saelens_cfg(activation_fn_str="tanh-relu"), base, "tanh-relu"),
    }
    for name, (cfg, tensors, expected) in cases.items():
        write_saelens(tmp_path / name, cfg, tensors)
        with pytest.raises(SAEFormatError) as caught:
            load_sae(tmp_path / name)
        msg = one_line(caught.value)
        assert expected in msg and name in msg, (name, msg)

    (tmp_path / "gs").mkdir()
    np.savez(tmp_path / "gs" / "params.npz", **{k: v for k, v in w.items() if k != "threshold"})
    with pytest.raises(SAEFormatError, match=r"params\.npz: missing threshold"):
        load_sae(tmp_path / "gs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFormatError, match="no params.npz"):
        load_sae(tmp_path / "empty")
    with pytest.raises(SAEFormatError, match="nowhere: no such folder"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "cfg.json").write_text(json.dumps(saelens_cfg()))
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors: missing"):
        load_sae(tmp_path / "noweights")

    sae = SparseAutoencoder(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"])
    check_sae_width(sae, D, "model x")
    with pytest.raises(SAEFormatError, match=r"model x: the SAE reads d_model=16 but the model has d_model=32"):
        check_sae_width(sae, 32, "model x")


# ---- the Hub (a local Hugging Face cache: nothing leaves the machine) --------------------------


def test_hub_repo_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    commit = "a" * 40
    repo = cache / "models--google--gemma-scope-2b-pt-res"
    (repo / "snapshots" / commit / GS_FOLDER).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    w = weights(6)
    np.savez(repo / "snapshots" / commit / GS_FOLDER / "params.npz", **w)

    sae = load_sae("google/gemma-scope-2b-pt-res", subfolder=GS_FOLDER)
    assert sae.hook == HookInfo(12, "residual", "blocks.12.hook_resid_post", None)
    np.testing.assert_allclose(run(sae, inputs())[0], np_encode(inputs(), w, act="jumprelu", threshold=w["threshold"]),
                               atol=1e-5)
    assert load_sae("google/gemma-scope-2b-pt-res", GS_FOLDER, revision=commit).layer == 12

    with pytest.raises(SAEFormatError) as caught:
        load_sae("google/gemma-scope-9b-pt-res", subfolder=GS_FOLDER)
    assert "not in the local Hugging Face cache" in one_line(caught.value)
    with pytest.raises(SAEFormatError, match="no folder 'layer_3/x'"):
        load_sae("google/gemma-scope-2b-pt-res", subfolder="layer_3/x")


# ---- hook names ------------------------------------------------------------------------------


@pytest.mark.parametrize("hook,want", [
    ("blocks.12.hook_resid_post", (12, "residual")),
    ("blocks.12.hook_resid_pre", (11, "residual")),
    ("blocks.0.hook_resid_pre", (None, None)),
    ("blocks.4.hook_mlp_out", (4, "mlp_out")),
    ("blocks.4.hook_attn_out", (4, "attn_out")),
    ("blocks.4.attn.hook_z", (4, None)),
    ("hook_embed", (None, None)),
])
def test_hook_names_in_our_layer_convention(hook, want):
    info = hook_info_from_name(hook)
    assert (info.layer, info.component) == want and info.hook_name == hook


@pytest.mark.parametrize("folder,repo,want", [
    ("layer_12/width_16k/average_l0_82", "google/gemma-scope-2b-pt-res", (12, "residual")),
    ("layer_0/width_65k/average_l0_11", "google/gemma-scope-2b-pt-mlp", (0, "mlp_out")),
    ("layer_7/width_16k/average_l0_50", "google/gemma-scope-2b-pt-att", (7, None)),
    ("/data/saes/layer_20/width_1m/average_l0_9", None, (20, None)),
    ("resid_post/layer_9_width_16k_l0_small", None, (9, None)),
    ("width_16k/average_l0_82", None, (None, None)),
])
def test_gemma_scope_folder_names(folder, repo, want):
    info = hook_info_from_folder(folder, repo)
    assert (info.layer, info.component) == want


# ---- decomposition ---------------------------------------------------------------------------


def planted_sae(d: int = 64, n: int = 192, seed: int = 7) -> SparseAutoencoder:
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(n, d))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    # a tied encoder, so encoding a direction reads the features it is made of
    return SparseAutoencoder(W_dec.T, np.full(n, -0.1), W_dec, np.zeros(d))


def test_decompose_recovers_planted_features_with_signs():
    sae = planted_sae()
    W = sae.W_dec.detach().double().numpy()
    noise = np.random.default_rng(8).normal(size=W.shape[1]) * 0.01
    v = 2 * W[3] - 1 * W[7] + noise

    dec = decompose_vector(sae, v, top_n=2)
    assert [(s.feature, np.sign(s.cosine)) for s in dec.by_cosine] == [(3, 1), (7, -1)]
    np.testing.assert_allclose(dec.coefficients, [2, -1], atol=0.02)
    assert dec.explained_fraction == pytest.approx(1.0, abs=3e-3)  # noise: ~0.1% of the norm²
    # SAE features are non-negative: encoding sees +feature 3 first, and -feature 7 not at all
    assert dec.by_encoding[0].feature == 3 and 7 not in [s.feature for s in dec.by_encoding]
    assert decompose_vector(sae, -v, top_n=2).by_encoding[0].feature == 7

    # against an independent computation, for a longer list
    dec = decompose_vector(sae, v, top_n=6, scale=3.0)
    cos = W @ v / (np.linalg.norm(W, axis=1) * np.linalg.norm(v))
    top = np.argsort(-np.abs(cos))[:6]
    assert [s.feature for s in dec.by_cosine] == list(top)
    np.testing.assert_allclose([s.cosine for s in dec.by_cosine], cos[top], atol=1e-9)
    A = W[top].T
    proj = A @ np.linalg.pinv(A) @ v
    assert dec.explained_fraction == pytest.approx(proj @ proj / (v @ v), abs=1e-9)
    f = np.maximum((v * 3.0 / np.linalg.norm(v)) @ W.T - 0.1, 0) * np.linalg.norm(W, axis=1)
    want = [i for i in np.argsort(-f) if f[i] > 0][:6]
    assert [s.feature for s in dec.by_encoding] == want
    np.testing.assert_allclose([s.score for s in dec.by_encoding], f[want], rtol=1e-5)
    assert dec.scale == 3.0 and dec.vector_norm == pytest.approx(np.linalg.norm(v))


def test_decompose_refuses_wrong_width_and_zero():
    sae = planted_sae()
    with pytest.raises(ValueError, match="d_model=64"):
        decompose_vector(sae, np.ones(5))
    with pytest.raises(ValueError, match="zero vector"):
        decompose_vector(sae, np.zeros(64))


# ---- a one-model crosscoder ------------------------------------------------------------------


class Linear(torch.nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.as_tensor(weight, dtype=torch.float32))
        self.bias = torch.nn.Parameter(torch.as_tensor(bias, dtype=torch.float32))


class TinyCrossCoder(torch.nn.Module):
    def __init__(self, w, k=None, threshold=None, n_models=1):
        super().__init__()
        self.encoder = Linear(np.stack([w["W_enc"]] * n_models), w["b_enc"])
        self.decoder = Linear(np.stack([w["W_dec"]] * n_models), np.stack([w["b_dec"]] * n_models))
        if k is not None:
            self.register_buffer("k", torch.tensor(k))
            self.register_buffer("threshold", torch.tensor(threshold, dtype=torch.float32))


def test_sae_from_crosscoder_relu_threshold_and_topk():
    w = weights(9)
    x = inputs(10)
    pre = x.astype(np.float64) @ w["W_enc"] + w["b_enc"]  # crosscoders subtract no b_dec
    f_relu = np.maximum(pre, 0)

    f, recon = run(sae_from_crosscoder(TinyCrossCoder(w)), x)
    np.testing.assert_allclose(f, f_relu, atol=1e-5)
    np.testing.assert_allclose(recon, np_decode(f_relu, w), atol=1e-5)

    # calibrated BatchTopK: dictionary_learning keeps f where f * ||d_i|| > threshold
    sae = sae_from_crosscoder(TinyCrossCoder(w, k=4, threshold=0.1))
    assert sae.activation == "jumprelu"
    want = f_relu * (f_relu * np.linalg.norm(w["W_dec"], axis=1) > 0.1)
    np.testing.assert_allclose(run(sae, x)[0], want, atol=1e-5)
    assert (want > 0).sum() < (f_relu > 0).sum()
    sae = sae_from_crosscoder(TinyCrossCoder(w, k=4, threshold=0.1), threshold_on_scaled_code=False)
    np.testing.assert_allclose(run(sae, x)[0], f_relu * (f_relu > 0.1), atol=1e-5)

    # never calibrated (threshold -1): per-sample top-k
    sae = sae_from_crosscoder(TinyCrossCoder(w, k=4, threshold=-1.0))
    assert (sae.activation, sae.k) == ("topk", 4)
    np.testing.assert_allclose(run(sae, x)[0], np_encode(x, w, act="topk", k=4), atol=1e-5)

    # the crosscoder's own input_scale buffer (raw activations are multiplied by it) is kept
    cc = TinyCrossCoder(w)
    cc.register_buffer("input_scale", torch.tensor([0.5]))
    f, recon = run(sae_from_crosscoder(cc), x)
    f_scaled = np.maximum(0.5 * x.astype(np.float64) @ w["W_enc"] + w["b_enc"], 0)
    np.testing.assert_allclose(f, f_scaled, atol=1e-5)
    np.testing.assert_allclose(recon, np_decode(f_scaled, w, scale=0.5), atol=1e-5)

    with pytest.raises(SAEFormatError, match="expected one model"):
        sae_from_crosscoder(TinyCrossCoder(w, n_models=2))
    with pytest.raises(SAEFormatError, match="crosscoder: missing"):
        sae_from_crosscoder(torch.nn.Linear(2, 2))
