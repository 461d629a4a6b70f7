"""Issue 12.5 (transforms): prompt-grouped, polarity-stratified splits; the small-sample flag
of the evaluation table; the probe centres before normalising and picks C by grouped CV."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.vectors import evaluate, extract, split_train_val
from transforms.vectors.probe import PROBE_C, PROBE_C_GRID, row_normalize


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rollouts(n_pos: int = 9, n_neg: int = 15, rollouts: int = 4):
    """Unpaired prompts, several rollouts each: sample id ``prompt:rollout``."""
    ids, groups, labels = [], [], []
    for pol, n in (("pos", n_pos), ("neg", n_neg)):
        for p in range(n):
            for r in range(rollouts):
                ids.append(f"{pol}-{p}:{r}")
                groups.append(f"{pol}-{p}")
                labels.append(1 if pol == "pos" else 0)
    return ids, groups, labels


# ---------------------------------------------------------------------------- split


def test_split_keeps_every_rollout_of_a_prompt_on_one_side():
    ids, groups, labels = _rollouts()
    for seed in range(5):
        train, val = split_train_val(ids, None, 0.25, seed=seed, labels=labels, groups=groups)
        assert sorted(train + val) == sorted(ids)
        side = {}
        for sid in train:
            side.setdefault(sid.split(":")[0], set()).add("train")
        for sid in val:
            side.setdefault(sid.split(":")[0], set()).add("val")
        assert all(len(s) == 1 for s in side.values()), {k: s for k, s in side.items() if len(s) > 1}


def test_split_is_stratified_by_polarity_over_prompt_groups():
    ids, groups, labels = _rollouts(n_pos=9, n_neg=15, rollouts=4)
    train, val = split_train_val(ids, None, 0.2, seed=0, labels=labels, groups=groups)
    val_prompts = {sid.split(":")[0] for sid in val}
    # round(0.2 * 9) = 2 positive prompts, round(0.2 * 15) = 3 negative prompts, whole
    assert sum(p.startswith("pos") for p in val_prompts) == 2
    assert sum(p.startswith("neg") for p in val_prompts) == 3
    assert len(val) == 5 * 4
    # pair ids win over prompt groups: a pair group (both polarities) stays whole
    pairs = [f"pair{int(g.split('-')[1]) % 3}" if g.startswith("pos") else None for g in groups]
    train2, val2 = split_train_val(ids, pairs, 0.3, seed=1, labels=labels, groups=groups)
    for pid in {p for p in pairs if p}:
        members = {sid for sid, p in zip(ids, pairs) if p == pid}
        assert members <= set(train2) or members <= set(val2)


def test_split_with_groups_is_deterministic_and_order_independent():
    ids, groups, labels = _rollouts()
    a = split_train_val(ids, None, 0.25, seed=3, labels=labels, groups=groups)
    perm = np.random.default_rng(0).permutation(len(ids))
    b = split_train_val([ids[i] for i in perm], None, 0.25, seed=3, labels=[labels[i] for i in perm],
                        groups=[groups[i] for i in perm])
    assert a == b
    with pytest.raises(ValueError, match="groups"):
        split_train_val(ids, None, 0.25, groups=groups[:-1])


# ---------------------------------------------------------------------------- small-sample flag


def test_evaluation_flags_validation_metrics_on_fewer_than_10_samples():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((40, 2, 8)).astype(np.float32)
    labels = np.tile([1, 0], 20)
    acts[labels == 1, :, 0] += 2.0
    vec = extract("mean_diff", acts[:20], labels[:20]).vectors_LD
    small = evaluate(vec, acts[:20], labels[:20], acts[20:29], labels[20:29])
    enough = evaluate(vec, acts[:20], labels[:20], acts[20:30], labels[20:30])
    assert [r["small_sample"] for r in small] == [True, True]
    assert [r["small_sample"] for r in enough] == [False, False]
    assert evaluate(vec, acts[:20], labels[:20], None, None)[0]["small_sample"] is True


# ---------------------------------------------------------------------------- probe


def test_probe_centres_before_normalising_so_a_common_offset_does_not_change_it():
    """Real residual streams carry a large shared component (massive activations). Row
    normalisation of uncentred rows divides every sample by a norm dominated by it and
    shrinks the signal against the fixed L2 penalty: the direction then depends on where the
    origin happens to be. Centred first, a common offset cancels exactly."""
    rng = np.random.default_rng(0)
    n, d = 120, 32
    labels = np.tile([1, 0], n // 2)
    # anisotropic nuisance: one noisy direction correlated with the signal direction
    noise = rng.standard_normal((n, 1, d)) * np.r_[6.0, np.ones(d - 1)]
    acts = noise.astype(np.float32)
    acts[labels == 1, 0, 0] += 2.0
    acts[labels == 1, 0, 1] += 1.5
    offset = (_unit(rng.standard_normal(d)) * 200.0).astype(np.float32)
    plain = extract("probe", acts, labels, C=1.0)
    shifted = extract("probe", acts + offset, labels, C=1.0)
    cos = float(np.sum(plain.vectors_LD[0] * shifted.vectors_LD[0]))
    assert cos > 0.999, f"a common offset moved the probe direction (cos {cos:.3f})"
    assert plain.info[0]["C_selection"] == "fixed"


def _noise_with_near_duplicate_rollouts(n_groups: int = 24, rollouts: int = 5, d: int = 40, seed: int = 0):
    """No trait signal at all: each prompt's rollouts are near copies of one random point,
    and the label is constant within a prompt. Only memorising prompts "predicts" the
    label, which a split that separates rollouts of one prompt rewards."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, d)) * 3.0
    rows, labels, groups = [], [], []
    for g in range(n_groups):
        for _ in range(rollouts):
            rows.append(centres[g] + 0.05 * rng.standard_normal(d))
            labels.append(g % 2)
            groups.append(f"prompt{g}")
    return np.asarray(rows, dtype=np.float32)[:, None, :], np.asarray(labels), groups


