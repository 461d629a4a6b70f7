"""Paired feature statistics against independent loops in plain numpy, on planted effects and nulls."""
from __future__ import annotations

import math

import numpy as np
import pytest

from transforms.diffing import (
    benjamini_hochberg,
    mean_difference_direction,
    paired_feature_stats,
    sign_flips,
    split_pairs,
)


def _reference(pos, neg, signs):
    """Feature by feature, permutation by permutation: the definitions written out."""
    out = []
    for k in range(pos.shape[1]):
        d = [float(pos[p, k] - neg[p, k]) for p in range(pos.shape[0])]
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
        same = sum(1 for x in d if x != 0 and (x > 0) == (mean > 0)) / len(d)
        observed = abs(sum(d))
        count = 0
        for row in signs:
            null = abs(sum(int(s) * x for s, x in zip(row, d)))
            count += null >= observed - 1e-9 * sum(abs(x) for x in d)
        out.append((mean, mean / sd, same, (count + 1) / (len(signs) + 1)))
    return out


def test_matches_loop_reference():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    pos[:, 1] += 0.8
    stats = paired_feature_stats(pos, neg, n_permutations=300, seed=7)
    ref = _reference(pos, neg, sign_flips(300, 12, 7))
    for s, (mean, d, same, p) in zip(stats, ref):
        assert s.mean_diff == pytest.approx(mean) and s.effect_size == pytest.approx(d)
        assert s.sign_consistency == pytest.approx(same) and s.p_value == pytest.approx(p)
        assert s.n_pairs == 12
    assert [s.feature for s in stats] == list(range(5))


def test_effect_size_is_cohens_d_paired():
    from transforms.stats import cohens_d_paired

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=(9, 3)), rng.normal(size=(9, 3))
    stats = paired_feature_stats(pos, neg, n_permutations=10)
    for k, s in enumerate(stats):
        assert s.effect_size == pytest.approx(cohens_d_paired(neg[:, k], pos[:, k]))


def test_planted_effect_found_and_nulls_uniform():
    rng = np.random.default_rng(11)
    n_pairs, n_features = 30, 400
    neg = rng.normal(size=(n_pairs, n_features))
    pos = neg + rng.normal(size=(n_pairs, n_features))  # noise on the pos side
    pos[:, 0] = neg[:, 0] + 1.0 + 0.1 * rng.normal(size=n_pairs)  # +1 in every pair
    # the p floor 1/(n+1) bounds q by K/(n+1): 400 features need n >> 400/0.05 permutations
    stats = paired_feature_stats(pos, neg, n_permutations=20_000, seed=1)
    assert stats[0].p_value < 0.01 and stats[0].sign_consistency == 1.0 and stats[0].q_value < 0.05
    assert stats[0].mean_diff == pytest.approx(1.0, abs=0.1)
    null_p = np.array([s.p_value for s in stats[1:]])
    assert (null_p < 0.05).mean() < 0.15 and 0.35 < null_p.mean() < 0.65
    assert (np.array([s.q_value for s in stats[1:]]) > 0.05).mean() > 0.95


def test_p_value_has_plus_one_floor_and_constant_feature():
    pos = np.array([[2.0, 1.0], [3.0, 1.0], [4.0, 1.0]])
    neg = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    s = paired_feature_stats(pos, neg, n_permutations=99, seed=0)
    # 3 pairs: only the all-plus and all-minus flips reach the observed |sum|, p >= 1/100
    assert s[0].p_value >= 1 / 100 and s[0].sign_consistency == 1.0
    assert s[1].p_value == 1.0 and math.isnan(s[1].effect_size) and s[1].mean_diff == 0.0


def test_benjamini_hochberg_hand_example():
    p = [0.01, 0.04, 0.03, 0.20, float("nan")]
    # m = 4 (NaN ignored); sorted .01 .03 .04 .20 -> .04 .06 .0533 .20; min from the right
    expected = [0.04, 0.04 * 4 / 3, 0.03 * 4 / 2, 0.20]
    q = benjamini_hochberg(p)
    assert q[:4] == pytest.approx([expected[0], expected[1], expected[1], expected[3]])
    assert math.isnan(q[4])
    assert benjamini_hochberg([0.9, 0.95]).tolist() == pytest.approx([0.95, 0.95])


def test_split_pairs_aligns_by_pair_id():
    values = np.arange(8, dtype=float).reshape(4, 2)
    paired = split_pairs(["b", "a", "a", "b"], ["neg", "pos", "neg", "pos"], values)
    assert paired.pair_ids == ["a", "b"]
    assert paired.pos_PK.tolist() == [[2, 3], [6, 7]] and paired.neg_PK.tolist() == [[4, 5], [0, 1]]
    with pytest.raises(ValueError, match="pair 'a'"):
        split_pairs(["a", "a"], ["pos", "pos"], values[:2])


def test_mean_difference_direction():
    rng = np.random.default_rng(5)
    pos, neg = rng.normal(size=(10, 4)), rng.normal(size=(7, 4))
    expected = pos.mean(0) - neg.mean(0)
    np.testing.assert_allclose(mean_difference_direction(pos, neg), expected / np.linalg.norm(expected))
    with pytest.raises(ValueError):
        mean_difference_direction(pos, pos)


def test_bad_inputs():
    with pytest.raises(ValueError, match="pairs, features"):
        paired_feature_stats(np.zeros((3, 2)), np.zeros((3, 3)))
    bad = np.zeros((3, 2))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="feature 1"):
        paired_feature_stats(bad, np.zeros((3, 2)))
