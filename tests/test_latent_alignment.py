"""latent_alignment: cosines and span fractions against numpy, a planted alignment found, a null not."""
from __future__ import annotations

import numpy as np
import pytest

from transforms.dictionaries import latent_alignment, span_fraction


def test_span_fraction_is_the_squared_projection_share():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3, 20))
    v = rng.standard_normal(20)
    q, _ = np.linalg.qr(rows.T)  # an orthonormal basis of the span, independently
    want = float(np.sum((q.T @ v) ** 2) / (v @ v))
    assert span_fraction(rows, v) == pytest.approx(want, rel=1e-10)
    assert span_fraction(rows, 2 * rows[0] - rows[2]) == pytest.approx(1.0, abs=1e-12)


def test_planted_alignment_is_found_and_a_random_vector_is_not():
    rng = np.random.default_rng(1)
    decoder = rng.standard_normal((200, 64))
    v = 1.5 * decoder[3] - decoder[11] + 0.5 * decoder[40] + 0.1 * rng.standard_normal(64)
    result = latent_alignment(decoder, v, [3, 11, 40], range(200), n_random=300, seed=0)
    assert result.span_fraction > 0.99 and result.p_value == pytest.approx(1 / 301)
    assert result.null_span_mean < 0.2
    cos = decoder[[3, 11, 40]] @ v / (np.linalg.norm(decoder[[3, 11, 40]], axis=1) * np.linalg.norm(v))
    np.testing.assert_allclose(result.cosines, cos, rtol=1e-10)
    assert result.cosines[1] < 0 < result.cosines[0]
    assert result.mean_abs_cosine > result.random_direction_abs_cosine_p95 > result.pool_mean_abs_cosine * 0.5
    null_p = [latent_alignment(decoder, rng.standard_normal(64), [3, 11, 40], range(200), n_random=200, seed=s).p_value
              for s in range(20)]
    assert np.mean(np.array(null_p) < 0.05) <= 0.2 and np.mean(null_p) > 0.3


def test_bad_inputs():
    decoder = np.eye(8)
    with pytest.raises(ValueError, match="widths differ"):
        latent_alignment(decoder, np.ones(7), [0], range(8))
    with pytest.raises(ValueError, match="out of range 0..7"):
        latent_alignment(decoder, np.ones(8), [8], range(8))
    with pytest.raises(ValueError, match="pool"):
        latent_alignment(decoder, np.ones(8), [0, 1], [0, 1, 2])
