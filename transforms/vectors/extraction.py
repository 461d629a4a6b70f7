"""Trait-vector extraction (facade): train/val split, extraction by method name, evaluation.

Pure transforms, no store: numpy / torch / scikit-learn in, arrays and dicts out. The
vectors builder stores what these return.

Inputs and conventions:

- ``acts_NLD``: pooled activations, float32 ``[sample, layer, d_model]`` (numpy, or a CPU
  torch tensor); layer k = output of decoder block k = HF ``hidden_states[k+1]``.
- ``labels``: one per sample, 1 = positive (trait present), 0 = negative.
- ``sample_ids``: unique strings; ``pair_ids``: one per sample, a string naming the pair
  group (e.g. the scenario whose positive and negative versions were generated), or
  ``None`` for an unpaired sample; the whole argument may be ``None`` (nothing paired).
- ``groups``: one prompt group per sample (the prompt id: all rollouts of one prompt),
  used where a sample has no pair id; keeps rollouts of a prompt on one side of the split
  and of the probe's cross-validation folds.
- Vectors: float32 ``[layer, d_model]``, oriented toward the trait (training polarity +1,
  see :func:`transforms.vectors.methods.orient`). ``mean_diff`` and ``random`` keep a norm
  (``random`` is scaled to ``mean_diff``'s); ``probe``, ``gradient`` and ``pca`` are unit.
  Exact method definitions: :mod:`transforms.vectors.methods`. Metrics:
  :mod:`transforms.vectors.evaluation`.

Typical use::

    train_ids, val_ids = split_train_val(ids, pair_ids, labels=labels, groups=prompt_ids)
    tr, va = id_rows(ids, train_ids), id_rows(ids, val_ids)
    res = extract("probe", acts[tr], labels[tr], pair_ids=[pair_ids[i] for i in tr],
                  groups=[prompt_ids[i] for i in tr])
    rows = evaluate(res.vectors_LD, acts[tr], labels[tr], acts[va], labels[va], info=res.info)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transforms.vectors import methods as vm
from transforms.vectors.evaluation import EVAL_FIELDS, evaluate
from transforms.vectors.methods import as_acts, as_labels
from transforms.vectors.probe import probe

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_FIELDS", "METHODS", "ExtractionResult", "evaluate", "extract", "id_rows",
    "split_train_val",
]

METHODS: tuple[str, ...] = ("mean_diff", "probe", "gradient", "pca", "random")
NEEDS_PAIRS: frozenset[str] = frozenset({"pca"})
NEEDS_GROUPS: frozenset[str] = frozenset({"probe"})  # cross-validates over prompt groups
SEEDED: frozenset[str] = frozenset({"probe", "random"})
TORCH_METHODS: frozenset[str] = frozenset()  # gradient was, until its closed form (issue 14)


@dataclass(frozen=True)
class ExtractionResult:
    """Vectors of one method for all layers.

    ``vectors_LD``: float32 ``[layer, d_model]``, oriented toward the trait. ``info``: one
    JSON-friendly dict per layer: ``norm``, ``flipped`` (the raw vector pointed away from
    the trait and was negated), ``cos_mean_diff`` (cosine with the layer's ``mean_diff``)
    and the method's own diagnostics. ``params``: the method's options as used (incl. the
    seed for seeded methods), for the builder's metadata."""

    method: str
    vectors_LD: np.ndarray
    info: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)


def _method_fn(method: str) -> Callable[..., tuple[np.ndarray, list[dict[str, Any]]]]:
    fns: dict[str, Callable[..., tuple[np.ndarray, list[dict[str, Any]]]]] = {
        "mean_diff": vm.mean_diff,
        "probe": probe,
        "gradient": vm.gradient,
        "pca": vm.pca,
        "random": vm.random,
    }
    if method not in fns:
        raise ValueError(f"unknown extraction method {method!r}: expected one of {', '.join(METHODS)}")
    return fns[method]


def extract(
    method: str,
    acts_NLD: Any,
    labels: Any,
    pair_ids: Sequence[str | None] | None = None,
    seed: int = 0,
    *,
    groups: Sequence[str | None] | None = None,
    threads: int | None = 1,
    **options: Any,
) -> ExtractionResult:
    """Extract one vector per layer with ``method`` (one of :data:`METHODS`).

    ``options`` go to the method (``probe``: ``C`` (default: chosen by grouped
    cross-validation), ``max_iter``; ``gradient``: ``ridge``).
    ``pair_ids`` is required by ``pca`` only. ``groups``: one prompt group per sample
    (e.g. the prompt id), for the probe's cross-validation; a sample's pair id, when it has
    one, takes precedence, and a sample with neither is its own group. ``threads``: BLAS
    and torch threads during the call (default 1, see
    :func:`transforms.vectors.methods.limit_threads`; ``None`` = process defaults). Raises
    ``ValueError`` on an unknown method, malformed shapes, labels other than 0/1 or a
    single class."""
    fn = _method_fn(method)
    acts = as_acts(acts_NLD)
    y = as_labels(labels, acts.shape[0])
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"labels must contain both classes (1 = positive, 0 = negative); got {n_pos} positive "
            f"of {y.size}"
        )
    kwargs: dict[str, Any] = dict(options)
    if method in SEEDED:
        kwargs["seed"] = int(seed)
    if method in NEEDS_PAIRS:
        kwargs["pair_ids"] = pair_ids
    if method in NEEDS_GROUPS:
        kwargs["groups"] = cv_groups(y.size, pair_ids, groups)
    with vm.limit_threads(threads, torch_too=method in TORCH_METHODS):
        raw, info = fn(acts, y, **kwargs)
        mu_pos, mu_neg = vm.class_means(acts, y)
        vectors, flipped = vm.orient(raw, mu_pos - mu_neg)
        cos_md = vm.cosine_rows(vectors, mu_pos - mu_neg)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    for layer, row in enumerate(info):
        row.update(
            norm=float(norms[layer]), flipped=bool(flipped[layer]), cos_mean_diff=float(cos_md[layer])
        )
    if flipped.any():
        logger.info("%s: flipped %d of %d layers toward the trait", method, flipped.sum(), len(flipped))
    params = {k: v for k, v in kwargs.items() if k not in ("pair_ids", "groups")}
    return ExtractionResult(method=method, vectors_LD=vectors, info=info, params=params)


