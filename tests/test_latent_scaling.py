"""Latent Scaling (transforms.dictionaries.scaling): streamed closed form against numpy
least squares, and planted recoveries where ν is known."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.dictionaries.scaling import LatentScaling

A, B = 0, 1


def _lstsq_beta(f_N: np.ndarray, d_D: np.ndarray, target_ND: np.ndarray) -> float:
    """argmin_β Σ_n ‖β f(n) d − t(n)‖² by np.linalg.lstsq on the flattened problem."""
    design = (f_N[:, None] * d_D[None, :]).reshape(-1, 1)
    beta, *_ = np.linalg.lstsq(design, target_ND.reshape(-1), rcond=None)
    return float(beta[0])


def _stream(scaling: LatentScaling, x, x_hat, f, w, bounds) -> None:
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        scaling.add(x[lo:hi], x_hat[lo:hi], f[lo:hi], w)


@pytest.mark.parametrize("recon_target", ["full", "without_latent"])
def test_streamed_betas_equal_lstsq(recon_target):
    rng = np.random.default_rng(1)
    n, n_models, n_latents, d = 300, 3, 8, 6
    x = rng.normal(size=(n, n_models, d))
    w = rng.normal(size=(n_models, n_latents, d))
    f = rng.exponential(size=(n, n_latents)) * (rng.random((n, n_latents)) < 0.3)
    f[:, 5] = 0.0  # never active
    x_hat = np.einsum("nf,mfd->nmd", f, w) + rng.normal(scale=0.3, size=(n, n_models, d))
    latents = [6, 0, 3, 5]
    scaling = LatentScaling(latents, model_a=2, model_b=0, recon_target=recon_target)
    _stream(scaling, x, x_hat, f, w, [0, 1, 77, 200, n])
    rows = scaling.result()
    assert [r["latent"] for r in rows] == latents
    for row in rows:
        j = row["latent"]
        fj, dj = f[:, j], w[0, j]
        if j == 5:
            assert row["n_active"] == 0
            assert all(row[k] is None for k in row if k.startswith(("beta", "nu")))
            continue
        assert row["n_active"] == int((fj > 0).sum())
        expected = {}
        for side, m in (("a", 2), ("b", 0)):
            own = fj[:, None] * w[m, j][None, :]
            error = x[:, m] - x_hat[:, m] + own
            recon = x_hat[:, m] - own if recon_target == "without_latent" else x_hat[:, m]
            expected[f"beta_error_{side}"] = _lstsq_beta(fj, dj, error)
            expected[f"beta_recon_{side}"] = _lstsq_beta(fj, dj, recon)
            assert row[f"beta_error_{side}"] == pytest.approx(expected[f"beta_error_{side}"], rel=1e-9, abs=1e-12)
            assert row[f"beta_recon_{side}"] == pytest.approx(expected[f"beta_recon_{side}"], rel=1e-9, abs=1e-12)
        assert row["nu_error"] == pytest.approx(expected["beta_error_a"] / expected["beta_error_b"])
        assert row["nu_recon"] == pytest.approx(expected["beta_recon_a"] / expected["beta_recon_b"])


def test_torch_float32_inputs_match_float64():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    n, d, n_latents = 200, 8, 5
    x = rng.normal(size=(n, 2, d))
    w = rng.normal(size=(2, n_latents, d))
    f = rng.exponential(size=(n, n_latents)) * (rng.random((n, n_latents)) < 0.5)
    x_hat = np.einsum("nf,mfd->nmd", f, w)
    ref, got = LatentScaling([0, 4]), LatentScaling([0, 4])
    ref.add(x, x_hat, f, w)
    for lo, hi in ((0, 64), (64, n)):
        got.add(*(torch.tensor(a[lo:hi], dtype=torch.float32) for a in (x, x_hat, f)), torch.tensor(w, dtype=torch.float32))
    for r, g in zip(ref.result(), got.result()):
        for key in ("beta_error_a", "beta_error_b", "beta_recon_a", "beta_recon_b", "nu_error", "nu_recon"):
            assert g[key] == pytest.approx(r[key], rel=1e-4, abs=1e-5)


def _planted(n: int = 4000, d: int = 32, noise: float = 0.05, seed: int = 3):
    """A hand-built crosscoder over two models on orthonormal directions u_0..u_4:

    0  B-only: u_0 (scaled 2) only in x_B; W_dec[A,0] = 0, W_dec[B,0] = 2 u_0.       ν^ε ≈ 0
    1  Complete Shrinkage: W_dec[A,1] = 0, but x_A carries f_1 u_1 like x_B does.    ν^ε ≈ 1
    2  shared, A at half strength: x_A has 0.5 f_2 u_2, W_dec[A,2] = 0.5 u_2.       ν^ε ≈ 0.5
    3  Latent Decoupling: W_dec[A,3] = 0, W_dec[B,3] = u_3; latent 4 fires on the same tokens
       with W_dec[A,4] = u_3, W_dec[B,4] = 0; both models carry f_3 u_3.            ν^r ≈ 1
    """
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(d, d)))[0][:, :5].T  # [5, d] orthonormal rows
    f = rng.exponential(size=(n, 5)) * (rng.random((n, 5)) < 0.3)
    f[:, 4] = f[:, 3]
    w = np.zeros((2, 5, d))
    w[B, 0] = 2 * u[0]
    w[B, 1] = u[1]
    w[A, 2], w[B, 2] = 0.5 * u[2], u[2]
    w[B, 3] = u[3]
    w[A, 4] = u[3]
    x = rng.normal(scale=noise, size=(n, 2, d))
    x[:, B] += np.outer(2 * f[:, 0], u[0])
    x[:, A] += np.outer(f[:, 1], u[1])
    x[:, B] += np.outer(f[:, 1], u[1])
    x[:, A] += np.outer(0.5 * f[:, 2], u[2])
    x[:, B] += np.outer(f[:, 2], u[2])
    x[:, A] += np.outer(f[:, 3], u[3])
    x[:, B] += np.outer(f[:, 3], u[3])
    x_hat = np.einsum("nf,mfd->nmd", f, w)
    return x, x_hat, f, w


def test_planted_recovery():
    x, x_hat, f, w = _planted()
    scaling = LatentScaling([0, 1, 2, 3])
    _stream(scaling, x, x_hat, f, w, [0, 1000, 2500, len(f)])
    rows = {r["latent"]: r for r in scaling.result()}
    assert rows[0]["nu_error"] == pytest.approx(0.0, abs=0.05)  # genuinely B-only
    assert rows[0]["beta_error_b"] == pytest.approx(1.0, abs=0.05)
    assert rows[0]["nu_recon"] == pytest.approx(0.0, abs=0.05)  # nothing in A reconstructs it
    assert rows[1]["nu_error"] == pytest.approx(1.0, abs=0.05)  # shrinkage artefact
    assert rows[1]["beta_error_a"] == pytest.approx(1.0, abs=0.05)
    assert rows[2]["nu_error"] == pytest.approx(0.5, abs=0.05)  # shared at half strength
    assert rows[3]["nu_recon"] == pytest.approx(1.0, abs=0.05)  # decoupled: latent 4 carries it in A
    assert rows[3]["nu_error"] == pytest.approx(0.0, abs=0.05)  # A's error holds none of it


def test_planted_decoupling_without_latent_target_on_a_side():
    """The A side of the reconstruction target is the same either way for a B-only decoder."""
    x, x_hat, f, w = _planted(seed=4)
    full, without = LatentScaling([3], recon_target="full"), LatentScaling([3], recon_target="without_latent")
    full.add(x, x_hat, f, w)
    without.add(x, x_hat, f, w)
    (rf,), (rw,) = full.result(), without.result()
    assert rf["beta_recon_a"] == pytest.approx(rw["beta_recon_a"]) == pytest.approx(1.0, abs=0.05)
    assert rw["beta_recon_b"] == pytest.approx(0.0, abs=0.05)  # latent 3 removed from B's recon


def test_bad_inputs():
    x = np.zeros((4, 2, 3))
    w = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match="latent index 7 out of range"):
        LatentScaling([1, 7]).add(x, x, np.zeros((4, 5)), w)
    with pytest.raises(ValueError, match="decoder shape"):
        LatentScaling([1]).add(x, x, np.zeros((4, 5)), np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="model_b"):
        LatentScaling([1], model_b=2).add(x, x, np.zeros((4, 5)), w)
    with pytest.raises(ValueError, match="no batch"):
        LatentScaling([1]).result()
    with pytest.raises(ValueError):
        LatentScaling([1], model_a=1, model_b=1)
    # a zero B decoder row: β undefined, not a division by zero
    (row,) = _one(LatentScaling([2]), np.ones((4, 2, 3)), np.ones((4, 5)), w)
    assert row["beta_error_a"] is None and row["nu_error"] is None and row["n_active"] == 4


def _one(scaling: LatentScaling, x, f, w):
    scaling.add(x, x, f, w)
    return scaling.result()
