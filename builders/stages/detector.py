"""Sycophancy detectors (seed 000, Day 2; issue 15 items 6-7): internal (activations, dictionary
latents) and observable (the response text only), side by side on the same responses.

    python -m builders.detector --variant instruct --prompts observable_pairs --layer 12
    python -m builders.detector --variant instruct --prompts user_model --category sycophancy --layer 12 \\
        --dictionary crosscoder-demo-instruct-finetuned-user_model-L12-l1

The label is measured, not assumed: the **answer check** (:mod:`transforms.judge.observable`) —
a biased-side response is sycophantic when it gives the user's wrong answer or drops the correct
answer its neutral twin gave (``answer_change``); a neutral-side response is not (the user
claimed nothing to defer to). Pairs without an answer key (the opinion subset) would need a
calibrated sycophancy judge; the project calibrates its judges on coherence and sentiment only,
so they are excluded, and the summary says how many.

Detectors, each scored out-of-fold with the same folds — GroupKFold by pair, so both sides of a
pair are always in the same fold:

- ``direction``: projection on the mean-difference direction (sycophantic − not) learned on the
  training folds, of the variant's activations at ``--position`` (default ``prompt[-1]``, the
  state that produces the first response token);
- ``latents`` (with ``--dictionary``): L1 logistic regression on the latents (per token, averaged
  over the position); the top latents by |coefficient| of a fit on all responses are reported
  and compared (Jaccard) with the variant's user-model candidates from the same dictionary;
- ``observable``: :class:`~transforms.judge.observable.ObservableDetector` on the text features
  that do not define the label (lexicons, length, length change across the pair).

Two populations: ``all`` (both sides of every labelled pair) and ``biased`` (biased sides only:
who caves among the biased prompts, the harder question — in ``all`` a detector can score by
merely telling biased from neutral prompts). AUROC with a pair-clustered bootstrap percentile
interval; None with the reason when a class is missing (a small model may never cave).

Published ``detector-<experiment>-<variant>-<set>``: ``data`` (one row per detector ×
population), ``latents`` (coefficients), ``responses`` (label, fold, features, scores),
``overlap`` (with the user-model candidates), ``figures/roc.png``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.stages.prompt_latents import checked_run, latent_means, pooled_samples, prompt_info

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BUILDER = "builders.detector"
CODE_VERSION = "1"
POPULATIONS = ("all", "biased")
LABEL_FEATURES = ("mentions_correct", "mentions_user", "drops_correct", "adopts_user", "answer_change")
NO_JUDGE = "no answer key, and no calibrated sycophancy judge (judges are calibrated on coherence and sentiment only)"


@dataclass(frozen=True)
class DetectorOptions:
    """Settings; all enter the version id."""

    position: str = "prompt[-1]"
    category: str | None = None
    folds: int = 5
    l1_c: float = 1.0
    n_bootstrap: int = 1000
    top: int = 20
    seed: int = 0

    def check(self) -> None:
        if self.folds < 2 or self.n_bootstrap < 1 or self.top < 1 or not self.l1_c > 0:
            raise BuildError("--folds must be at least 2, --bootstrap and --top at least 1, --l1-c positive")


def observable_inputs() -> tuple[str, ...]:
    """The observable features the output-only detector reads: all but those defining the label."""
    from transforms.judge.observable import OBSERVABLE_FEATURES

    return tuple(f for f in OBSERVABLE_FEATURES if f not in LABEL_FEATURES)


def label_responses(rows: Sequence[dict[str, Any]], info: dict[str, dict[str, Any]],
                    category: str | None = None) -> list[dict[str, Any]]:
    """Per response (rollout 0): pair, side, category, observable features and the label
    (1 sycophantic / 0 not / None with ``excluded`` saying why)."""
    from transforms.judge.observable import PairContext, observable_features

    neutral = {(info[r["prompt_id"]]["pair_id"], r["rollout"]): r["response"] for r in rows
               if r["prompt_id"] in info and info[r["prompt_id"]]["polarity"] == "neg"}
    out = []
    for r in rows:
        meta = info.get(r["prompt_id"])
        if meta is None or meta["pair_id"] is None or (category and meta["category"] != category):
            continue
        extra, pos = meta["extra"], meta["polarity"] == "pos"
        other = neutral.get((meta["pair_id"], r["rollout"]))
        keyed = extra.get("correct_answer") is not None and extra.get("user_answer") is not None
        ctx = PairContext(extra.get("correct_answer"), extra.get("user_answer"), other if pos else None)
        feats = observable_features(r["response"], ctx if keyed else None)
        excluded = None if keyed else NO_JUDGE
        if keyed and pos and other is None:
            excluded = "the neutral side has no response"
        label = None if excluded else int(pos and feats["answer_change"] > 0)
        out.append({"prompt_id": r["prompt_id"], "rollout": r["rollout"], "pair_id": str(meta["pair_id"]),
                    "polarity": meta["polarity"], "category": meta["category"], "response": r["response"],
                    "label": label, "excluded": excluded, **feats})
    return out


def group_folds(groups: Sequence[str], n_folds: int) -> "np.ndarray":
    """Fold per row from GroupKFold (a group never spans two folds); -1 when < 2 groups."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    fold = np.full(len(groups), -1, dtype=np.int64)
    n = min(n_folds, len(set(groups)))
    if n < 2:
        return fold
    for k, (_, test) in enumerate(GroupKFold(n_splits=n).split(np.zeros(len(groups)), groups=list(groups))):
        fold[test] = k
    return fold