def cv_groups(n: int, pair_ids: Sequence[str | None] | None,
              groups: Sequence[str | None] | None) -> list[str]:
    """One unit key per sample, as :func:`split_train_val` forms units: the pair id, else the
    group, else the sample itself."""
    for name, seq in (("pair_ids", pair_ids), ("groups", groups)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} samples")
    keys = []
    for i in range(n):
        pid = None if pair_ids is None else vm.pair_key(pair_ids[i])
        gid = None if groups is None else vm.pair_key(groups[i])
        keys.append(f"pair:{pid}" if pid is not None else (f"group:{gid}" if gid is not None else f"sample:{i}"))
    return keys


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_train_val(
    sample_ids: Sequence[str],
    pair_ids: Sequence[str | None] | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    groups: Sequence[str | None] | None = None,
) -> tuple[list[str], list[str]]:
    """Seeded, pair-aware, group-aware, stratified split -> ``(train_ids, val_ids)``, each sorted.

    Units: every pair group (all samples sharing a pair id) is one unit and lands on one
    side whole; a sample with no pair id belongs to the unit of its ``groups`` entry (e.g.
    its prompt id, so all rollouts of one prompt land on one side: they are near copies, and
    splitting them leaks the prompt into validation), or is its own unit when that is
    ``None`` or ``groups`` is not given. With ``labels``, units are
    stratified by their class content ("pos" only, "neg" only, "mixed"); without, there is
    one stratum. In each stratum (iterated in a fixed order) the units are sorted by id,
    permuted with ``numpy.random.default_rng(seed)``, and the first
    ``round(val_fraction * n_units)`` go to validation, clamped to ``[1, n_units - 1]`` when
    the stratum has at least two units and ``val_fraction > 0`` (so both sides get both
    classes whenever that is possible; a warning is logged when it is not). The fraction is
    therefore one of units, not samples. The result depends only on the set of
    (sample id, pair id, group, label) tuples, not on their order."""
    ids = [str(s) for s in sample_ids]
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("sample_ids must be unique")
    if pair_ids is not None and len(pair_ids) != n:
        raise ValueError(f"pair_ids has {len(pair_ids)} entries for {n} sample ids")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} sample ids")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y = None if labels is None else as_labels(labels, n)

    units: dict[tuple[str, str], list[int]] = {}
    for i, sid in enumerate(ids):
        pid = None if pair_ids is None else vm.pair_key(pair_ids[i])
        gid = None if groups is None else vm.pair_key(groups[i])
        key = ("pair", pid) if pid is not None else (("group", gid) if gid is not None else ("sample", sid))
        units.setdefault(key, []).append(i)

    strata: dict[str, list[tuple[str, str]]] = {}
    for key, rows in units.items():
        if y is None:
            stratum = "all"
        else:
            has_pos, has_neg = bool((y[rows] == 1).any()), bool((y[rows] == 0).any())
            stratum = "mixed" if has_pos and has_neg else ("pos" if has_pos else "neg")
        strata.setdefault(stratum, []).append(key)

    rng = np.random.default_rng(seed)
    val_rows: list[int] = []
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        k = len(keys)
        n_val = _round_half_up(val_fraction * k)
        if val_fraction > 0 and k >= 2:
            n_val = min(max(n_val, 1), k - 1)
        for j in rng.permutation(k)[:n_val]:
            val_rows.extend(units[keys[j]])

    in_val = np.zeros(n, dtype=bool)
    in_val[val_rows] = True
    train_ids = sorted(ids[i] for i in range(n) if not in_val[i])
    val_ids = sorted(ids[i] for i in range(n) if in_val[i])
    if y is not None and val_fraction > 0:
        for side, mask in (("train", ~in_val), ("val", in_val)):
            if len(set(y[mask].tolist())) < 2:
                logger.warning("split_train_val: %s side lacks a class (too few units to stratify)", side)
    return train_ids, val_ids


def id_rows(sample_ids: Sequence[str], subset_ids: Sequence[str]) -> np.ndarray:
    """Row indices (int64) of ``subset_ids`` within ``sample_ids``, in ``subset_ids`` order."""
    where = {str(s): i for i, s in enumerate(sample_ids)}
    missing = [s for s in subset_ids if str(s) not in where]
    if missing:
        raise ValueError(f"{len(missing)} ids not among sample_ids, e.g. {missing[:3]}")
    return np.asarray([where[str(s)] for s in subset_ids], dtype=np.int64)
