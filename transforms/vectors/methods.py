"""Trait-vector extraction methods: pooled activations in, one vector per layer out.

Pure functions (numpy / scikit-learn, no store). Every method takes the whole
``acts_NLD`` array (float32 ``[sample, layer, d_model]``) and ``labels_N`` (1 = positive
trait, 0 = negative) and returns ``(vectors_LD, info)``: a float32 ``[layer, d_model]``
array and one JSON-friendly dict per layer. Use :func:`transforms.vectors.extract`, which
validates inputs, dispatches by name and orients every vector toward the trait; the
functions here are its building blocks.

Definitions (all layers at once, float32 arithmetic, class means accumulated in float64):

- ``mean_diff``: ``mean(pos) - mean(neg)``. Not normalised: its norm is meaningful (the
  distance between class centroids, in activation units).
- ``probe``: per layer, L2 logistic regression on CENTRED (class-midpoint), then
  row-normalised activations, ``C`` chosen by grouped cross-validation over prompt groups
  (or given); unit ``coef_ / ||coef_||``. Defined in :mod:`transforms.vectors.probe`.
- ``gradient``: per layer, a unit direction ``v`` maximising the ridge-regularised
  standardised separation of the projections ``p_i = x_i . v``::

      J(v) = (mean_pos(p) - mean_neg(p)) / sqrt(s2_pooled(p) + ridge * tau)

  with ``s2_pooled`` the pooled within-class variance of the projections
  (``(sum_pos (p - mean_pos)^2 + sum_neg (p - mean_neg)^2) / (N - 2)``) and ``tau =
  trace(S_w) / d_model`` the average within-class variance per dimension (the variance of
  a random unit direction's projection). Equivalently ``J = dmu . v / sqrt(v' (S_w + ridge
  tau I) v)``: Fisher's criterion with the within-class covariance shrunk toward ``tau I``
  (``ridge=1`` = shrinkage intensity 1/2), whose unique maximiser is ``(S_w + ridge tau
  I)^-1 dmu``: computed in that closed form (float64, per layer; an N x N solve by the
  Woodbury identity when N < d_model), not by ascent. The ridge keeps the objective
  bounded when N < d_model (plain Fisher is then infinite on directions with zero
  within-class spread). Until issue 14 this was an Adam ascent from a seeded start (300
  steps at most); on the demo's SmolLM2 activations the two agree to cosine >= 0.9999 on
  every layer (see ``tests/test_vectors.py``). Not seeded. ``info``: ``objective`` (``J`` of
  the result), ``objective_mean_diff`` (``J`` of the mean-difference direction, for
  reference), ``ridge``.
- ``pca``: for each pair group holding both classes, ``delta = mean(pos of the group) -
  mean(neg of the group)``; stack ``[delta; -delta]`` (``[2G, d_model]``) and take the first
  right singular vector (uncentred PCA; the +-stacking makes the centred and uncentred
  versions equal and the sign arbitrary), signed to point from neg to pos (positive dot
  with ``mean_diff``). Unit norm. Computed from ``delta`` alone (same right singular
  vectors, since the stack's Gram matrix is ``2 delta' delta``), see
  :func:`top_right_singular`. Groups with a single class are skipped; no usable group is
  a ``ValueError``. ``info``: ``n_pairs``, ``n_pairs_skipped``, ``explained_variance``
  (first singular value squared over the sum of squares).
- ``random``: seeded Gaussian directions (``numpy.random.default_rng(seed)``, one
  ``[L, d_model]`` draw: the same seed gives the same directions whatever the data), each
  scaled to the norm of that layer's ``mean_diff`` (always available, since labels are),
  so a steering sweep at a given coefficient perturbs as much as ``mean_diff`` does.

Orientation: :func:`orient` flips any vector whose training polarity is negative
(``(mean(pos) - mean(neg)) . v < 0``), so a stored vector always points toward the trait;
this applies to every method, ``random`` included (its baseline is then "a direction whose
sign was fit on train", the right null for the signed methods).
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from transforms.stats import unit_rows

logger = logging.getLogger(__name__)

Info = list[dict[str, Any]]

GRADIENT_RIDGE = 1.0


@contextmanager
def limit_threads(threads: int | None, *, torch_too: bool = False) -> Iterator[None]:
    """Run the body with at most ``threads`` BLAS / OpenMP / torch intra-op threads
    (restored afterwards; ``None`` = leave the process settings alone).

    The per-layer problems here are small (N x d_model with N in the hundreds), where
    threading gains little, and on a shared, oversubscribed CPU threaded BLAS collapses:
    a batched SVD of 30 x [200 x 576] took 60 s with 2 OpenBLAS threads under load and
    1.2 s with 1. Changing torch's thread count is process-wide for the duration of the
    call: do not run torch work in other Python threads meanwhile. torch's setting is
    changed when torch is already imported or ``torch_too`` is set."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    from threadpoolctl import threadpool_limits

    if torch_too:
        importlib.import_module("torch")
    torch = sys.modules.get("torch")  # only touch torch if something already imported it
    before = torch.get_num_threads() if torch is not None else None
    try:
        with threadpool_limits(limits=threads):
            if torch is not None:
                torch.set_num_threads(threads)
            yield
    finally:
        if torch is not None and before is not None:
            torch.set_num_threads(before)


