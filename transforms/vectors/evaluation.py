"""Per-layer evaluation of trait vectors on a train/validation split.

Pure functions: vectors and activations in, one row (dict) per layer out.

Every metric projects onto the unit direction ``v_hat = v / ||v||`` as given (never
re-oriented: above the centre = predicted positive), so a vector pointing away from the
trait shows accuracy and AUROC below 0.5, a negative Cohen's d and ``polarity = -1``.
Vectors from :func:`transforms.vectors.extract` are oriented toward the trait, so they
have ``polarity = +1`` on the data they were extracted from.

Row fields:

- ``layer``, ``norm`` (``||v||``; meaningful for ``mean_diff``, 1 for unit methods),
  ``n_train``, ``n_val``.
- ``small_sample``: ``n_val < SMALL_SAMPLE`` (10). Validation accuracy, AUROC and d on a
  handful of responses move by 0.1-0.2 with a single sample, so such rows are flagged
  rather than read as findings.
- ``center_proj``: ``((mean_pos + mean_neg) / 2) . v_hat`` with the TRAIN class means: the
  projection of the midpoint of the two class centroids (not the mean of all samples, so
  class imbalance does not move it). Subtract it from later projections to centre them
  (0 = decision boundary, > 0 = trait side). It is also the classification threshold.
- ``polarity``: +1 if the positive train class projects above the negative one
  (``mean_pos . v_hat >= mean_neg . v_hat``), else -1.
- ``train_accuracy`` / ``val_accuracy``: fraction of samples with ``(proj > center_proj)
  == label``.
- ``train_auroc`` / ``val_auroc``: ``sklearn.metrics.roc_auc_score(labels, proj)``; NaN when
  the split lacks a class.
- ``cohens_d`` (validation) and ``train_cohens_d``: ``(mean_pos - mean_neg) / s_pooled``
  of the projections, ``s_pooled = sqrt(((n_pos - 1) var_pos + (n_neg - 1) var_neg) /
  (n_pos + n_neg - 2))`` with unbiased variances; NaN when a class is missing, when
  ``n_pos + n_neg < 3`` or when ``s_pooled == 0``.

Extraction diagnostics (``info`` of an :class:`~transforms.vectors.ExtractionResult`, e.g.
the probe's raw ``coef_norm`` and ``probe_train_accuracy``) can be merged into the rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from transforms import stats
from transforms.vectors.methods import as_acts, as_labels, limit_threads

logger = logging.getLogger(__name__)

EVAL_FIELDS: tuple[str, ...] = (
    "layer", "norm", "center_proj", "polarity", "train_accuracy", "train_auroc",
    "train_cohens_d", "val_accuracy", "val_auroc", "cohens_d", "n_train", "n_val", "small_sample",
)
SMALL_SAMPLE = 10  # validation sets smaller than this are flagged in every row


def project(acts_NLD: np.ndarray, directions_LD: np.ndarray) -> np.ndarray:
    """``proj_NL[n, l] = acts[n, l] . directions[l]``, float64."""
    if acts_NLD.shape[0] == 0:
        return np.zeros((0, directions_LD.shape[0]), dtype=np.float64)
    out_LN1 = np.matmul(acts_NLD.transpose(1, 0, 2), directions_LD[:, :, None].astype(acts_NLD.dtype))
    return out_LN1[:, :, 0].T.astype(np.float64)


def cohens_d(proj_pos: np.ndarray, proj_neg: np.ndarray) -> float:
    """Signed Cohen's d (pooled ddof=1 sd; a single value counts as its group); NaN if undefined."""
    return stats.cohens_d(proj_pos, proj_neg, min_per_group=1)


def auroc(labels_N: np.ndarray, scores_N: np.ndarray) -> float:
    """``roc_auc_score``, or NaN when a class is missing."""
    from sklearn.metrics import roc_auc_score

    if len(labels_N) == 0 or labels_N.min() == labels_N.max():
        return math.nan
    return float(roc_auc_score(labels_N, scores_N))