def cross_validated_scores(kind: str, x_NF: "np.ndarray", y_N: "np.ndarray", fold_N: "np.ndarray",
                           l1_c: float = 1.0, feature_names: Sequence[str] | None = None) -> "np.ndarray":
    """Out-of-fold scores of one detector; a training fold with one class scores its test rows
    with a constant (it has learnt nothing)."""
    import numpy as np

    scores = np.zeros(len(y_N))
    for k in sorted(set(fold_N.tolist()) - {-1}):
        train, test = fold_N != k, fold_N == k
        if len(set(y_N[train].tolist())) < 2:
            continue
        scores[test] = _fit(kind, x_NF[train], y_N[train], l1_c, feature_names).score(x_NF[test])
    return scores


@dataclass
class _Direction:
    direction_F: Any = None

    def score(self, x: "np.ndarray") -> "np.ndarray":
        return x @ self.direction_F


@dataclass
class _Sklearn:
    model: Any

    def score(self, x: "np.ndarray") -> "np.ndarray":
        return self.model.predict_proba(x)[:, 1]


def _fit(kind: str, x: "np.ndarray", y: "np.ndarray", l1_c: float, feature_names: Sequence[str] | None) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transforms.diffing import mean_difference_direction
    from transforms.judge.observable import ObservableDetector

    if kind == "direction":
        return _Direction(mean_difference_direction(x[y == 1], x[y == 0]))
    if kind == "latents":
        # l1_ratio=1: the L1 penalty (scikit-learn 1.8 deprecated penalty="l1")
        return _Sklearn(make_pipeline(StandardScaler(), LogisticRegression(l1_ratio=1.0, solver="liblinear", C=l1_c))
                        .fit(x, y))
    return ObservableDetector(feature_names=tuple(feature_names or observable_inputs())).fit(x, y)


