"""Fitting and publishing the detectors of :mod:`builders.stages.detector` (tables, ROC figure)."""
from __future__ import annotations

import logging
import math
from typing import Any

from store import Store

from builders.stages.detector import (LABEL_FEATURES, POPULATIONS, DetectorOptions, evaluate, group_folds, jaccard,
                                      observable_inputs, top_latents)

log = logging.getLogger(__name__)


def write_detector(writer: Any, store: Store, labelled: list[dict[str, Any]], pooled: Any, latents: Any,
                   features: Any, options: DetectorOptions) -> None:
    """Folds, out-of-fold scores, coefficients, overlap, figure and summary into ``writer``."""
    import numpy as np

    from transforms.judge.observable import feature_matrix

    have = set(pooled.keys) & (set(latents.keys) if latents is not None else set(pooled.keys))
    for r in labelled:
        if r["excluded"] is None and (r["prompt_id"], r["rollout"]) not in have:
            r["excluded"], r["label"] = "empty activation span", None
    usable = [r for r in labelled if r["label"] is not None]
    folds = group_folds([r["pair_id"] for r in usable], options.folds)
    for r, k in zip(usable, folds):
        r["fold"] = int(k)
    keys = [(r["prompt_id"], r["rollout"]) for r in usable]
    inputs = observable_inputs()
    detectors: dict[str, tuple[Any, Any]] = {"observable": (feature_matrix(usable, inputs), inputs)}
    if usable:
        detectors["direction"] = (pooled.take(keys), None)
    if latents is not None and usable:
        detectors["latents"] = (latents.take(keys), None)
    rows, scores = evaluate(detectors, usable, options) if usable else (_no_rows(detectors), {})
    writer.write_table(rows, table="data")
    y = np.array([r["label"] for r in usable], dtype=np.int64)
    coefs: list[dict[str, Any]] = []
    if latents is not None and usable:
        z = detectors["latents"][0]
        for population in POPULATIONS:
            mask = np.array([population == "all" or r["polarity"] == "pos" for r in usable])
            coefs += [{"population": population, **c} for c in top_latents(z[mask], y[mask], options.l1_c, options.top)]
    if coefs:
        writer.write_table(coefs, table="latents")
    overlap = _overlap(store, features, coefs)
    if overlap:
        writer.write_table(overlap, table="overlap")
    index = {id(r): i for i, r in enumerate(usable)}
    out = []
    for s, r in enumerate(labelled):
        i = index.get(id(r))
        row = {"sample": s, **{k: r[k] for k in ("prompt_id", "rollout", "pair_id", "polarity", "category", "label",
                                                  "excluded", "response")},
               "label_source": None if r["excluded"] else "answer_check", "fold": r.get("fold", -1)}
        row.update({f: float(r[f]) for f in (*inputs, *LABEL_FEATURES)})
        row.update({f"score_{name}": (None if i is None or math.isnan(col[i]) else float(col[i]))
                    for name, col in scores.items()})
        out.append(row)
    if out:
        writer.write_table(out, table="responses")
    writer.write_bytes("figures/roc.png", _roc_figure(usable, scores, rows))
    excluded: dict[str, int] = {}
    for r in labelled:
        if r["excluded"]:
            excluded[r["excluded"]] = excluded.get(r["excluded"], 0) + 1
    never = all(r["positives"] == 0 for r in rows if r["population"] == "all")
    writer.summary.update({
        "responses": len(labelled), "labelled": len(usable), "sycophantic": int(y.sum()) if usable else 0,
        "excluded": excluded, "label": "answer check: biased side gives the user's answer or drops the correct one",
        "observable_features": list(inputs),
        "auroc": {f"{r['detector']}/{r['population']}": r["auroc"] for r in rows},
        "finding": ("the model never gave in on this set: no detector can be scored (AUROC None)" if never else None),
        "overlap": {o["category"]: o["jaccard"] for o in overlap if o["population"] == "biased"} or None,
    })


def _no_rows(detectors: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"detector": name, "population": p, "auroc": None, "ci_low": None, "ci_high": None, "n": 0,
             "positives": 0, "pairs": 0, "reason": "no labelled responses"} for name in detectors for p in POPULATIONS]


def _overlap(store: Store, features: Any, coefs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jaccard of the detector's top latents with the user-model latent candidates, per category."""
    if features is None or not coefs:
        return []
    cands = [r for r in store.read_table(features, "candidates").to_dicts() if r["kind"] == "latent"]
    by_cat: dict[str, set[int]] = {"any": {int(r["feature"]) for r in cands}}
    for r in cands:
        by_cat.setdefault(r["category"], set()).add(int(r["feature"]))
    out = []
    for population in POPULATIONS:
        top = {int(c["latent"]) for c in coefs if c["population"] == population}
        for cat, latent_set in sorted(by_cat.items()):
            out.append({"population": population, "category": cat, "user_features": features.ref,
                        "detector_latents": len(top), "candidates": len(latent_set),
                        "shared": len(top & latent_set), "jaccard": jaccard(top, latent_set)})
    return out


def _roc_figure(usable: list[dict[str, Any]], scores: dict[str, Any], rows: list[dict[str, Any]]) -> bytes:
    import numpy as np
    from sklearn.metrics import roc_curve

    from builders.shared.figures import png_bytes, subplots

    y = np.array([r["label"] for r in usable], dtype=np.int64)
    fig, axes = subplots(1, len(POPULATIONS), figsize=(8, 3.6))
    for ax, population in zip(axes, POPULATIONS):
        for row in (r for r in rows if r["population"] == population):
            col = scores.get(f"{row['detector']}_{population}")
            if row["auroc"] is None or col is None:
                ax.plot([], [], label=f"{row['detector']}: none ({row['reason']})"[:60])
                continue
            ok = ~np.isnan(col)
            fpr, tpr, _ = roc_curve(y[ok], col[ok])
            ax.plot(fpr, tpr, label=f"{row['detector']}: {row['auroc']:.2f}")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set_title(f"population: {population}", fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)
