"""Latent statistics of crosscoders (transforms.dictionaries.latents) against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.dictionaries.latents import (
    LatentActivationStats,
    Tagging,
    context_window,
    dec_norm_diff,
    decoder_table,
    tag_latents,
)


def test_dec_norm_diff_values_and_zero_case():
    a = np.array([0.0, 2.0, 1.0, 0.0, 3.0, 1.0])
    b = np.array([2.0, 0.0, 1.0, 0.0, 1.0, 4.0])
    got = dec_norm_diff(a, b)
    # written out by hand: B-only 0, A-only 1, equal 0.5, 0/0 defined 0.5, (3-1)/3, (1-4)/4
    expected = [0.0, 1.0, 0.5, 0.5, (2 / 3 + 1) / 2, (-3 / 4 + 1) / 2]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_dec_norm_diff_accepts_torch():
    torch = pytest.importorskip("torch")
    got = dec_norm_diff(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0], dtype=torch.bfloat16))
    np.testing.assert_allclose(got, [1.0, 0.0])


def test_tags_thresholds_are_parameters_and_strict():
    values = [0.0, 0.1, 0.0999, 0.9, 0.9001, 0.5, 0.61, 0.41, 0.3, float("nan")]
    assert tag_latents(values) == [
        "b_only", "other", "b_only", "other", "a_only", "shared", "other", "shared", "other", "other",
    ]
    wide = Tagging(b_only=0.2, a_only=0.7, shared_width=0.25)
    assert tag_latents([0.15, 0.75, 0.3, 0.25, 0.72], wide) == ["b_only", "a_only", "shared", "other", "a_only"]
    with pytest.raises(ValueError):
        Tagging(b_only=0.95, a_only=0.9)


def test_decoder_table_matches_numpy():
    rng = np.random.default_rng(0)
    n_models, n_latents, d = 3, 7, 5
    dec = rng.normal(size=(n_models, n_latents, d))
    dec[0, 2] = 0.0  # A side zero -> b_only, cosine undefined
    dec[1, 3] = 0.0  # B side zero -> a_only
    dec[0, 4] = dec[1, 4] = 0.0  # both zero -> 0.5, shared, cosine undefined
    dec[0, 5] = 0.05 * dec[1, 5]  # shrunk A side, exact cosine 1
    enc = rng.normal(size=(n_models, d, n_latents))
    rows = decoder_table(dec, enc, model_a=0, model_b=1, tagging=Tagging())
    assert [r["latent"] for r in rows] == list(range(n_latents))
    for j, r in enumerate(rows):
        na, nb = np.sqrt((dec[0, j] ** 2).sum()), np.sqrt((dec[1, j] ** 2).sum())
        assert r["dec_norm_a"] == pytest.approx(na)
        assert r["dec_norm_b"] == pytest.approx(nb)
        assert r["enc_norm_a"] == pytest.approx(np.sqrt((enc[0, :, j] ** 2).sum()))
        assert r["enc_norm_b"] == pytest.approx(np.sqrt((enc[1, :, j] ** 2).sum()))
        if na == 0 and nb == 0:
            assert r["dec_norm_diff"] == 0.5
        else:
            assert r["dec_norm_diff"] == pytest.approx(((na - nb) / max(na, nb) + 1) / 2)
        if na == 0 or nb == 0:
            assert r["dec_cosine"] is None
        else:
            assert r["dec_cosine"] == pytest.approx(float(dec[0, j] @ dec[1, j]) / (na * nb))
    assert [rows[j]["tag"] for j in (2, 3, 4, 5)] == ["b_only", "a_only", "shared", "b_only"]
    assert rows[5]["dec_cosine"] == pytest.approx(1.0)
    # other model pair, no encoder
    swapped = decoder_table(dec, None, model_a=1, model_b=0)
    assert swapped[2]["tag"] == "a_only" and swapped[2]["enc_norm_a"] is None
    with pytest.raises(ValueError, match="model_b=3"):
        decoder_table(dec, enc, model_b=3)
    with pytest.raises(ValueError, match="encoder shape"):
        decoder_table(dec, enc[:, :, :4])


def test_context_window():
    ids = list(range(100, 120))
    assert context_window(ids, 10, before=3, after=2) == ([107, 108, 109], 110, [111, 112])
    assert context_window(ids, 0, before=8, after=4) == ([], 100, [101, 102, 103, 104])
    assert context_window(np.array(ids), 19, before=2, after=4) == ([117, 118], 119, [])
    with pytest.raises(IndexError):
        context_window(ids, 20)


def _numpy_reference(f: np.ndarray, keys: np.ndarray, norms: np.ndarray, k: int):
    """Statistics on the concatenated data, one latent at a time, with Python sorting for top-k."""
    n, n_latents = f.shape
    out = []
    for j in range(n_latents):
        col = f[:, j]
        act = col > 0
        n_act = int(act.sum())
        entries = sorted(
            ((float(col[i]), int(keys[i, 0]), int(keys[i, 1])) for i in np.nonzero(act)[0]),
            key=lambda e: (-e[0], e[1], e[2]),
        )[:k]
        out.append(
            {
                "n_active": n_act,
                "frequency": n_act / n,
                "mean_active": col[act].mean() if n_act else None,
                "mean_all": col.mean(),
                "contrib": [(col[act] * norms[m, j]).mean() if n_act else None for m in range(norms.shape[0])],
                "top": entries,
            }
        )
    return out


@pytest.mark.parametrize("top_k", [1, 4, 10])
def test_streaming_stats_equal_concatenated(top_k):
    rng = np.random.default_rng(top_k)
    n, n_latents, n_models = 157, 9, 2
    # coarse values so ties are frequent; latent 8 never fires
    f = np.round(rng.exponential(size=(n, n_latents)), 1) * (rng.random((n, n_latents)) < 0.4)
    f[:, 8] = 0.0
    f[:, 7] = np.where(rng.random(n) < 0.5, 1.0, 0.0)  # all ties
    pairs = np.array([(s, t) for s in range(40) for t in range(6)])
    keys = pairs[rng.permutation(len(pairs))[:n]]  # unique (sample, token), shuffled order
    norms = rng.uniform(0.1, 2.0, size=(n_models, n_latents))
    stats = LatentActivationStats(n_latents, n_models, top_k=top_k)
    bounds = [0, 3, 40, 41, 100, n]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        stats.add(f[lo:hi].astype(np.float32), norms, keys=keys[lo:hi])
    ref = _numpy_reference(f.astype(np.float32).astype(np.float64), keys, norms, top_k)
    rows = stats.rows()
    assert stats.n_tokens == n
    for j, (row, exp) in enumerate(zip(rows, ref)):
        assert row["n_active"] == exp["n_active"]
        assert row["frequency"] == pytest.approx(exp["frequency"])
        assert row["mean_all"] == pytest.approx(exp["mean_all"])
        if exp["mean_active"] is None:
            assert row["mean_active"] is None and row["mean_contribution_0"] is None
        else:
            assert row["mean_active"] == pytest.approx(exp["mean_active"])
            for m in range(n_models):
                assert row[f"mean_contribution_{m}"] == pytest.approx(exp["contrib"][m])
    top = stats.top_examples()
    for j, exp in enumerate(ref):
        got = [(r["value"], r["sample"], r["token"]) for r in top if r["latent"] == j]
        assert [r["rank"] for r in top if r["latent"] == j] == list(range(1, len(got) + 1))
        assert got == exp["top"]  # float32 values widen exactly, so equality is exact


def test_top_examples_with_contexts_and_default_keys():
    f = np.zeros((6, 2))
    f[4, 0], f[1, 0], f[2, 1] = 3.0, 2.0, 1.0
    stats = LatentActivationStats(2, 1, top_k=2, context=(1, 1))
    stats.add(f[:3])
    stats.add(f[3:])  # default keys: running row number, token 0
    top = stats.top_examples(token_ids={r: [10 * r, 10 * r + 1] for r in range(6)})
    assert [(t["latent"], t["sample"], t["value"], t["token_id"], t["right_ids"]) for t in top] == [
        (0, 4, 3.0, 40, [41]), (0, 1, 2.0, 10, [11]), (1, 2, 1.0, 20, [21]),
    ]
    rows = stats.rows()
    assert rows[0]["mean_contribution_0"] is None  # no decoder norms given


def test_stats_bad_inputs():
    stats = LatentActivationStats(3, 2)
    with pytest.raises(ValueError, match="activations must be"):
        stats.add(np.zeros((4, 5)))
    stats.add(np.ones((2, 3)))
    with pytest.raises(ValueError, match="earlier batches"):
        stats.add(np.ones((2, 3)), np.ones((2, 3)))