def as_acts(acts: Any, *, what: str = "acts_NLD", allow_empty: bool = False) -> np.ndarray:
    """Validate ``[sample, layer, d_model]`` activations (numpy or CPU torch) -> float32."""
    if hasattr(acts, "detach"):  # torch.Tensor
        acts = acts.detach().cpu().float().numpy()
    arr = np.asarray(acts)
    if arr.ndim != 3:
        raise ValueError(f"{what} must be [sample, layer, d_model] (3-D), got shape {arr.shape}")
    if arr.shape[1] == 0 or arr.shape[2] == 0 or (arr.shape[0] == 0 and not allow_empty):
        raise ValueError(f"{what} has an empty axis: shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or inf")
    return arr


def as_labels(labels: Any, n: int, *, what: str = "labels") -> np.ndarray:
    """Validate per-sample labels (1 = positive, 0 = negative; bools accepted) -> int8."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{what} must be 1-D with one entry per sample ({n}), got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = sorted({str(v) for v in arr[~np.isin(arr, (0, 1))]})[:5]
        raise ValueError(f"{what} must be 0/1 (1 = positive trait), got values {bad}")
    return arr.astype(np.int8)


def pair_key(pid: Any) -> str | None:
    """A pair id as a string, or ``None`` for an unpaired sample (``None`` or a float NaN,
    as a missing value read from a table)."""
    if pid is None or (isinstance(pid, float) and pid != pid):
        return None
    return str(pid)


def class_means(acts_NLD: np.ndarray, labels_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean_pos_LD, mean_neg_LD)`` in float64 (accumulated in float64)."""
    pos = labels_N == 1
    return (
        acts_NLD[pos].mean(axis=0, dtype=np.float64),
        acts_NLD[~pos].mean(axis=0, dtype=np.float64),
    )


def mean_diff(acts_NLD: np.ndarray, labels_N: np.ndarray) -> tuple[np.ndarray, Info]:
    """``mean(pos) - mean(neg)`` per layer, unnormalised."""
    mu_pos, mu_neg = class_means(acts_NLD, labels_N)
    vectors = (mu_pos - mu_neg).astype(np.float32)
    return vectors, [{} for _ in range(vectors.shape[0])]


def gradient(acts_NLD: np.ndarray, labels_N: np.ndarray, *, ridge: float = GRADIENT_RIDGE) -> tuple[np.ndarray, Info]:
    """The maximiser of the ridge-regularised standardised separation, in closed form:
    ``unit((S_w + ridge tau I)^-1 dmu)`` per layer (shrinkage LDA; module docstring)."""
    if ridge <= 0:
        raise ValueError(f"gradient: need ridge > 0, got {ridge}")
    n, n_layers, d = acts_NLD.shape
    if n < 3:
        raise ValueError(f"gradient: need at least 3 samples for a pooled variance, got {n}")
    mu_pos, mu_neg = class_means(acts_NLD, labels_N)
    pos = (labels_N == 1)[:, None]
    vectors = np.zeros((n_layers, d), dtype=np.float32)
    info: Info = []
    for layer in range(n_layers):
        x = acts_NLD[:, layer, :].astype(np.float64)
        dev = x - np.where(pos, mu_pos[layer], mu_neg[layer])  # within-class deviations
        dmu = mu_pos[layer] - mu_neg[layer]
        tau = float((dev * dev).sum()) / (n - 2) / d
        if tau <= 0:
            raise ValueError(f"gradient: layer {layer} has no within-class variance (every sample equals its "
                             "class mean): the objective is unbounded there")
        # scaled so that z'z = S_w / tau and m = dmu / sqrt(tau): solve (z'z + ridge I) w = m
        z = dev / math.sqrt(tau * (n - 2))
        m = dmu / math.sqrt(tau)
        if n < d:  # Woodbury: an n x n system instead of d x d
            w = (m - z.T @ np.linalg.solve(z @ z.T + ridge * np.eye(n), z @ m)) / ridge
        else:
            w = np.linalg.solve(z.T @ z + ridge * np.eye(d), m)
        v = unit_rows(w)

        def objective(u: np.ndarray) -> float:
            u = unit_rows(u)
            return float(m @ u / math.sqrt(float((z @ u) @ (z @ u)) + ridge))

        vectors[layer] = v
        info.append({"objective": objective(w), "objective_mean_diff": objective(dmu), "ridge": float(ridge)})
    return vectors, info


