"""Calibrate a judge on labelled answers and publish how well it separates them.

    python -m builders.calibration --judge perplexity --variant instruct   # fits the 0-100 map
    python -m builders.calibration --judge sentiment
    python -m builders.calibration --judge local                            # SmolLM2 LLM judge
    python -m builders.calibration --judge lexicon --trait-set optimism_instruction

Reads ``datasets/judge/calibration/`` (``coherence.jsonl``: fluent vs degenerate answers
of every kind steering produces; ``sentiment.jsonl``: positive / negative / neutral) and
publishes ``judge-calibration-<judge>[-<qualifier>]``: tables ``data`` (every item's score),
``metrics`` (AUROC fluent-vs-degenerate and positive-vs-negative, per degenerate kind too)
and ``histograms`` (scores per label, 10-point bins), the plot ``scores.png``, and for the
perplexity judge its fitted map ``calibration.json``. The perplexity judge's AUROC is
out-of-fold (5-fold stratified: each item scored by a map fitted without it), the honest
figure; the in-sample one is in ``metrics`` beside it. Trait judges score the sentiment
set with the trait set's trait (``--trait-set``, default ``optimism_instruction``); every
judge scores both sets, so the tables say plainly when a judge cannot tell fluent from
degenerate. Steering refuses a coherence judge whose AUROC is below 0.9.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, read_jsonl_rows
from builders.shared.judges import (COHERENCE_JUDGES, LLM_JUDGES, TRAIT_JUDGES, JudgeChoice, coherence_scorer, judge_dtype,
                     prompt_meta, score_items, trait_scorer)
from builders.shared.figures import png_bytes, subplots
from builders.stages.prompts import ensure_prompt_set

log = logging.getLogger(__name__)

BUILDER = "builders.calibration"
CODE_VERSION = "1"  # the featurizer has its own version (identity)
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "datasets" / "judge" / "calibration"
DEFAULT_TRAIT_SET = "optimism_instruction"
SETS = {"coherence": ("fluent", "degenerate"), "sentiment": ("positive", "negative", "neutral")}
FOLDS = 5


def load_calibration_set(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """``{set: rows}`` of a calibration folder, validated: one line per problem, naming it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, labels in SETS.items():
        path = folder / f"{name}.jsonl"
        if not path.exists():
            raise BuildError(f"calibration set: {path} is missing")
        rows = []
        for row in read_jsonl_rows(path, ("id", "question", "response", "label")):
            if row["label"] not in labels:
                raise BuildError(f"{path.name}: id {row['id']!r}: label {row['label']!r} is not one of "
                                 f"{', '.join(labels)}")
            rows.append({"set": name, "id": row["id"], "question": row["question"], "response": row["response"],
                         "label": row["label"], "kind": row.get("kind") or row["label"]})
        present = {r["label"] for r in rows}
        if not set(labels[:2]) <= present:
            raise BuildError(f"calibration set {path.name}: needs both {labels[0]!r} and {labels[1]!r} labels, "
                             f"found only {sorted(present) or 'no rows'}")
        out[name] = rows
    return out


