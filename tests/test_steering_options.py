"""Issue 14: the steering search options are a typed frozen dataclass, and the dataset names
of the steering-side stages come from :mod:`builders.shared.names`. Both must leave version
ids as they were: the manifest params and names are compared with what the old code wrote
(the dict and f-strings below are copied from it)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from builders.shared import names
from builders.stages.steering import SteeringSearchOptions


def _old_opts(mode, layers, coefficients, positions, steps, threshold, start_scale, momentum, direction):
    # the dict builders/steering.py built before issue 14
    return {"mode": mode, "layers": layers, "coefficients": [float(c) for c in coefficients] if mode == "grid" else [],
            "positions": positions, "steps": steps if mode == "adaptive" else None, "threshold": threshold,
            "start_scale": start_scale, "momentum": momentum, "direction": direction}


@pytest.mark.parametrize("mode", ["adaptive", "grid", "baseline", "ablate"])
def test_options_params_are_the_old_dict(mode):
    layers, coefficients = [6, 8, 10], [2, 3.5]
    opts = SteeringSearchOptions(mode=mode, layers=tuple(layers), positions="generated",
                                 coefficients=tuple(float(c) for c in coefficients), steps=3, threshold=70.0,
                                 start_scale=0.7, momentum=0.5, direction=-1)
    old = _old_opts(mode, layers, coefficients, "generated", 3, 70.0, 0.7, 0.5, -1)
    assert opts.params() == old
    assert list(opts.params()) == list(old)  # same key order: the manifest's JSON is the same
    assert all(type(a) is type(b) for a, b in zip(opts.params().values(), old.values()))


def test_options_are_frozen():
    opts = SteeringSearchOptions(mode="grid", layers=(1,), coefficients=(2.0,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.mode = "adaptive"  # type: ignore[misc]


def test_names_are_the_old_strings():
    exp, app = "demo", "instruct"
    vectors = f"vectors-{exp}-{app}-optimism_instruction-response__-residual"
    assert names.vectors(exp, app, "optimism_instruction", "response__", "residual") == vectors
    assert names.vectors(exp, "bf16", "opt", "response__", "residual", replay_from="fp32") == \
        f"vectors-{exp}-bf16-opt-response__-residual-replay_fp32"
    short = vectors.removeprefix(f"vectors-{exp}-")
    old_steering = f"steering-{exp}-{app}-{short}-mean_diff-adaptive"
    assert names.steering(exp, app, vectors, "mean_diff", "adaptive") == old_steering
    assert names.steering(exp, app, short, "mean_diff", "adaptive") == old_steering  # as analyses.finding passes it
    assert names.combinations(exp, app, names.short_vectors_name(exp, vectors + "@abc") + "-probe", short + "-x") == \
        f"combinations-{exp}-{app}-{short}-probe-{short}-x"
    assert names.precision_analysis("precision", "optimism", "fp32") == "analysis-precision-precision-optimism-replay_fp32"


def test_precision_cosine_rows_match_the_old_formula():
    from analyses.precision_tables import cosine_rows

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 64)), rng.normal(size=(4, 64))
    a[2] = 0.0  # no direction: no cosine
    b[3] = a[3] * 2.0  # same direction: clipped to 1
    rows = cosine_rows("v", "p", "m", [0, 1, 2, 3], a, b)
    for i, row in enumerate(rows):
        na, nb = float(np.linalg.norm(a[i])), float(np.linalg.norm(b[i]))
        old = float(a[i] @ b[i] / (na * nb)) if na > 0 and nb > 0 else None
        if old is None:
            assert row["cosine"] is None
        else:
            assert row["cosine"] == pytest.approx(max(-1.0, min(1.0, old)), abs=1e-12)
            assert -1.0 <= row["cosine"] <= 1.0 and not math.isnan(row["cosine"])
        assert row["norm"] == na and row["reference_norm"] == nb
