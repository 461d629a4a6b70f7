"""The ``probe`` extraction method: L2 logistic regression per layer on centred,
row-normalised activations, its penalty chosen by grouped cross-validation.

Pure function (numpy / scikit-learn, no store); use it through
:func:`transforms.vectors.extract`, which validates inputs and orients the result.

Per layer:

1. Centre: subtract the midpoint of the two class means (``(mean_pos + mean_neg) / 2``).
   Residual streams carry a large component shared by every sample (massive activations,
   the mean direction); row-normalising uncentred rows divides every sample by a norm
   dominated by it, which shrinks the trait signal against the fixed L2 penalty and makes
   the direction depend on where the origin is. The midpoint rather than the mean of all
   rows, so class imbalance does not move the centre (the same centre
   :mod:`transforms.vectors.evaluation` thresholds at).
2. Row-normalise: each centred sample divided by its L2 norm, so the fit is invariant to
   the model's activation scale and ``C`` means the same thing for every model and layer.
3. Fit ``LogisticRegression(penalty L2, solver lbfgs, max_iter=5000, fit_intercept=True,
   random_state=seed)``; vector = ``coef_ / ||coef_||`` (unit). When N < d_model the fit
   runs, exactly, on the coordinates of the rows' span (:func:`span_coordinates`).

``C``: given explicitly, it is used as is (``C_selection = "fixed"``). Otherwise it is
chosen per layer from :data:`PROBE_C_GRID` by the lowest pooled out-of-fold log loss of a
``StratifiedGroupKFold`` over ``groups`` (prompt groups: a pair id, or the prompt id for
unpaired rollouts). Grouping matters: rollouts of one prompt are near copies, and an
ungrouped split rewards memorising prompts, i.e. the weakest penalty. Folds =
``min(5, groups holding positives, groups holding negatives)``; with fewer than 3 (tiny
sets) there is nothing to cross-validate on and ``C = PROBE_C = 1`` (sklearn's default, a
moderate penalty for unit-norm rows that keeps coefficients finite when N < d_model) is
used, ``C_selection = "fixed: too few groups for cross-validation"``. Ties go to the
smaller ``C``.

``info`` per layer: ``C``, ``C_selection``, ``cv_folds``, ``cv_log_loss`` (one per grid
value, or ``None``), ``coef_norm`` (raw ``||coef_||``), ``intercept``,
``probe_train_accuracy`` (the fitted classifier on its centred, normalised training rows),
``n_iter``, ``converged``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PROBE_C = 1.0
PROBE_C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
PROBE_MAX_ITER = 5000
PROBE_CV_FOLDS = 5
# Cross-validation fits stop early: with N < d_model the data are separable and lbfgs
# crawls toward the large-C optimum for thousands of iterations (50 s for 30 layers of
# N=40 on one core); the held-out loss has settled long before.
PROBE_CV_MAX_ITER = 200
PROBE_MIN_FOLDS = 3
TOO_FEW = "fixed: too few groups for cross-validation"


def row_normalize(x_ND: np.ndarray) -> np.ndarray:
    """Each sample divided by its L2 norm, computed in float64 (all-zero rows stay zero)."""
    x = np.asarray(x_ND, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def class_midpoint(x_ND: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
    """The midpoint of the two class means (float64)."""
    x = np.asarray(x_ND, dtype=np.float64)
    pos = labels_N == 1
    return (x[pos].mean(axis=0) + x[~pos].mean(axis=0)) / 2


def centred_rows(x_ND: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
    """``x`` minus the midpoint of its two class means, then row-normalised (float64)."""
    return row_normalize(np.asarray(x_ND, dtype=np.float64) - class_midpoint(x_ND, labels_N))


def span_coordinates(x_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(z_NR, basis_RD)`` with ``x = z @ basis`` and orthonormal basis rows spanning the
    rows of ``x``, when N < d_model (else ``(x, None)``). An L2-penalised linear model's
    coefficients lie in the span of its training rows (representer theorem) and ``||basis'
    a|| = ||a||``, so fitting on ``z`` and mapping back with ``basis`` is the same fit, on
    r <= N columns instead of d_model (every cross-validation fold's rows lie in the same
    span). Singular values below 1e-10 of the largest are dropped."""
    n, d = x_ND.shape
    if n >= d:
        return x_ND, None
    u, s, vt = np.linalg.svd(x_ND, full_matrices=False)
    r = int(np.sum(s > s[0] * 1e-10)) if s.size and s[0] > 0 else 0
    r = max(r, 1)
    return u[:, :r] * s[:r], vt[:r]