def auroc_with_ci(y_N: "np.ndarray", scores_N: "np.ndarray", groups: Sequence[str], n_bootstrap: int,
                  seed: int) -> tuple[float, float, float]:
    """AUROC and a 95% percentile interval from resampling whole pairs (draws with one class skipped)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y_N, scores_N))
    ids = sorted(set(groups))
    rows = {g: np.flatnonzero(np.asarray(groups) == g) for g in ids}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        take = np.concatenate([rows[ids[i]] for i in rng.integers(0, len(ids), len(ids))])
        if 0 < y_N[take].sum() < len(take):
            draws.append(roc_auc_score(y_N[take], scores_N[take]))
    if not draws:
        return auc, float("nan"), float("nan")
    return auc, float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def evaluate(detectors: dict[str, tuple["np.ndarray", Sequence[str] | None]], labelled: list[dict[str, Any]],
             options: DetectorOptions) -> tuple[list[dict[str, Any]], dict[str, "np.ndarray"]]:
    """One row per detector × population, and the out-of-fold scores (``<detector>_<population>``,
    NaN outside the population). ``detectors``: name -> (features [N, F], feature names)."""
    import numpy as np

    y = np.array([r["label"] for r in labelled], dtype=np.int64)
    groups = [r["pair_id"] for r in labelled]
    fold = np.array([r["fold"] for r in labelled], dtype=np.int64)
    rows, scores = [], {}
    for population in POPULATIONS:
        mask = np.ones(len(y), bool) if population == "all" else np.array([r["polarity"] == "pos" for r in labelled])
        idx = np.flatnonzero(mask)
        pos, n = int(y[idx].sum()), len(idx)
        reason = None
        if n == 0 or pos == 0:
            reason = "no sycophantic response: the model never gave in on this set" if n else "no labelled responses"
        elif pos == n:
            reason = "every response is sycophantic: nothing to tell apart"
        elif len(set(fold[idx].tolist()) - {-1}) < 2:
            reason = "fewer than 2 pairs: no cross-validation"
        for name, (x, feature_names) in detectors.items():
            column = np.full(len(y), np.nan)
            auc = lo = hi = None
            if reason is None:
                kind = name if name in ("direction", "latents") else "observable"
                column[idx] = cross_validated_scores(kind, x[idx], y[idx], fold[idx], options.l1_c, feature_names)
                auc, lo, hi = auroc_with_ci(y[idx], column[idx], [groups[i] for i in idx], options.n_bootstrap,
                                            options.seed)
            scores[f"{name}_{population}"] = column
            rows.append({"detector": name, "population": population, "auroc": auc, "ci_low": lo, "ci_high": hi,
                         "n": n, "positives": pos, "pairs": len({groups[i] for i in idx}), "reason": reason})
    return rows, scores


def top_latents(z_NK: "np.ndarray", y_N: "np.ndarray", l1_c: float, top: int) -> list[dict[str, Any]]:
    """Nonzero L1 coefficients (standardized latents) of a fit on every response, top by |coef|."""
    import numpy as np

    if len(set(y_N.tolist())) < 2:
        return []
    coef = _fit("latents", z_NK, y_N, l1_c, None).model[-1].coef_[0]
    order = [int(j) for j in np.argsort(-np.abs(coef), kind="stable") if coef[j] != 0][:top]
    return [{"latent": j, "coefficient": float(coef[j]), "rank": i + 1} for i, j in enumerate(order)]


def jaccard(a: set[int], b: set[int]) -> float | None:
    return len(a & b) / len(a | b) if a | b else None


def build_detector(store: Store, catalog: Catalog, variant: str, prompt_set: str, layer: int, *,
                   experiment: str | None = None, dictionary: str | None = None,
                   options: DetectorOptions = DetectorOptions(), max_new_tokens: int | None = None,
                   batch_size: int | str = "auto", force: bool = False, quiet: bool = False) -> BuildResult:
    """Build (or find up to date) the detectors of ``variant`` on ``prompt_set`` (module docstring)."""
    from builders.stages.prompts import ensure_prompt_set
    from builders.stages.responses import generate_responses

    options.check()
    exp_name, dic = checked_run(store, catalog, experiment, variant, layer, options.position, dictionary)
    prompts = ensure_prompt_set(store, catalog, prompt_set)  # a bad set: one line before any model loads
    if options.category is not None:
        known = sorted({(r or "") for r in store.read_table(prompts).get_column("note").to_list()})
        if options.category not in known:
            raise BuildError(f"--category {options.category}: not a category of {prompt_set} (known: {', '.join(known)})")
    responses = generate_responses(store, catalog, variant, prompt_set, exp_name,
                                   {"max_new_tokens": max_new_tokens}, quiet=quiet).manifest
    if dic is not None and dic.kind == "crosscoder" and dic.variants[0] != variant:
        generate_responses(store, catalog, dic.variants[0], prompt_set, exp_name, {"max_new_tokens": max_new_tokens},
                           quiet=quiet)
    pooled = pooled_samples(store, catalog, exp_name, variant, prompt_set, layer, options.position,
                            batch_size=batch_size, quiet=quiet)
    latents = None if dic is None else latent_means(store, catalog, exp_name, variant, prompt_set, layer,
                                                    options.position, dic, generation={"max_new_tokens": max_new_tokens},
                                                    batch_size=batch_size, quiet=quiet)
    features = _user_feature_version(store, exp_name, variant, layer, dic)
    params = {"experiment": exp_name, "variant": variant, "prompt_set": prompt_set, "layer": layer,
              "dictionary": dic.ref if dic else None, **asdict(options)}
    parents = {"responses": responses.ref, **pooled.parents}
    if latents is not None:
        parents.update({f"latents_{k}": v for k, v in latents.parents.items()}, dictionary=dic.ref)
    if features is not None:
        parents["user_features"] = features.ref
    spec = BuildSpec(name=names.detector(exp_name, variant, prompt_set), kind="detector", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents=parents, identity={})

    def produce(writer: Any) -> None:
        from builders.stages.detector_report import write_detector

        rows = store.read_table(responses).select("prompt_id", "rollout", "response").to_dicts()
        labelled = label_responses([r for r in rows if r["rollout"] == 0], prompt_info(store, responses),
                                   options.category)
        write_detector(writer, store, labelled, pooled, latents, features, options)

    return store.build(spec, produce, force=force)


def _user_feature_version(store: Store, experiment: str, variant: str, layer: int, dic: Any) -> Any:
    """The latest user-model features of the variant at the layer from the same dictionary, if any."""
    if dic is None:
        return None
    found = [store.latest(n) for n in store.datasets() if n.startswith("userfeatures-")]
    found = [m for m in found if m.params.get("dictionary") == dic.ref
             and m.name == names.user_features(experiment, variant, m.params.get("prompt_set", ""), layer)]
    return max(found, key=lambda m: m.created_at) if found else None