def test_probe_chooses_C_by_grouped_cross_validation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    acts, labels, groups = _noise_with_near_duplicate_rollouts()
    res = extract("probe", acts, labels, groups=groups)
    info = res.info[0]
    assert info["C_selection"] == "grouped_cv" and info["cv_folds"] >= 3
    assert info["C"] in PROBE_C_GRID
    # grouped CV sees there is nothing to learn and regularises strongly (held-out log loss
    # of the weak penalties is worse than chance) ...
    assert info["C"] <= 0.1 and min(info["cv_log_loss"][3:]) > np.log(2)
    # ... where an ungrouped CV (rollouts of one prompt on both sides) is fooled into the
    # weakest penalty: the test would not tell the two apart otherwise.
    x = row_normalize(acts[:, 0] - acts[:, 0].mean(0))
    losses = {}
    for c in PROBE_C_GRID:
        folds = StratifiedKFold(5, shuffle=True, random_state=0).split(x, labels)
        losses[c] = np.mean([log_loss(labels[te], LogisticRegression(C=c, max_iter=5000).fit(x[tr], labels[tr])
                                      .predict_proba(x[te])[:, 1], labels=[0, 1]) for tr, te in folds])
    assert min(losses, key=losses.get) == max(PROBE_C_GRID)


def test_probe_with_too_few_groups_falls_back_to_the_fixed_C():
    acts, labels, groups = _noise_with_near_duplicate_rollouts(n_groups=4, rollouts=2)
    info = extract("probe", acts, labels, groups=groups).info[0]
    assert info["C"] == PROBE_C and info["C_selection"].startswith("fixed")


def test_probe_with_fewer_samples_than_dims_equals_the_full_space_fit():
    """The fit runs on the coordinates of the rows' span when N < d_model: the same
    direction as sklearn on the full centred, normalised rows."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    labels = np.tile([1, 0], 15)
    acts = (rng.standard_normal((30, 1, 200)) + 4.0).astype(np.float32)
    acts[labels == 1, 0, :3] += 1.0
    res = extract("probe", acts, labels, C=10.0)
    x = row_normalize(acts[:, 0] - (acts[labels == 1, 0].mean(0) + acts[labels == 0, 0].mean(0)) / 2)
    coef = LogisticRegression(C=10.0, max_iter=5000, tol=1e-10).fit(x, labels).coef_[0]
    assert float(np.dot(res.vectors_LD[0], _unit(coef))) > 0.9999
    assert res.info[0]["coef_norm"] == pytest.approx(np.linalg.norm(coef), rel=1e-3)


def test_probe_cv_centres_each_fold_on_its_training_rows_only():
    """The class midpoint uses labels: computed from every row, the held-out fold's labels
    would shape the features C is chosen on. Independent computation: sklearn per fold."""
    from sklearn.linear_model import LogisticRegression

    from transforms.vectors import PROBE_C_GRID, cv_folds, probe

    rng = np.random.default_rng(3)
    n_groups, per, d = 12, 3, 40
    labels = np.repeat(np.arange(n_groups) % 2, per)
    groups = np.repeat([f"p{i}" for i in range(n_groups)], per)
    acts = rng.normal(size=(n_groups * per, 1, d)) + 5.0  # a common offset, so the centre matters
    acts[labels == 1, 0, 0] += 0.8
    _, info = probe(acts, labels, seed=0, groups=list(groups))
    expected = np.zeros(len(PROBE_C_GRID))
    x_all = acts[:, 0].astype(np.float64)
    for train, test in cv_folds(labels, list(groups), 0):
        centre = (x_all[train][labels[train] == 1].mean(0) + x_all[train][labels[train] == 0].mean(0)) / 2
        x = x_all - centre
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for k, c in enumerate(PROBE_C_GRID):
            clf = LogisticRegression(C=c, max_iter=5000).fit(x[train], labels[train])
            p = clf.predict_proba(x[test])[:, 1]
            expected[k] -= np.sum(labels[test] * np.log(p) + (1 - labels[test]) * np.log(1 - p))
    expected /= len(labels)
    assert info[0]["C_selection"] == "grouped_cv"
    np.testing.assert_allclose(info[0]["cv_log_loss"], expected, rtol=2e-3)