def _first_per_label(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    if n <= 0:
        return rows
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        if seen[row["label"]] <= n:
            out.append(row)
    return out


def auroc(scores: Sequence[float | None], positive: Sequence[bool]) -> float:
    """AUROC of ``scores`` for ``positive``; an unscored item counts as 50 (no information)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([bool(p) for p in positive], [50.0 if s is None else s for s in scores]))


def _qualifier(catalog: Catalog, experiment: str, variant: str, choice: JudgeChoice, judge: str,
               trait_set: str) -> str | None:
    if judge == "perplexity":
        return choice.reference or f"{experiment}-{variant}"
    if judge == "lexicon":
        return trait_set
    if judge in LLM_JUDGES:
        return choice.model
    return None


def reference_identity(store: Store, catalog: Catalog, experiment: str, variant: str,
                       choice: JudgeChoice) -> dict[str, Any]:
    """Identity of the perplexity judge's reference model, without loading it."""
    from transforms.models import ModelRef, model_fingerprint

    from builders.stages.responses import model_identity

    if not choice.reference:
        return model_identity(catalog, experiment, variant, store)
    entry = catalog.models.get(choice.reference)
    if entry is None:
        raise BuildError(f"--coherence-reference: unknown catalog model {choice.reference!r} "
                         f"(known: {', '.join(catalog.models)})")
    ident = {"model_id": entry.id, "model_revision": model_fingerprint(ModelRef(entry.id, entry.revision)),
             "adapter": None}
    dtype = judge_dtype()  # loaded by cached_model at --dtype (as model_identity: only when not float32)
    return ident if dtype is None else {**ident, "dtype": dtype}


def perplexity_reference(store: Store, catalog: Catalog, experiment: str, variant: str,
                         choice: JudgeChoice) -> tuple[Any, dict[str, Any]]:
    """``(loaded model, identity)`` of the perplexity judge's reference model."""
    from builders.shared.common import cached_model
    from builders.shared.variants import variant_model

    ident = reference_identity(store, catalog, experiment, variant, choice)
    if choice.reference:
        entry = catalog.models[choice.reference]
        return cached_model(entry.id, entry.revision), ident
    return variant_model(store, catalog.variant(experiment, variant)), ident


def perplexity_scorer(store: Store, catalog: Catalog, experiment: str, variant: str, choice: JudgeChoice,
                      calibration: Manifest) -> Any:
    from transforms.judge import CoherenceCalibration, PerplexityFeaturizer, PerplexityScorer

    loaded, ident = perplexity_reference(store, catalog, experiment, variant, choice)
    fitted = CoherenceCalibration.from_dict(json.loads(store.read_bytes(calibration, "calibration.json")))
    return PerplexityScorer(PerplexityFeaturizer(loaded, ident), fitted, calibration.ref)


def calibration_for(store: Store, catalog: Catalog, experiment: str, variant: str, choice: JudgeChoice,
                    build: bool, quiet: bool = True) -> Manifest | None:
    """The calibration of ``choice.coherence`` (built when ``build`` and missing)."""
    name = names.calibration(choice.coherence, _qualifier(catalog, experiment, variant, choice, choice.coherence,
                                                          DEFAULT_TRAIT_SET))
    if build:
        return calibrate(store, catalog, choice.coherence, experiment=experiment, variant=variant, choice=choice,
                         quiet=quiet).manifest
    return store.latest(name) if name in store.datasets() else None


# The labelled set's features under one reference model are a pure function of the featurizer's
# identity (model fingerprint, dtype, feature version) and the items: computed once per process,
# so stores that each calibrate against the same reference (one per test, one per experiment run
# from a notebook kernel) do not repeat ~300 answers' forward passes.
_FEATURES: dict[str, list[dict[str, float] | None]] = {}


def _perplexity_scores(store: Store, catalog: Catalog, experiment: str, variant: str, choice: JudgeChoice,
                       rows: list[dict[str, Any]]) -> tuple[list[float], list[float], dict[str, Any], list[dict]]:
    """In-sample and out-of-fold scores, the fitted map, and the features of every row."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from transforms.judge import CoherenceCalibration, PerplexityFeaturizer

    loaded, ident = perplexity_reference(store, catalog, experiment, variant, choice)
    featurizer = PerplexityFeaturizer(loaded, ident)
    items = [(r["question"], r["response"]) for r in rows]
    key = hashlib.sha256(json.dumps([featurizer.identity(), items], sort_keys=True).encode()).hexdigest()
    if key not in _FEATURES:
        _FEATURES[key] = featurizer.features(items)
    feats = _FEATURES[key]
    train = [i for i, r in enumerate(rows) if r["set"] == "coherence" and feats[i] is not None]
    fluent = np.array([rows[i]["label"] == "fluent" for i in train])
    fitted = CoherenceCalibration.fit([feats[i] for i in train], fluent)
    in_sample = [fitted.apply(f) for f in feats]
    out_of_fold = list(in_sample)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    for fit_idx, test_idx in folds.split(np.zeros(len(train)), fluent):
        fold = CoherenceCalibration.fit([feats[train[i]] for i in fit_idx], fluent[fit_idx])
        for i in test_idx:
            out_of_fold[train[i]] = fold.apply(feats[train[i]])
    return in_sample, out_of_fold, fitted.as_dict(), feats


def _histograms(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    out = []
    for (name, label) in sorted({(r["set"], r["label"]) for r in rows}):
        values = [r[column] for r in rows if r["set"] == name and r["label"] == label and r[column] is not None]
        for lo in range(0, 100, 10):
            count = sum(lo <= v < lo + 10 or (lo == 90 and v == 100) for v in values)
            out.append({"set": name, "label": label, "bin_lo": lo, "bin_hi": lo + 10, "count": count})
    return out


def _plot(rows: list[dict[str, Any]], column: str, title: str) -> bytes:
    fig, axes = subplots(1, 2, figsize=(9, 3.2))
    for ax, (name, labels) in zip(axes, SETS.items()):
        for label in labels:
            values = [r[column] for r in rows if r["set"] == name and r["label"] == label and r[column] is not None]
            ax.hist(values, bins=range(0, 101, 5), alpha=0.55, label=f"{label} ({len(values)})")
        ax.set_title(f"{name} set", fontsize=9)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def _metrics(rows: list[dict[str, Any]], column: str, note: str) -> list[dict[str, Any]]:
    coh = [r for r in rows if r["set"] == "coherence"]
    sen = [r for r in rows if r["set"] == "sentiment" and r["label"] != "neutral"]
    out = [{"metric": "auroc", "comparison": "fluent vs degenerate", "kind": "all", "estimate": note,
            "value": auroc([r[column] for r in coh], [r["label"] == "fluent" for r in coh]),
            "n_pos": sum(r["label"] == "fluent" for r in coh), "n_neg": sum(r["label"] != "fluent" for r in coh)},
           {"metric": "auroc", "comparison": "positive vs negative", "kind": "all", "estimate": note,
            "value": auroc([r[column] for r in sen], [r["label"] == "positive" for r in sen]),
            "n_pos": sum(r["label"] == "positive" for r in sen), "n_neg": sum(r["label"] == "negative" for r in sen)}]
    fluent = [r for r in coh if r["label"] == "fluent"]
    for kind in sorted({r["kind"] for r in coh if r["label"] == "degenerate"}):
        bad = [r for r in coh if r["kind"] == kind and r["label"] == "degenerate"]
        out.append({"metric": "auroc", "comparison": "fluent vs degenerate", "kind": kind, "estimate": note,
                    "value": auroc([r[column] for r in fluent + bad], [True] * len(fluent) + [False] * len(bad)),
                    "n_pos": len(fluent), "n_neg": len(bad)})
    return out


def calibrate(store: Store, catalog: Catalog, judge: str, *, experiment: str | None = None,
              variant: str | None = None, choice: JudgeChoice | None = None, trait_set: str = DEFAULT_TRAIT_SET,
              folder: Path | None = None, per_label: int = 0, force: bool = False,
              quiet: bool = False) -> BuildResult:
    """Score the calibration set with ``judge`` and publish its separation (module docstring).

    ``per_label > 0``: only the first ``per_label`` answers of each label (for slow judges)."""
    if judge not in set(TRAIT_JUDGES) | set(COHERENCE_JUDGES):
        known = ", ".join(sorted(set(TRAIT_JUDGES) | set(COHERENCE_JUDGES)))
        raise BuildError(f"--judge: unknown judge {judge!r} (known: {known})")
    exp = catalog.experiment(experiment)
    variant = variant or exp.application or next(iter(exp.variants))
    catalog.variant(exp.name, variant)
    choice = choice or JudgeChoice()
    folder = folder or DEFAULT_DIR
    sets = load_calibration_set(folder)
    rows = [r for name in SETS for r in _first_per_label(sets[name], per_label)]
    digest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.jsonl"))}
    role = JudgeChoice(judge if judge in TRAIT_JUDGES else "local",
                       judge if judge in COHERENCE_JUDGES else "perplexity",
                       choice.model, choice.reference, True)
    scorers: dict[str, Any] = {}
    if judge in TRAIT_JUDGES:
        scorers["trait"] = trait_scorer(store, catalog, role, prompt_meta(store, ensure_prompt_set(store, catalog, trait_set)))
    if judge in COHERENCE_JUDGES and judge != "perplexity":
        scorers["coherence"], _ = coherence_scorer(store, catalog, exp.name, variant, role)
    identity: dict[str, Any] = {k: s.identity() for k, s in scorers.items()}
    if judge == "perplexity":
        from transforms.judge import PerplexityFeaturizer

        reference = reference_identity(store, catalog, exp.name, variant, choice)
        identity["featurizer"] = PerplexityFeaturizer(None, reference).identity()
        counts = [sum(r["set"] == "coherence" and r["label"] == lab for r in rows) for lab in SETS["coherence"]]
        if min(counts) < FOLDS:
            raise BuildError(f"the perplexity judge's map is fitted with {FOLDS}-fold cross-validation: it needs at "
                             f"least {FOLDS} fluent and {FOLDS} degenerate answers, got {counts[0]} and {counts[1]}")
    if per_label < 0:
        raise BuildError(f"--per-label must be >= 0, got {per_label}")
    uses_variant = judge == "perplexity" and not choice.reference  # the reference is the variant's model
    params = {"judge": judge, "experiment": exp.name, "variant": variant if uses_variant else None,
              "per_label": per_label,
              "trait_set": trait_set if judge in TRAIT_JUDGES else None,
              "calibration_files": digest, "folds": FOLDS}
    spec = BuildSpec(name=names.calibration(judge, _qualifier(catalog, exp.name, variant, choice, judge, trait_set)),
                     kind="judge_calibration", builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents={}, identity=identity)

    def produce(writer: Any) -> None:
        items = [(r["question"], r["response"]) for r in rows]
        note, summary = "no fitted parameters", {}
        if judge == "perplexity":
            in_sample, oof, fitted, feats = _perplexity_scores(store, catalog, exp.name, variant, choice, rows)
            for r, a, b, f in zip(rows, in_sample, oof, feats):
                r.update({"score": b, "score_in_sample": a, **{f"f_{k}": v for k, v in (f or {}).items()}})
            writer.write_bytes("calibration.json", json.dumps(fitted, indent=1).encode())
            note = f"{FOLDS}-fold out-of-fold"
            summary["coherence_auroc_in_sample"] = _metrics(rows, "score_in_sample", "in-sample")[0]["value"]
        else:
            by_set = {"coherence": [i for i, r in enumerate(rows) if r["set"] == "coherence"],
                      "sentiment": [i for i, r in enumerate(rows) if r["set"] == "sentiment"]}
            for name, idx in by_set.items():
                scorer = scorers.get("trait" if name == "sentiment" else "coherence") or next(iter(scorers.values()))
                got = score_items(scorer, scorer, store, [items[i] for i in idx], quiet)["trait_score"]
                for i, value in zip(idx, got):
                    rows[i]["score"] = value
        metrics = _metrics(rows, "score", note)
        writer.write_table(rows)
        writer.write_table(metrics, table="metrics")
        writer.write_table(_histograms(rows, "score"), table="histograms")
        coh, tra = metrics[0]["value"], metrics[1]["value"]
        writer.write_bytes("scores.png", _plot(rows, "score", f"judge {judge}: fluent-vs-degenerate AUROC {coh:.3f} "
                                                               f"({note}), positive-vs-negative {tra:.3f}"))
        writer.summary.update({"coherence_auroc": coh, "trait_auroc": tra, "estimate": note, **summary,
                               "unscored": sum(r["score"] is None for r in rows)})

    return store.build(spec, produce, force=force)
