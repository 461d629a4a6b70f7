"""Trait-vector extraction, evaluation and train/val split, checked against independent
computations (numpy / scikit-learn / hand formulas) on small synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transforms.vectors import METHODS, ExtractionResult, evaluate, extract, id_rows, split_train_val

# ---------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The reference computations in these tests, like the code under test, run on one BLAS
    thread (threaded BLAS on tiny matrices is slow on a shared CPU)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(unit(a) * unit(b), axis=-1)


def planted(
    n_pairs: int = 80,
    n_layers: int = 4,
    d: int = 24,
    signal_layer: int | None = 2,
    shift: float = 3.0,
    seed: int = 0,
    scenario_std: float = 1.0,
):
    """Pairs (one positive, one negative sample per pair group) sharing a per-pair scenario
    offset; the positive sample is moved by ``shift * u`` at ``signal_layer`` only. ``u`` and
    the common mean depend on ``d`` and ``n_layers`` only, so another ``seed`` draws fresh
    samples of the same distribution (a validation set).
    Returns (acts_NLD, labels_N, sample_ids, pair_ids, u_D)."""
    fixed = np.random.default_rng(1000 + d)
    u = unit(fixed.standard_normal(d))
    base = fixed.standard_normal((n_layers, d)) * 3.0  # a common non-zero mean
    rng = np.random.default_rng(seed)
    n = 2 * n_pairs
    scenario = rng.standard_normal((n_pairs, n_layers, d)) * scenario_std
    acts = np.empty((n, n_layers, d), dtype=np.float32)
    labels = np.tile([1, 0], n_pairs)
    for i in range(n):
        acts[i] = base + scenario[i // 2] + rng.standard_normal((n_layers, d))
        if labels[i] == 1 and signal_layer is not None:
            acts[i, signal_layer] += shift * u
    ids = [f"s{i:04d}" for i in range(n)]
    pairs = [f"p{i // 2:03d}" for i in range(n)]
    return acts, labels, ids, pairs, u


def auroc_by_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), over all positive-negative pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def cohens_d_by_hand(pos: list[float], neg: list[float]) -> float:
    m1, m0 = sum(pos) / len(pos), sum(neg) / len(neg)
    ss1 = sum((x - m1) ** 2 for x in pos)
    ss0 = sum((x - m0) ** 2 for x in neg)
    return (m1 - m0) / math.sqrt((ss1 + ss0) / (len(pos) + len(neg) - 2))


# ---------------------------------------------------------------------------- methods


def test_mean_diff_matches_numpy():
    acts, labels, _, _, _ = planted(n_pairs=30, d=16)
    res = extract("mean_diff", acts, labels)
    expected = acts[labels == 1].astype(np.float64).mean(0) - acts[labels == 0].astype(np.float64).mean(0)
    assert isinstance(res, ExtractionResult) and res.method == "mean_diff"
    assert res.vectors_LD.dtype == np.float32 and res.vectors_LD.shape == (4, 16)
    np.testing.assert_allclose(res.vectors_LD, expected, rtol=1e-5, atol=1e-5)
    assert [row["norm"] for row in res.info] == pytest.approx(np.linalg.norm(expected, axis=1), rel=1e-5)
    assert not any(row["flipped"] for row in res.info)
    assert [row["cos_mean_diff"] for row in res.info] == pytest.approx([1.0] * 4, abs=1e-6)


def test_probe_matches_sklearn_on_centred_row_normalized_data():
    from sklearn.linear_model import LogisticRegression

    acts, labels, _, pairs, _ = planted(n_pairs=60, d=48, n_layers=3, signal_layer=1, shift=1.5)
    acts = acts * np.float32(40.0)  # activation scale must not matter
    res = extract("probe", acts, labels, pair_ids=pairs)
    for layer in range(3):
        a = acts[:, layer].astype(np.float64)
        a = a - (a[labels == 1].mean(0) + a[labels == 0].mean(0)) / 2  # class midpoint
        x = a / np.linalg.norm(a, axis=1, keepdims=True)
        info = res.info[layer]
        assert info["C_selection"] == "grouped_cv" and info["cv_folds"] == 5
        clf = LogisticRegression(C=info["C"], max_iter=5000, random_state=0).fit(x, labels)
        coef = clf.coef_[0]
        assert cos(res.vectors_LD[layer], coef) > 0.9999
        assert info["coef_norm"] == pytest.approx(np.linalg.norm(coef), rel=1e-3)
        assert info["probe_train_accuracy"] == pytest.approx(clf.score(x, labels), abs=1e-9)
        assert info["converged"]
    np.testing.assert_allclose(np.linalg.norm(res.vectors_LD, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("d", [20, 96])  # more pair groups than dims, and fewer
def test_pca_matches_numpy_svd(d):
    acts, labels, _, pairs, _ = planted(n_pairs=40, d=d, scenario_std=3.0)
    # an unpaired sample and a single-class pair group must be ignored
    pairs = list(pairs)
    pairs[0] = None
    pairs[2] = "lonely"
    res = extract("pca", acts, labels, pair_ids=pairs)

    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        if p is not None:
            groups.setdefault(p, []).append(i)
    x = acts.astype(np.float64)
    md = x[labels == 1].mean(0) - x[labels == 0].mean(0)
    for layer in range(acts.shape[1]):
        deltas = []
        for rows in groups.values():
            pos = [r for r in rows if labels[r] == 1]
            neg = [r for r in rows if labels[r] == 0]
            if pos and neg:
                deltas.append(x[pos, layer].mean(0) - x[neg, layer].mean(0))
        delta = np.array(deltas)
        _, sv, vt = np.linalg.svd(np.vstack([delta, -delta]))
        v = vt[0] if vt[0] @ md[layer] > 0 else -vt[0]
        assert cos(res.vectors_LD[layer], v) > 0.9999
        assert res.info[layer]["explained_variance"] == pytest.approx(sv[0] ** 2 / np.sum(sv**2), rel=1e-6)
    assert res.info[0]["n_pairs"] == 38
    assert res.info[0]["n_pairs_skipped"] == 3  # "p000", "p001" (one class left) and "lonely"
    np.testing.assert_allclose(np.linalg.norm(res.vectors_LD, axis=1), 1.0, atol=1e-5)


def test_pca_requires_pairs():
    acts, labels, _, pairs, _ = planted(n_pairs=10, d=8)
    with pytest.raises(ValueError, match="pair_ids"):
        extract("pca", acts, labels)
    with pytest.raises(ValueError, match="pair group"):
        extract("pca", acts, labels, pair_ids=[None] * len(labels))
    with pytest.raises(ValueError, match="pair group"):  # every group single-class
        extract("pca", acts, labels, pair_ids=[f"x{i}" for i in range(len(labels))])


def _anisotropic(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = 1.0 / np.arange(1, d + 1) ** 0.7 * 4.0
    u = unit(rng.standard_normal(d) + 3 * q[:, 0])  # partly along the noisiest axis
    labels = np.arange(n) % 2
    noise = (rng.standard_normal((n, d)) * np.sqrt(spectrum)) @ q.T
    x = noise + np.outer(labels, 2.0 * u)
    return x.astype(np.float32)[:, None, :], labels, u


@pytest.mark.parametrize(("n", "d"), [(400, 32), (60, 128)])  # d x d solve; Woodbury (N < d)
def test_gradient_is_the_closed_form_of_the_documented_objective(n, d):
    """It is (S_w + ridge * tau * I)^-1 dmu (shrinkage LDA), to float32 rounding (was an Adam
    ascent, which got within cos 0.999)."""
    acts, labels, _ = _anisotropic(n, d, seed=3)
    res = extract("gradient", acts, labels)
    x = acts[:, 0].astype(np.float64)
    mp, mn = x[labels == 1].mean(0), x[labels == 0].mean(0)
    dev = np.where((labels == 1)[:, None], x - mp, x - mn)
    s_w = dev.T @ dev / (len(x) - 2)
    tau = np.trace(s_w) / x.shape[1]
    closed = np.linalg.solve(s_w + 1.0 * tau * np.eye(x.shape[1]), mp - mn)
    np.testing.assert_allclose(res.vectors_LD[0], unit(closed), atol=2e-7)
    info = res.info[0]
    assert info["objective"] >= info["objective_mean_diff"] and info["ridge"] == 1.0
    v = unit(res.vectors_LD[0])
    j = ((mp - mn) @ v) / math.sqrt(v @ (s_w + tau * np.eye(len(v))) @ v)
    assert info["objective"] == pytest.approx(j, rel=1e-6)
    # any other direction does worse: the closed form is the maximum
    for trial in range(5):
        other = unit(closed + 0.05 * np.random.default_rng(trial).standard_normal(len(v)))
        assert ((mp - mn) @ other) / math.sqrt(other @ (s_w + tau * np.eye(len(v))) @ other) < j


def test_gradient_recovers_planted_direction_and_beats_random():
    acts, labels, ids, pairs, u = planted(n_pairs=300, d=32, n_layers=2, signal_layer=1, shift=3.0)
    res = extract("gradient", acts, labels, seed=0)
    rnd = extract("random", acts, labels, seed=0)
    assert cos(res.vectors_LD[1], u) > 0.95
    assert abs(cos(rnd.vectors_LD[1], u)) < 0.6
    va_acts, va_labels, _, _, _ = planted(n_pairs=100, d=32, n_layers=2, signal_layer=1, shift=3.0, seed=1)
    g_rows = evaluate(res.vectors_LD, acts, labels, va_acts, va_labels)
    r_rows = evaluate(rnd.vectors_LD, acts, labels, va_acts, va_labels)
    assert g_rows[1]["val_auroc"] > 0.9  # the ceiling: the scenario offsets add variance
    assert g_rows[1]["val_auroc"] > r_rows[1]["val_auroc"] + 0.1
    np.testing.assert_allclose(np.linalg.norm(res.vectors_LD, axis=1), 1.0, atol=1e-5)


def test_gradient_is_deterministic_and_unseeded():
    acts, labels, _, _, _ = planted(n_pairs=20, d=12, n_layers=2, signal_layer=1)
    a = extract("gradient", acts, labels, seed=5)
    b = extract("gradient", acts, labels, seed=6, ridge=1.0)
    np.testing.assert_array_equal(a.vectors_LD, b.vectors_LD)
    assert a.params == {} and b.params == {"ridge": 1.0}
    with pytest.raises(ValueError, match="ridge > 0"):
        extract("gradient", acts, labels, ridge=0.0)
    flat = acts.copy()
    flat[:, 0] = np.where((labels == 1)[:, None], 1.0, -1.0)  # layer 0: every sample at its class mean
    with pytest.raises(ValueError, match="layer 0 has no within-class variance"):
        extract("gradient", flat, labels)


def test_random_is_seeded_scaled_and_oriented():
    acts, labels, _, _, _ = planted(n_pairs=20, d=12, n_layers=8)
    a = extract("random", acts, labels, seed=1)
    b = extract("random", acts, labels, seed=1)
    c = extract("random", acts, labels, seed=2)
    np.testing.assert_array_equal(a.vectors_LD, b.vectors_LD)
    assert not np.allclose(np.abs(a.vectors_LD), np.abs(c.vectors_LD))
    md = extract("mean_diff", acts, labels).vectors_LD
    np.testing.assert_allclose(np.linalg.norm(a.vectors_LD, axis=1), np.linalg.norm(md, axis=1), rtol=1e-5)
    # the directions are the seed's Gaussian draw, up to the orientation flip
    raw = unit(np.random.default_rng(1).standard_normal((8, 12)))
    flips = np.array([row["flipped"] for row in a.info])
    np.testing.assert_allclose(unit(a.vectors_LD), np.where(flips[:, None], -raw, raw), atol=1e-6)
    assert flips.any() and not flips.all()  # 8 random signs: both cases occur for this seed


@pytest.mark.parametrize("method", METHODS)
def test_every_method_points_toward_the_trait(method):
    acts, labels, _, pairs, _ = planted(n_pairs=30, d=16, n_layers=6, signal_layer=None)  # pure noise
    res = extract(method, acts, labels, pair_ids=pairs, seed=3)
    rows = evaluate(res.vectors_LD, acts, labels, acts[:0], labels[:0], info=res.info)
    assert [row["polarity"] for row in rows] == [1] * 6
    md = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    assert (np.einsum("ld,ld->l", res.vectors_LD, md) > 0).all()
    assert all(math.isnan(row["val_auroc"]) for row in rows)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "random"])
def test_planted_layer_has_the_best_val_auroc(method):
    acts, labels, ids, pairs, _ = planted(n_pairs=120, d=24, n_layers=4, signal_layer=2)
    train_ids, val_ids = split_train_val(ids, pairs, 0.25, seed=0, labels=labels)
    tr, va = id_rows(ids, train_ids), id_rows(ids, val_ids)
    res = extract(method, acts[tr], labels[tr], pair_ids=[pairs[i] for i in tr], seed=0)
    rows = evaluate(res.vectors_LD, acts[tr], labels[tr], acts[va], labels[va], info=res.info)
    aurocs = [row["val_auroc"] for row in rows]
    assert int(np.argmax(aurocs)) == 2, aurocs
    assert aurocs[2] > 0.9


# ---------------------------------------------------------------------------- evaluation


def test_evaluate_matches_independent_computation():
    rng = np.random.default_rng(11)
    n_layers, d = 3, 10
    tr_acts = rng.standard_normal((50, n_layers, d)).astype(np.float32)
    tr_labels = (rng.random(50) < 0.4).astype(int)
    tr_acts[tr_labels == 1] += 0.7
    va_acts = rng.standard_normal((30, n_layers, d)).astype(np.float32)
    va_labels = (rng.random(30) < 0.5).astype(int)
    va_acts[va_labels == 1] += 0.5
    vectors = (rng.standard_normal((n_layers, d)) * 3 + 1).astype(np.float32)
    va_acts[0] = va_acts[1]  # a tie between samples

    rows = evaluate(vectors, tr_acts, tr_labels, va_acts, va_labels)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    for layer, row in enumerate(rows):
        v = vectors[layer].astype(np.float64)
        vh = v / math.sqrt(sum(float(c) ** 2 for c in v))
        tp = [float(np.dot(a[layer].astype(np.float64), vh)) for a in tr_acts]
        vp = [float(np.dot(a[layer].astype(np.float64), vh)) for a in va_acts]
        tp_pos = [p for p, y in zip(tp, tr_labels) if y == 1]
        tp_neg = [p for p, y in zip(tp, tr_labels) if y == 0]
        mean_pos = tr_acts[tr_labels == 1, layer].astype(np.float64).mean(0)
        mean_neg = tr_acts[tr_labels == 0, layer].astype(np.float64).mean(0)
        center = float(((mean_pos + mean_neg) / 2) @ vh)
        assert row["norm"] == pytest.approx(np.linalg.norm(v), rel=1e-6)
        assert row["center_proj"] == pytest.approx(center, rel=1e-5, abs=1e-5)
        midpoint = (np.mean(tp_pos) + np.mean(tp_neg)) / 2
        assert row["center_proj"] == pytest.approx(midpoint, rel=1e-5, abs=1e-5)
        assert row["polarity"] == (1 if np.mean(tp_pos) > np.mean(tp_neg) else -1)
        val_acc = sum((p > center) == (y == 1) for p, y in zip(vp, va_labels)) / len(vp)
        train_acc = sum((p > center) == (y == 1) for p, y in zip(tp, tr_labels)) / len(tp)
        assert row["val_accuracy"] == pytest.approx(val_acc)
        assert row["train_accuracy"] == pytest.approx(train_acc)
        assert row["val_auroc"] == pytest.approx(auroc_by_pairs(va_labels, np.array(vp)), abs=1e-9)
        assert row["train_auroc"] == pytest.approx(auroc_by_pairs(tr_labels, np.array(tp)), abs=1e-9)
        vp_pos = [p for p, y in zip(vp, va_labels) if y == 1]
        vp_neg = [p for p, y in zip(vp, va_labels) if y == 0]
        assert row["cohens_d"] == pytest.approx(cohens_d_by_hand(vp_pos, vp_neg), rel=1e-5)
        assert row["train_cohens_d"] == pytest.approx(cohens_d_by_hand(tp_pos, tp_neg), rel=1e-5)
        assert (row["n_train"], row["n_val"]) == (50, 30)

    flipped = evaluate(-vectors, tr_acts, tr_labels, va_acts, va_labels)
    for a, b in zip(rows, flipped):
        assert b["polarity"] == -a["polarity"]
        assert b["center_proj"] == pytest.approx(-a["center_proj"], abs=1e-5)
        assert b["val_auroc"] == pytest.approx(1 - a["val_auroc"], abs=1e-9)
        assert b["cohens_d"] == pytest.approx(-a["cohens_d"], rel=1e-6)


def test_evaluate_merges_extraction_info():
    acts, labels, _, _, _ = planted(n_pairs=30, d=16, n_layers=2, signal_layer=1)
    res = extract("probe", acts, labels)
    rows = evaluate(res.vectors_LD, acts, labels, acts, labels, info=res.info)
    assert rows[1]["coef_norm"] == res.info[1]["coef_norm"]
    assert rows[1]["probe_train_accuracy"] == res.info[1]["probe_train_accuracy"]
    assert rows[1]["info_norm"] == pytest.approx(rows[1]["norm"])  # colliding key kept, prefixed
    assert rows[1]["val_auroc"] > 0.9


# ---------------------------------------------------------------------------- split


def _split_data():
    """40 pair groups of 2-4 samples (both classes), 15 unpaired pos, 25 unpaired neg."""
    rng = np.random.default_rng(0)
    ids, pairs, labels = [], [], []
    for g in range(40):
        k = int(rng.integers(1, 3))
        for j in range(k):
            for lab in (1, 0):
                ids.append(f"g{g:02d}_{j}_{lab}")
                pairs.append(f"pair{g:02d}")
                labels.append(lab)
    for i in range(15):
        ids.append(f"upos{i:02d}"); pairs.append(None); labels.append(1)  # noqa: E702
    for i in range(25):
        ids.append(f"uneg{i:02d}"); pairs.append(None); labels.append(0)  # noqa: E702
    return ids, pairs, labels


def test_split_is_pair_aware_and_stratified():
    ids, pairs, labels = _split_data()
    train, val = split_train_val(ids, pairs, 0.2, seed=0, labels=labels)
    assert sorted(train + val) == sorted(ids) and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    pair_of = dict(zip(ids, pairs))
    label_of = dict(zip(ids, labels))
    train_groups = {pair_of[i] for i in train if pair_of[i] is not None}
    val_groups = {pair_of[i] for i in val if pair_of[i] is not None}
    assert not train_groups & val_groups  # no pair group straddles
    assert {label_of[i] for i in train} == {0, 1} and {label_of[i] for i in val} == {0, 1}
    # per stratum: round(0.2 * units) units in validation
    assert len(val_groups) == 8
    assert sum(1 for i in val if i.startswith("upos")) == 3
    assert sum(1 for i in val if i.startswith("uneg")) == 5


def test_split_is_deterministic_and_order_independent():
    ids, pairs, labels = _split_data()
    a = split_train_val(ids, pairs, 0.2, seed=0, labels=labels)
    assert a == split_train_val(ids, pairs, 0.2, seed=0, labels=labels)
    perm = np.random.default_rng(5).permutation(len(ids))
    b = split_train_val([ids[i] for i in perm], [pairs[i] for i in perm], 0.2, seed=0,
                        labels=[labels[i] for i in perm])
    assert a == b
    assert a != split_train_val(ids, pairs, 0.2, seed=1, labels=labels)


def test_split_small_and_unlabelled_cases():
    # unpaired, one sample of each class per side at minimum
    ids = ["a", "b", "c", "d"]
    train, val = split_train_val(ids, None, 0.2, labels=[1, 1, 0, 0])
    assert len(val) == 2 and {"a", "b"} & set(val) and {"c", "d"} & set(val)
    # without labels: still pair-aware, one stratum
    ids2, pairs2, _ = _split_data()
    train2, val2 = split_train_val(ids2, pairs2, 0.5, seed=3)
    pair_of = dict(zip(ids2, pairs2))
    assert not {pair_of[i] for i in train2 if pair_of[i]} & {pair_of[i] for i in val2 if pair_of[i]}
    # val_fraction 0: everything trains
    assert split_train_val(ids, None, 0.0) == (sorted(ids), [])


def test_split_rejects_bad_inputs():
    with pytest.raises(ValueError, match="unique"):
        split_train_val(["a", "a"], None)
    with pytest.raises(ValueError, match="pair_ids"):
        split_train_val(["a", "b"], ["p"])
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(["a", "b"], None, 1.0)
    with pytest.raises(ValueError, match="not among"):
        id_rows(["a", "b"], ["c"])


# ---------------------------------------------------------------------------- errors


def test_clear_errors():
    acts, labels, _, pairs, _ = planted(n_pairs=5, d=6)
    with pytest.raises(ValueError, match=r"\[sample, layer, d_model\]"):
        extract("mean_diff", acts[:, 0], labels)
    with pytest.raises(ValueError, match="one entry per sample"):
        extract("mean_diff", acts, labels[:-1])
    with pytest.raises(ValueError, match="both classes"):
        extract("probe", acts, np.ones_like(labels))
    with pytest.raises(ValueError, match="0/1"):
        extract("mean_diff", acts, labels * 2)
    with pytest.raises(ValueError, match="unknown extraction method"):
        extract("ica", acts, labels)
    bad = acts.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        extract("mean_diff", bad, labels)
    vec = extract("mean_diff", acts, labels).vectors_LD
    with pytest.raises(ValueError, match="vectors_LD"):
        evaluate(vec[0], acts, labels, acts, labels)
    with pytest.raises(ValueError, match="match vectors_LD"):
        evaluate(vec[:, :3], acts, labels, acts, labels)
    with pytest.raises(ValueError, match="match vectors_LD"):
        evaluate(vec, acts, labels, acts[:, :2], labels)
    with pytest.raises(ValueError, match="both classes"):
        evaluate(vec, acts, np.zeros_like(labels), acts, labels)


def test_accepts_torch_tensors():
    import torch

    acts, labels, _, _, _ = planted(n_pairs=10, d=8)
    a = extract("mean_diff", torch.from_numpy(acts), torch.from_numpy(labels))
    np.testing.assert_array_equal(a.vectors_LD, extract("mean_diff", acts, labels).vectors_LD)


def test_methods_tuple():
    assert METHODS == ("mean_diff", "probe", "gradient", "pca", "random")


def test_thread_limit_is_restored_and_val_may_be_omitted():
    import torch

    before = torch.get_num_threads()
    acts, labels, _, _, _ = planted(n_pairs=10, d=8, n_layers=2, signal_layer=1)
    res = extract("gradient", acts, labels)
    assert torch.get_num_threads() == before
    rows = evaluate(res.vectors_LD, acts, labels, None, None)
    assert rows[0]["n_val"] == 0 and math.isnan(rows[0]["val_accuracy"])
    with pytest.raises(ValueError, match="both val_acts and val_labels"):
        evaluate(res.vectors_LD, acts, labels, acts, None)
