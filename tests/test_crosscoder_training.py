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


def numpy_auxk(model: CrossCoder, x: np.ndarray, x_hat: np.ndarray, dead: np.ndarray, k_aux: int) -> float:
    """The auxiliary-k loss token by token, in float64 numpy."""
    w_enc = model.encoder["weight"].detach().double().numpy()  # [M, d, F]
    b_enc = model.encoder["bias"].detach().double().numpy()
    w_dec = model.decoder["weight"].detach().double().numpy()  # [M, F, d]
    n, m, d = x.shape
    pre = np.maximum(x.reshape(n, -1).astype(np.float64) @ w_enc.reshape(m * d, -1) + b_enc, 0.0)
    score = pre * np.linalg.norm(w_dec, axis=2).sum(axis=0)
    e = (x - x_hat).reshape(n, -1).astype(np.float64)
    dead_ids = np.flatnonzero(dead)
    e_hat = np.zeros_like(e)
    for t in range(n):
        for j in dead_ids[np.argsort(-score[t, dead_ids])[:min(k_aux, len(dead_ids))]]:
            e_hat[t] += pre[t, j] * w_dec[:, j, :].reshape(-1)  # every model's decoder row, no bias
    return float(((e - e_hat) ** 2).sum(axis=1).mean() / ((e - e.mean(axis=0)) ** 2).sum(axis=1).mean())


def test_auxk_loss_matches_numpy_and_only_trains_dead_latents():
    from transforms.dictionaries import auxk_loss

    rng = np.random.default_rng(3)
    model = CrossCoder(2, D, 32, kind="batch_topk", k=3, seed=1)
    with torch.no_grad():
        model.encoder["bias"].copy_(torch.from_numpy(rng.normal(0, 0.3, 32).astype(np.float32)))
        model.decoder["weight"].mul_(torch.from_numpy(rng.uniform(0.2, 2.0, (2, 32, 1)).astype(np.float32)))
        model.decoder["bias"].copy_(torch.from_numpy(rng.normal(0, 0.1, (2, D)).astype(np.float32)))
    x = rng.standard_normal((40, 2, D)).astype(np.float32)
    x_hat = model(torch.from_numpy(x))[0].detach().numpy()
    dead = np.zeros(32, dtype=bool)
    dead[rng.choice(32, 10, replace=False)] = True
    for k_aux in (3, 8, 50):  # 50 > the 10 dead: all of them
        got = auxk_loss(model, torch.from_numpy(x), torch.from_numpy(x_hat), torch.from_numpy(dead), k_aux)
        assert np.isclose(float(got.detach()), numpy_auxk(model, x, x_hat, dead, k_aux), rtol=1e-5), k_aux
    none = auxk_loss(model, torch.from_numpy(x), torch.from_numpy(x_hat), torch.zeros(32, dtype=torch.bool), 8)
    assert float(none) == 0.0
    got = auxk_loss(model, torch.from_numpy(x), torch.from_numpy(x_hat), torch.from_numpy(dead), 4)
    got.backward()
    enc_grad = model.encoder["weight"].grad.abs().sum(dim=(0, 1)).numpy()
    dec_grad = model.decoder["weight"].grad.abs().sum(dim=(0, 2)).numpy()
    assert np.all(enc_grad[~dead] == 0) and np.all(dec_grad[~dead] == 0)
    assert (enc_grad[dead] > 0).sum() >= 8 and (dec_grad[dead] > 0).sum() >= 8
    assert model.decoder["bias"].grad is None or float(model.decoder["bias"].grad.abs().sum()) == 0.0


def shrunk(n_dead: int, seed: int = 0) -> CrossCoder:
    """A batch_topk crosscoder whose first ``n_dead`` latents still have positive pre-activations
    but decoder rows too small to ever win a top-k slot: dead without an auxiliary loss."""
    model = CrossCoder(2, D, 48, kind="batch_topk", k=4, seed=seed)
    with torch.no_grad():
        model.decoder["weight"][:, :n_dead] *= 1e-3
    return model


def test_auxk_revives_dead_batch_topk_latents(data):
    x = data[0][:3000]
    fired = {}
    for alpha in (0.0, 1 / 32):
        config = TrainConfig(kind="batch_topk", dict_size=48, k=4, lr=3e-3, batch_size=200, epochs=2, seed=0,
                             dead_after=600, resample_every=0, threshold_start_step=10, auxk_alpha=alpha)
        result = train_crosscoder(streamed(x), 2, D, config, progress=False, log_every=5, init=shrunk(12))
        result.model.train()  # batch top-k selection, independent of the learnt threshold
        hits = np.zeros(48, dtype=bool)
        for f in encode_batches(result.model, streamed(x)(0)):
            hits |= (f.numpy() > 0).any(axis=0)
        fired[alpha] = int(hits[:12].sum())
        aux = [row.auxk_loss for row in result.log]
        if alpha == 0:
            assert all(a == 0.0 for a in aux)
        else:
            assert max(aux) > 0
            assert all(np.isclose(row.loss, row.mse + alpha * row.auxk_loss, rtol=1e-5) for row in result.log)
    assert fired[0.0] == 0, fired
    assert fired[1 / 32] >= 9, fired


def test_auxk_config_is_checked():
    with pytest.raises(ValueError, match="batch_topk only"):
        TrainConfig(kind="l1", auxk_alpha=0.1)
    with pytest.raises(ValueError, match="auxk_alpha"):
        TrainConfig(kind="batch_topk", auxk_alpha=-1.0)


def test_scale_from_a_sample_with_a_given_token_count(data):
    x, _ = data
    config = TrainConfig(kind="l1", dict_size=16, batch_size=500, epochs=1, seed=0, final_pass=False)
    sample = x[::7]
    result = train_crosscoder(streamed(x), 2, D, config, progress=False, log_every=1, scale_sample=[sample[:900], sample[900:]],
                              n_tokens=len(x))
    rms = np.sqrt((sample.astype(np.float64) ** 2).sum(axis=2).mean(axis=0) / D)
    np.testing.assert_allclose(result.model.input_scale.numpy(), 1.0 / rms, rtol=1e-6)
    assert result.log[-1].step == 24 and result.tokens_seen == len(x)  # the schedule follows n_tokens
    with pytest.raises(ValueError, match="n_tokens"):
        train_crosscoder(streamed(x), 2, D, config, progress=False, scale_sample=[sample])


def test_auxk_alpha_enters_the_version_params_only_when_set():
    from builders.shared.common import BuildError
    from builders.stages.crosscoder import CrosscoderOptions

    assert "auxk_alpha" not in CrosscoderOptions().params()
    on = CrosscoderOptions(kind="batch_topk", auxk_alpha=1 / 32)
    assert on.params()["auxk_alpha"] == 1 / 32 and on.train_config().auxk_alpha == 1 / 32
    with pytest.raises(BuildError, match="--auxk-alpha"):
        CrosscoderOptions(kind="l1", auxk_alpha=0.1).check()