def _accuracy(labels_N: np.ndarray, proj_N: np.ndarray, threshold: float) -> float:
    if len(labels_N) == 0:
        return math.nan
    return float(np.mean((proj_N > threshold) == (labels_N == 1)))


def _check(acts: Any, labels: Any, n_layers: int, d: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = as_acts(acts, what=f"{what}_acts", allow_empty=True)
    if a.shape[1:] != (n_layers, d):
        raise ValueError(
            f"{what}_acts has shape {a.shape}, expected [sample, {n_layers}, {d}] to match vectors_LD"
        )
    y = as_labels(labels, a.shape[0], what=f"{what}_labels")
    return a, y


def evaluate(
    vectors_LD: Any,
    train_acts: Any,
    train_labels: Any,
    val_acts: Any,
    val_labels: Any,
    *,
    info: Sequence[Mapping[str, Any]] | None = None,
    threads: int | None = 1,
) -> list[dict[str, Any]]:
    """One row per layer (fields in the module docstring). ``info`` (one mapping per layer,
    e.g. ``ExtractionResult.info``) is merged into the rows; a key that collides with an
    evaluation field is prefixed ``info_``. Train must hold both classes (the threshold is
    defined by them); validation may be empty or single-class (its metrics are then NaN).
    ``val_acts`` / ``val_labels`` may be ``None`` (no validation set). ``threads``: BLAS
    threads during the call (see :func:`transforms.vectors.methods.limit_threads`)."""
    vectors = np.asarray(vectors_LD, dtype=np.float32)
    if vectors.ndim != 2 or 0 in vectors.shape:
        raise ValueError(f"vectors_LD must be [layer, d_model], got shape {vectors.shape}")
    n_layers, d = vectors.shape
    if (val_acts is None) != (val_labels is None):
        raise ValueError("pass both val_acts and val_labels, or neither")
    if val_acts is None:
        val_acts, val_labels = np.zeros((0, n_layers, d), np.float32), np.zeros(0, np.int8)
    tr_acts, tr_y = _check(train_acts, train_labels, n_layers, d, "train")
    va_acts, va_y = _check(val_acts, val_labels, n_layers, d, "val")
    if tr_y.size == 0 or tr_y.min() == tr_y.max():
        raise ValueError("train_labels must contain both classes (1 = positive, 0 = negative)")
    if info is not None and len(info) != n_layers:
        raise ValueError(f"info has {len(info)} entries for {n_layers} layers")

    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None].astype(np.float32)
    with limit_threads(threads):
        tr_proj, va_proj = project(tr_acts, unit), project(va_acts, unit)
    tr_pos, va_pos = tr_y == 1, va_y == 1
    rows: list[dict[str, Any]] = []
    for layer in range(n_layers):
        tp, vp = tr_proj[:, layer], va_proj[:, layer]
        m_pos, m_neg = float(tp[tr_pos].mean()), float(tp[~tr_pos].mean())
        center = (m_pos + m_neg) / 2
        row: dict[str, Any] = {
            "layer": layer,
            "norm": float(norms[layer]),
            "center_proj": center,
            "polarity": 1 if m_pos >= m_neg else -1,
            "train_accuracy": _accuracy(tr_y, tp, center),
            "train_auroc": auroc(tr_y, tp),
            "train_cohens_d": cohens_d(tp[tr_pos], tp[~tr_pos]),
            "val_accuracy": _accuracy(va_y, vp, center),
            "val_auroc": auroc(va_y, vp),
            "cohens_d": cohens_d(vp[va_pos], vp[~va_pos]),
            "n_train": int(tr_y.size),
            "n_val": int(va_y.size),
            "small_sample": bool(va_y.size < SMALL_SAMPLE),
        }
        if norms[layer] == 0:
            logger.warning("evaluate: layer %d has a zero vector; metrics are meaningless", layer)
        if info is not None:
            for key, value in info[layer].items():
                row[f"info_{key}" if key in row else key] = value
        rows.append(row)
    return rows
