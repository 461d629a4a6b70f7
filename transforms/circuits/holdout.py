"""Template holdout for persona probes: folds of whole template pairs, held-out scores per layer.

A probe trained and tested on prompts of the same persona templates can score well by
memorising the templates' words. Here a fold holds out whole template PAIRS: both sides of a
pair (its expert and its child sentence) are tested together and never trained on, so no
template's words sit on both sides of a split.

- :func:`template_folds`: k folds over the template pairs (seeded), every pair tested once.
- :func:`holdout_fold`: one fold from an explicit list of template ids or pair names (a
  template id holds out its whole pair).
- :func:`holdout_scores`: per fold, a direction per layer from the training rows
  (:func:`transforms.vectors.extract`: the probe cross-validates its penalty over template
  pairs, so that choice does not see a held-out template either), the held-out rows projected
  on it minus the training class midpoint (> 0 = expert side); pooled over folds.
- :func:`wilson_interval`: the accuracy interval.

Pure numpy / scikit-learn; no store, no model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TemplateFold:
    """One split: template pairs trained on and template pairs held out (disjoint)."""

    index: int
    train_pairs: tuple[str, ...]
    test_pairs: tuple[str, ...]

    def __post_init__(self) -> None:
        both = set(self.train_pairs) & set(self.test_pairs)
        if both:
            raise ValueError(f"fold {self.index}: template pair(s) {sorted(both)} on both sides")
        if not self.train_pairs or not self.test_pairs:
            raise ValueError(f"fold {self.index}: needs template pairs on both sides")

    def rows(self, row_pairs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(train_rows, test_rows)``: indices of the rows whose template pair is on each side
        (rows of a pair in neither list are in neither)."""
        import numpy as np

        train, test = set(self.train_pairs), set(self.test_pairs)
        return (np.asarray([i for i, p in enumerate(row_pairs) if p in train], dtype=np.int64),
                np.asarray([i for i, p in enumerate(row_pairs) if p in test], dtype=np.int64))


def template_folds(template_pairs: Sequence[str], n_folds: int, seed: int = 0) -> list[TemplateFold]:
    """``n_folds`` folds over the distinct pairs of ``template_pairs`` (one entry per template
    or per pair; order does not matter): the sorted pairs shuffled with ``seed`` and dealt
    round-robin, so every pair is held out in exactly one fold and fold sizes differ by <= 1."""
    import numpy as np

    pairs = sorted(set(template_pairs))
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= len(pairs):
        raise ValueError(f"--template-holdout: {n_folds!r} folds need 2 to {len(pairs)} (the number of "
                         f"template pairs)")
    order = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))]
    tests = [tuple(sorted(order[k::n_folds])) for k in range(n_folds)]
    return [TemplateFold(k, tuple(p for p in pairs if p not in test), test) for k, test in enumerate(tests)]


def holdout_fold(pair_of: Mapping[str, str], held_out: Sequence[str]) -> TemplateFold:
    """One fold holding out ``held_out`` (template ids or pair names; a template id takes its
    whole pair out). ``pair_of``: template id -> its pair. Unknown names: ValueError naming them."""
    pairs = sorted(set(pair_of.values()))
    unknown = [h for h in held_out if h not in pair_of and h not in pairs]
    if unknown:
        raise ValueError(f"--template-holdout: unknown template(s) {', '.join(unknown)} "
                         f"(templates: {', '.join(sorted(pair_of))}; pairs: {', '.join(pairs)})")
    test = sorted({pair_of.get(h, h) for h in held_out})
    if len(test) == len(pairs):
        raise ValueError("--template-holdout: every template pair is held out, none left to train on")
    if not test:
        raise ValueError("--template-holdout: no template named")
    return TemplateFold(0, tuple(p for p in pairs if p not in test), tuple(test))


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); ``(nan, nan)`` for n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class HoldoutScores:
    """Held-out scores of one method, pooled over folds.

    ``scores_NL[i, l]``: row ``rows[i]`` projected on fold ``fold_N[i]``'s unit direction at
    layer ``l``, minus that fold's training class midpoint (> 0 = predicted expert).
    ``labels_N``: 1 = expert. ``n_train``: training rows per fold."""

    method: str
    rows: np.ndarray
    fold_N: np.ndarray
    labels_N: np.ndarray
    scores_NL: np.ndarray
    n_train: tuple[int, ...]

    def accuracy(self, layer: int) -> tuple[float, float, float]:
        """``(accuracy, Wilson low, Wilson high)`` at layer index ``layer``."""
        correct = int(((self.scores_NL[:, layer] > 0) == (self.labels_N == 1)).sum())
        n = len(self.labels_N)
        return (correct / n if n else math.nan, *wilson_interval(correct, n))


def holdout_scores(acts_NLD: np.ndarray, labels_N: np.ndarray, row_pairs: Sequence[str],
                   folds: Sequence[TemplateFold], method: str, *, seed: int = 0) -> HoldoutScores:
    """Train ``method`` on each fold's training rows, score its held-out rows (module docstring)."""
    import numpy as np

    from transforms.vectors import evaluate, extract

    acts = np.asarray(acts_NLD, dtype=np.float32)
    y = np.asarray(labels_N, dtype=np.int64)
    if len(row_pairs) != len(y) or acts.shape[0] != len(y):
        raise ValueError(f"{acts.shape[0]} rows of activations, {len(y)} labels, {len(row_pairs)} template pairs")
    rows, fold_of, scores, n_train = [], [], [], []
    for fold in folds:
        train, test = fold.rows(row_pairs)
        if len(set(y[train].tolist())) < 2:
            raise ValueError(f"fold {fold.index}: the training templates hold one side only")
        groups = [row_pairs[i] for i in train]
        result = extract(method, acts[train], y[train], seed=seed, groups=groups)
        evaluation = evaluate(result.vectors_LD, acts[train], y[train], None, None)
        norms = np.linalg.norm(result.vectors_LD.astype(np.float64), axis=1)
        unit_LD = result.vectors_LD / np.where(norms > 0, norms, 1.0)[:, None]
        centre_L = np.asarray([r["center_proj"] for r in evaluation])
        scores.append(np.einsum("nld,ld->nl", acts[test].astype(np.float64), unit_LD) - centre_L)
        rows.append(test)
        fold_of.append(np.full(len(test), fold.index, dtype=np.int64))
        n_train.append(len(train))
        log.info("%s fold %d: %d train rows, %d held out (%s)", method, fold.index, len(train), len(test),
                 ", ".join(fold.test_pairs))
    index = np.concatenate(rows)
    return HoldoutScores(method, index, np.concatenate(fold_of), y[index], np.concatenate(scores), tuple(n_train))