def cv_folds(labels_N: np.ndarray, groups: Sequence[Any] | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified folds ``[(train_rows, test_rows)]``, or ``[]`` when there are too
    few groups of either class (or a training fold would lack a class). ``groups=None``:
    every sample is its own group."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(labels_N)
    keys = [f"sample:{i}" if groups is None or groups[i] is None else str(groups[i]) for i in range(n)]
    pos_groups = {k for k, y in zip(keys, labels_N) if y == 1}
    neg_groups = {k for k, y in zip(keys, labels_N) if y == 0}
    n_splits = min(PROBE_CV_FOLDS, len(pos_groups), len(neg_groups))
    if n_splits < PROBE_MIN_FOLDS:
        return []
    codes = np.unique(np.asarray(keys), return_inverse=True)[1]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(n), labels_N, codes))
    if any(len(set(labels_N[tr].tolist())) < 2 for tr, _ in folds):
        return []
    return folds


def _choose_c(raw_ND: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], seed: int,
              max_iter: int) -> tuple[float, list[float]]:
    """The grid value with the lowest pooled out-of-fold log loss, and every value's loss.
    Each fold centres on its own training rows' class midpoint (the centre uses labels: a
    centre from every row would let held-out labels shape the features)."""
    from sklearn.linear_model import LogisticRegression

    total = np.zeros(len(PROBE_C_GRID))
    for train, test in folds:
        x, _ = span_coordinates(row_normalize(np.asarray(raw_ND, dtype=np.float64)
                                              - class_midpoint(raw_ND[train], y[train])))
        # ascending C with warm starts: each fit starts from the more penalised solution
        clf = LogisticRegression(max_iter=PROBE_CV_MAX_ITER, solver="lbfgs", random_state=seed, warm_start=True)
        for k, c in enumerate(PROBE_C_GRID):
            clf.set_params(C=c).fit(x[train], y[train])
            p = np.clip(clf.predict_proba(x[test])[:, 1], 1e-12, 1 - 1e-12)
            total[k] -= float(np.sum(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p)))
    losses = (total / sum(len(te) for _, te in folds)).tolist()
    return PROBE_C_GRID[int(np.argmin(losses))], losses  # argmin: the first, smallest C on ties


def probe(
    acts_NLD: np.ndarray,
    labels_N: np.ndarray,
    *,
    seed: int = 0,
    C: float | None = None,
    max_iter: int = PROBE_MAX_ITER,
    groups: Sequence[Any] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per layer, logistic regression on centred, row-normalised activations; unit ``coef_``
    (module docstring). ``groups``: one prompt group per sample for the cross-validation."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n, n_layers, d = acts_NLD.shape
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} samples")
    y = np.asarray(labels_N)
    folds = cv_folds(y, groups, seed) if C is None else []
    if C is None and not folds:
        logger.info("probe: too few prompt groups to cross-validate C; using C=%g", PROBE_C)
    vectors = np.zeros((n_layers, d), dtype=np.float32)
    info: list[dict[str, Any]] = []
    for layer in range(n_layers):
        x, basis = span_coordinates(centred_rows(acts_NLD[:, layer], y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if C is not None:
                c, selection, losses = float(C), "fixed", None
            elif folds:
                c, losses = _choose_c(acts_NLD[:, layer], y, folds, seed, max_iter)
                selection = "grouped_cv"
            else:
                c, selection, losses = PROBE_C, TOO_FEW, None
            clf = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs", random_state=seed).fit(x, y)
        coef = clf.coef_[0].astype(np.float64)
        if basis is not None:
            coef = coef @ basis
        coef_norm = float(np.linalg.norm(coef))
        n_iter = int(np.max(clf.n_iter_))
        converged = n_iter < max_iter
        if not converged:
            logger.warning("probe: layer %d did not converge in %d iterations", layer, max_iter)
        if coef_norm > 0:
            vectors[layer] = (coef / coef_norm).astype(np.float32)
        info.append({
            "C": float(c), "C_selection": selection, "cv_folds": len(folds), "cv_log_loss": losses,
            "coef_norm": coef_norm, "intercept": float(clf.intercept_[0]),
            "probe_train_accuracy": float(clf.score(x, y)), "n_iter": n_iter, "converged": bool(converged),
        })
    return vectors, info
