"""analyses.organism_latents' pure parts: which latents it tests and how it reads a clamping run."""
from __future__ import annotations

import pytest

from analyses.organism_latents import clamping_deltas, most_b_specific


def _row(latent, tag, diff, nu=None, active=10):
    return {"latent": latent, "tag": tag, "dec_norm_diff": diff, "nu_error": nu, "n_active": active}


def test_b_only_latents_with_low_nu_come_first():
    rows = [_row(0, "b_only", 0.05, 0.1), _row(1, "b_only", 0.02, 0.9), _row(2, "b_only", 0.08, 0.2),
            _row(3, "shared", 0.5, 0.1)]
    assert most_b_specific(rows, 5) == ([0, 2], "b_only")  # latent 1's nu says shrinkage artefact


def test_without_b_only_latents_the_most_b_leaning_active_ones_are_taken():
    rows = [_row(0, "shared", 0.45), _row(1, "shared", 0.42, active=0), _row(2, "other", 0.30),
            _row(3, "shared", 0.44), _row(4, "a_only", 0.95)]
    assert most_b_specific(rows, 2) == ([2, 3], "lowest_dec_norm_diff")  # never-active latent 1 skipped


def test_clamping_deltas_read_the_zero_rows_of_both_sides():
    runs = [{"control": "baseline", "mode": None, "trait_mean": 50.0, "coherence_mean": 90.0},
            {"control": "chosen", "mode": "zero", "delta": -4.0, "coherence_delta": -1.0, "trait_mean": 46.0},
            {"control": "random", "mode": "zero", "delta": 0.5, "coherence_delta": 0.0, "trait_mean": 50.5},
            {"control": "chosen", "mode": "set", "delta": 9.0, "coherence_delta": -20.0, "trait_mean": 59.0}]
    got = clamping_deltas(runs)
    assert got == pytest.approx({"baseline_trait_mean": 50.0, "baseline_coherence_mean": 90.0,
                                 "zero_chosen_trait_delta": -4.0, "zero_chosen_coherence_delta": -1.0,
                                 "zero_chosen_trait_mean": 46.0, "zero_random_trait_delta": 0.5,
                                 "zero_random_coherence_delta": 0.0, "zero_random_trait_mean": 50.5})
