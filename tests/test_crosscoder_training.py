"""Crosscoder training on synthetic activations with planted sparse features (the answer is known)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transforms.dictionaries import CrossCoder, TrainConfig, encode_batches, input_scales, train_crosscoder
from transforms.dictionaries.training import steps_of

D, N_SHARED, N_B = 16, 14, 6


def planted(n: int = 12000, seed: int = 0, p: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Features 0..13 write the same direction into A and B; 14..19 write into B only. Model B is
    also on a different scale than A, so the per-model normalisation matters."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((N_SHARED + N_B, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    mags = rng.uniform(0.5, 1.5, size=(n, N_SHARED + N_B)) * (rng.random((n, N_SHARED + N_B)) < p)
    x = np.stack([mags[:, :N_SHARED] @ dirs[:N_SHARED] * 3.0, mags @ dirs * 0.5], axis=1)
    return x.astype(np.float32), dirs


def streamed(x: np.ndarray, chunk: int = 1000):
    def batches(epoch: int):
        order = np.random.default_rng(epoch).permutation(len(x))
        for start in range(0, len(x), chunk):
            yield x[order[start:start + chunk]]
    return batches


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def l1_run(data):
    x, _ = data
    config = TrainConfig(kind="l1", dict_size=64, l1_coefficient=1.0, lr=1e-2, batch_size=256, epochs=2, seed=0,
                         dead_after=4000)
    return train_crosscoder(streamed(x), 2, D, config, progress=False, log_every=10)


def test_normalisation_scale_matches_numpy(data, l1_run):
    x, _ = data
    rms = np.sqrt((x.astype(np.float64) ** 2).sum(axis=2).mean(axis=0) / D)
    np.testing.assert_allclose(l1_run.model.input_scale.numpy(), 1.0 / rms, rtol=1e-5)
    estimate = input_scales(streamed(x, 777)(0), 2, D, target_rms=2.5)
    np.testing.assert_allclose(estimate.scale, 2.5 / rms, rtol=1e-5)
    assert estimate.tokens == len(x)
    scaled = x * np.asarray(estimate.scale, dtype=np.float32)[None, :, None]
    np.testing.assert_allclose(np.sqrt((scaled.astype(np.float64) ** 2).sum(axis=2).mean(axis=0) / D), 2.5, rtol=1e-5)
    assert input_scales(streamed(x)(0), 2, D, None).scale == [1.0, 1.0]


def test_l1_crosscoder_recovers_planted_features(data, l1_run):
    x, dirs = data
    assert min(l1_run.explained_variance) > 0.9
    assert l1_run.tokens_seen == 2 * len(x)
    model = l1_run.model
    w_dec = model.decoder["weight"].detach().numpy()  # [M, F, D]
    norms = np.linalg.norm(w_dec, axis=2)
    joint = w_dec.transpose(1, 0, 2).reshape(model.dict_size, -1)
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    truth = np.concatenate([np.concatenate([dirs[:N_SHARED], dirs[:N_SHARED]], axis=1) / np.sqrt(2),
                            np.concatenate([np.zeros((N_B, D)), dirs[N_SHARED:]], axis=1)])
    cosine = truth @ joint.T
    best = cosine.argmax(axis=1)
    assert (cosine.max(axis=1) > 0.9).sum() >= 18, np.round(cosine.max(axis=1), 3)
    b_share = norms[1] / norms.sum(axis=0)  # 1 = decoder only in B, 0.5 = equal norms
    assert np.median(b_share[best[N_SHARED:]]) > 0.9, np.round(b_share[best], 2)
    assert np.all(np.abs(b_share[best[:N_SHARED]] - 0.5) < 0.25), np.round(b_share[best], 2)


def test_log_rows_and_explained_variance_are_consistent(data, l1_run):
    log = l1_run.log
    steps = [row.step for row in log]
    assert steps == sorted(set(steps)) and steps[-1] == 2 * 47  # ceil(12000 / 256) steps per epoch
    assert log[-1].tokens == 24000 and log[0].tokens == 10 * 256
    assert log[0].loss > log[-1].loss
    assert all(len(row.explained_variance) == 2 and row.l0 > 0 for row in log)
    # the final explained variance is over normalized inputs: recompute it in numpy
    x, _ = data
    model = l1_run.model
    xs = x * model.input_scale.numpy()[None, :, None]
    with torch.no_grad():
        x_hat = model(torch.from_numpy(xs))[0].numpy().astype(np.float64)
    expected = 1 - ((xs - x_hat) ** 2).sum(axis=(0, 2)) / ((xs - xs.mean(axis=0)) ** 2).sum(axis=(0, 2))
    np.testing.assert_allclose(l1_run.explained_variance, expected, rtol=1e-4)
    f = np.concatenate([f.numpy() for f in encode_batches(model, streamed(x)(0))])
    assert f.shape == (len(x), model.dict_size)
    assert np.isclose((f > 0).sum(axis=1).mean(), (model.encode(torch.from_numpy(xs)) > 0).sum(1).float().mean().item())


def test_same_seed_same_batches_give_identical_weights(data):
    x = data[0][:3000]
    config = TrainConfig(kind="batch_topk", dict_size=32, k=3, batch_size=128, epochs=1, seed=4, dead_after=500,
                         resample_every=5, threshold_start_step=3)
    runs = [train_crosscoder(streamed(x), 2, D, config, progress=False) for _ in range(2)]
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[key]), key
    assert runs[0].log == runs[1].log and runs[0].resampled == runs[1].resampled
    other = train_crosscoder(streamed(x), 2, D, TrainConfig(**{**config.__dict__, "seed": 5}), progress=False)
    assert not torch.equal(other.model.decoder["weight"], runs[0].model.decoder["weight"])


def test_batch_topk_learns_a_threshold_and_reconstructs(data):
    x, _ = data
    config = TrainConfig(kind="batch_topk", dict_size=64, k=4, lr=1e-2, batch_size=256, epochs=2, seed=0,
                         dead_after=4000, threshold_start_step=20)
    result = train_crosscoder(streamed(x), 2, D, config, progress=False, log_every=20)
    model = result.model
    assert not model.training and float(model.threshold) > 0
    assert all(row.l0 == 4.0 for row in result.log)  # exactly k per token on average while training
    assert min(result.explained_variance) > 0.9  # final pass uses the threshold, per token
    xs = torch.from_numpy(x[:2000]) * model.input_scale[None, :, None]
    l0 = float((model.encode(xs) > 0).sum(dim=1).float().mean())
    assert 2.0 < l0 < 8.0


def killed(n_dead: int, seed: int = 0) -> CrossCoder:
    """A crosscoder whose first ``n_dead`` latents can never fire (huge negative bias)."""
    model = CrossCoder(2, D, 48, kind="l1", seed=seed)
    with torch.no_grad():
        model.encoder["bias"][:n_dead] = -1e3
    return model


@pytest.mark.parametrize("resample_every", [0, 20])
def test_dead_latents_are_tracked_and_resampled(data, resample_every):
    x = data[0][:6000]
    config = TrainConfig(kind="l1", dict_size=48, l1_coefficient=1.0, lr=3e-3, batch_size=200, epochs=2, seed=0,
                         dead_after=1000, resample_every=resample_every)
    result = train_crosscoder(streamed(x), 2, D, config, progress=False, log_every=5, init=killed(12))
    assert max(row.dead for row in result.log) >= 12
    fired = np.zeros(48, dtype=bool)
    for f in encode_batches(result.model, streamed(x)(0)):
        fired |= (f.numpy() > 0).any(axis=0)
    if resample_every == 0:
        assert result.resampled == 0 and not fired[:12].any() and result.dead >= 12
    else:
        assert result.resampled >= 12
        assert fired[:12].sum() >= 9, fired[:12]
        assert result.dead < 12


def test_steps_recut_caller_chunks_exactly():
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((n, 2, D)).astype(np.float32) for n in (5, 130, 64, 1, 77)]
    steps = list(steps_of(chunks, 64, 2, D))
    assert [len(s) for s in steps] == [64, 64, 64, 64, 21]
    np.testing.assert_array_equal(torch.cat(steps).numpy(), np.concatenate(chunks))


def test_bad_inputs_are_refused(data):
    with pytest.raises(ValueError, match=r"expected \[B, 2, 16\]"):
        train_crosscoder(lambda epoch: [np.zeros((4, 3, D), np.float32)], 2, D, TrainConfig(dict_size=8), progress=False)
    with pytest.raises(ValueError, match="no activations"):
        train_crosscoder(lambda epoch: [], 2, D, TrainConfig(dict_size=8), progress=False)
    with pytest.raises(ValueError, match="kind"):
        TrainConfig(kind="topk")