def pair_deltas(
    acts_NLD: np.ndarray, labels_N: np.ndarray, pair_ids: Sequence[str | None] | None
) -> tuple[np.ndarray, int]:
    """``(delta_GLD, n_skipped)``: per pair group (sorted by pair id) holding both classes,
    ``mean(pos of the group) - mean(neg of the group)`` (float64). Samples without a pair id
    (:func:`pair_key`) are ignored; groups with one class only are skipped and counted."""
    if pair_ids is None:
        raise ValueError("pca needs pair_ids (one pair id per sample, None for unpaired samples)")
    if len(pair_ids) != acts_NLD.shape[0]:
        raise ValueError(f"pair_ids has {len(pair_ids)} entries for {acts_NLD.shape[0]} samples")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, pid in enumerate(pair_ids):
        key = pair_key(pid)
        if key is not None:
            groups[key].append(i)
    deltas, skipped = [], 0
    for pid in sorted(groups):
        rows = np.asarray(groups[pid])
        lab = labels_N[rows]
        if lab.min() == lab.max():
            skipped += 1
            continue
        pos_rows, neg_rows = rows[lab == 1], rows[lab == 0]
        deltas.append(
            acts_NLD[pos_rows].mean(axis=0, dtype=np.float64)
            - acts_NLD[neg_rows].mean(axis=0, dtype=np.float64)
        )
    if not deltas:
        raise ValueError(
            "pca needs at least one pair group holding both a positive and a negative sample "
            f"({len(groups)} pair groups, none usable)"
        )
    return np.stack(deltas), skipped


def top_right_singular(x_LMD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(v_LD, s2_LK)``: per layer the first right singular vector of ``x`` (``[M, d]``,
    arbitrary sign) and the squared singular values, descending. Computed in float64 from
    the eigendecomposition of the smaller Gram matrix (``x x'`` when M <= d, then ``v = x' u
    / ||x' u||``; else ``x' x``): the same vector as ``numpy.linalg.svd``, several times
    faster for M = 200, d = 4096."""
    x = np.asarray(x_LMD, dtype=np.float64)
    if x.shape[1] <= x.shape[2]:
        lam, u = np.linalg.eigh(np.matmul(x, x.transpose(0, 2, 1)))
        v = np.matmul(x.transpose(0, 2, 1), u[:, :, -1:])[:, :, 0]
        v = unit_rows(v)
    else:
        lam, vecs = np.linalg.eigh(np.matmul(x.transpose(0, 2, 1), x))
        v = vecs[:, :, -1]
    return v, np.clip(lam[:, ::-1], 0.0, None)


def pca(
    acts_NLD: np.ndarray, labels_N: np.ndarray, pair_ids: Sequence[str | None] | None
) -> tuple[np.ndarray, Info]:
    """First right singular vector of ``[delta; -delta]`` per layer, signed neg -> pos."""
    delta_GLD, skipped = pair_deltas(acts_NLD, labels_N, pair_ids)
    v_LD, s2_LK = top_right_singular(np.ascontiguousarray(delta_GLD.transpose(1, 0, 2)))
    vectors = v_LD.astype(np.float32)
    mu_pos, mu_neg = class_means(acts_NLD, labels_N)
    sign = np.where(np.einsum("ld,ld->l", vectors.astype(np.float64), mu_pos - mu_neg) < 0, -1.0, 1.0)
    vectors *= sign[:, None].astype(np.float32)
    total = s2_LK.sum(axis=1)
    explained = s2_LK[:, 0] / np.where(total > 0, total, 1.0)
    info = [
        {"n_pairs": int(delta_GLD.shape[0]), "n_pairs_skipped": int(skipped),
         "explained_variance": float(e)}
        for e in explained
    ]
    return vectors, info


def random(acts_NLD: np.ndarray, labels_N: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, Info]:
    """Seeded Gaussian directions scaled to each layer's ``mean_diff`` norm."""
    _, n_layers, d = acts_NLD.shape
    directions = unit_rows(np.random.default_rng(seed).standard_normal((n_layers, d)))
    mu_pos, mu_neg = class_means(acts_NLD, labels_N)
    scale = np.linalg.norm(mu_pos - mu_neg, axis=1)
    vectors = (directions * scale[:, None]).astype(np.float32)
    return vectors, [{"scaled_to": "mean_diff_norm"} for _ in range(n_layers)]


def orient(vectors_LD: np.ndarray, mean_diff_LD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(oriented_LD, flipped_L)``: rows with ``mean_diff . v < 0`` (``mean_diff =
    mean(pos) - mean(neg)`` of the training data) negated, so every vector has training
    polarity +1: the positive class projects above the negative one on average."""
    flipped = np.einsum("ld,ld->l", vectors_LD.astype(np.float64), mean_diff_LD.astype(np.float64)) < 0
    oriented = np.where(flipped[:, None], -vectors_LD, vectors_LD).astype(np.float32)
    return oriented, flipped


def cosine_rows(a_LD: np.ndarray, b_LD: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (0 where a row is all zeros)."""
    return np.einsum("ld,ld->l", unit_rows(a_LD.astype(np.float64)), unit_rows(b_LD.astype(np.float64)))
