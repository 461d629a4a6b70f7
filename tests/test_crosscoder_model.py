"""The crosscoder model against plain numpy: encode, batch top-k, threshold, decode, losses, init."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from transforms.dictionaries import CrossCoder
from transforms.dictionaries.crosscoder import check_code_normalization
from transforms.dictionaries.training import crosscoder_losses

M, D, F, B = 2, 16, 64, 12


def numpy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "encoder.weight": rng.standard_normal((M, D, F)).astype(np.float32) / 4,
        "encoder.bias": rng.standard_normal(F).astype(np.float32) / 4,
        "decoder.weight": rng.standard_normal((M, F, D)).astype(np.float32) * rng.uniform(0.1, 2, (M, F, 1)).astype(np.float32),
        "decoder.bias": rng.standard_normal((M, D)).astype(np.float32),
    }


def model_from(weights: dict[str, np.ndarray], kind: str = "l1", k: int = 3) -> CrossCoder:
    model = CrossCoder(M, D, F, kind=kind, k=k if kind == "batch_topk" else None)
    state = model.state_dict()
    state.update({key: torch.from_numpy(value) for key, value in weights.items()})
    model.load_state_dict(state, strict=True)
    return model


def np_pre(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    total = sum(x[:, m] @ w["encoder.weight"][m] for m in range(M))
    return np.maximum(total + w["encoder.bias"], 0)


def np_decode(f: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([f @ w["decoder.weight"][m] + w["decoder.bias"][m] for m in range(M)], axis=1)


def np_scale(w: dict[str, np.ndarray]) -> np.ndarray:
    return np.sqrt((w["decoder.weight"].astype(np.float64) ** 2).sum(axis=2)).sum(axis=0)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((B, M, D)).astype(np.float32)


def test_l1_encode_decode_forward_match_numpy(x):
    w = numpy_weights()
    model = model_from(w)
    f = model.encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(f, np_pre(x, w), rtol=1e-5, atol=1e-5)
    assert (f == 0).any() and (f > 0).any()  # the relu bites both ways
    x_hat, f2 = model(torch.from_numpy(x))
    np.testing.assert_allclose(x_hat.detach().numpy(), np_decode(np_pre(x, w), w), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(f2.detach().numpy(), f)
    np.testing.assert_allclose(model.decoder_norms().detach().numpy(),
                               np.linalg.norm(w["decoder.weight"], axis=2), rtol=1e-5)


def test_batch_topk_keeps_the_top_k_times_batch_scores_with_unscaled_values(x):
    w, k = numpy_weights(2), 3
    model = model_from(w, "batch_topk", k).train()
    f = model.encode(torch.from_numpy(x)).detach().numpy()
    pre = np_pre(x, w)
    scores = (pre * np_scale(w)).ravel()
    keep = np.zeros(scores.size, dtype=bool)
    keep[np.argsort(-scores, kind="stable")[: k * B]] = True
    expected = np.where(keep.reshape(pre.shape), pre, 0)
    np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-6)
    assert (f > 0).sum() == k * B
    # Selection is by score, not by raw value: the kept set differs from the raw top-k here.
    raw_keep = np.zeros(scores.size, dtype=bool)
    raw_keep[np.argsort(-pre.ravel(), kind="stable")[: k * B]] = True
    assert (raw_keep != keep).any()
    # Not yet thresholded: eval mode still takes the batch top-k.
    assert float(model.threshold) == -1.0
    np.testing.assert_allclose(model.eval().encode(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_batch_topk_threshold_path_is_per_token(x):
    w = numpy_weights(3)
    model = model_from(w, "batch_topk", 3).eval()
    pre = np_pre(x, w)
    threshold = float(np.quantile(pre * np_scale(w), 0.9))
    model.threshold.fill_(threshold)
    f = model.encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(f, np.where(pre * np_scale(w) > threshold, pre, 0), rtol=1e-5, atol=1e-6)
    one = model.encode(torch.from_numpy(x[:1])).detach().numpy()
    np.testing.assert_allclose(one, f[:1], rtol=1e-5, atol=1e-6)  # batch-independent
    topk = model.encode(torch.from_numpy(x), use_threshold=False).detach().numpy()
    assert (topk > 0).sum() == 3 * B
    assert (model.train().encode(torch.from_numpy(x)).detach().numpy() > 0).sum() == 3 * B


def test_losses_match_numpy(x):
    w = numpy_weights(4)
    model = model_from(w)
    out = crosscoder_losses(model, torch.from_numpy(x), 0.7)
    f = np_pre(x, w)
    x_hat = np_decode(f, w)
    mse = ((x_hat - x) ** 2).sum(axis=(1, 2)).mean()
    sparsity = (f * np_scale(w)).sum(axis=1).mean()
    np.testing.assert_allclose(float(out["mse"].detach()), mse, rtol=1e-4)
    np.testing.assert_allclose(float(out["sparsity"].detach()), sparsity, rtol=1e-4)
    np.testing.assert_allclose(float(out["loss"].detach()), mse + 0.7 * sparsity, rtol=1e-4)
    top = crosscoder_losses(model_from(w, "batch_topk", 3), torch.from_numpy(x), 0.7)
    assert float(top["loss"].detach()) == float(top["mse"].detach())  # no L1 term for BatchTopK


@pytest.mark.parametrize("kind,norm", [("l1", 0.1), ("batch_topk", 1.0)])
def test_init_is_seeded_small_norm_and_tied(kind, norm):
    a = CrossCoder(M, D, F, kind=kind, k=4, seed=5)
    b = CrossCoder(M, D, F, kind=kind, k=4, seed=5)
    c = CrossCoder(M, D, F, kind=kind, k=4, seed=6)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.decoder["weight"], c.decoder["weight"])
    np.testing.assert_allclose(a.decoder_norms().detach().numpy(), norm, rtol=1e-5)
    assert torch.equal(a.encoder["weight"], a.decoder["weight"].transpose(1, 2))
    assert not a.encoder["bias"].any() and not a.decoder["bias"].any()
    assert (a.n_models, a.d_model, a.activation_dim, a.dict_size, a.kind) == (M, D, D, F, kind)
    assert a.k == (4 if kind == "batch_topk" else None)


def test_state_dict_layout_and_buffers():
    state = CrossCoder(M, D, F, kind="batch_topk", k=7).state_dict()
    assert {key: tuple(v.shape) for key, v in state.items()} == {
        "encoder.weight": (M, D, F), "encoder.bias": (F,), "decoder.weight": (M, F, D), "decoder.bias": (M, D),
        "code_normalization_id": (), "k": (), "threshold": ()}
    assert state["code_normalization_id"].dtype == torch.int64 and int(state["code_normalization_id"]) == 1
    assert state["k"].dtype == torch.int32 and int(state["k"]) == 7
    assert state["threshold"].dtype == torch.float32 and float(state["threshold"]) == -1.0
    assert "input_scale" not in state
    assert set(CrossCoder(M, D, F).state_dict()) == set(state) - {"k", "threshold"}


def test_normalize_and_denormalize(x):
    model = CrossCoder(M, D, F)
    model.set_input_scale([2.0, 0.5])
    normed = model.normalize(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(normed, x * np.array([2.0, 0.5], dtype=np.float32)[None, :, None])
    np.testing.assert_allclose(model.denormalize(torch.from_numpy(normed)).numpy(), x, rtol=1e-6)
    with pytest.raises(ValueError, match="3 entries"):
        model.set_input_scale([1.0, 2.0, 3.0])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind"):
        CrossCoder(M, D, F, kind="topk")
    with pytest.raises(ValueError, match="k > 0"):
        CrossCoder(M, D, F, kind="batch_topk")
    with pytest.raises(ValueError, match=r"code_normalization_id 2 \(SAE\)"):
        check_code_normalization(2)
    check_code_normalization(1)


def test_package_import_loads_no_torch():
    code = "import sys, transforms.dictionaries as d; assert 'torch' not in sys.modules, 'torch'; print(d.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "CrossCoder" in done.stdout and "load_crosscoder" in done.stdout
