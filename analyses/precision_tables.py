"""The numbers of the precision comparison (:mod:`analyses.precision`), from published
vectors and steering runs: pure functions over numpy arrays and row dicts, no models.

- :func:`cosine_rows`: per layer, cosine of a variant's vector with the reference's and the
  norm ratio ``‖v‖ / ‖v_ref‖``;
- :func:`steering_rows`: per steered configuration, the trait delta (steered minus
  unsteered, question by question) with a 95% t interval, coherence, and the per-question
  difference of that delta from the reference's at the same layer and coefficient;
- :func:`same_answers`: how many of the variant's answers to the trait prompts are the
  reference's, token for token (own-responses vectors move with every answer that differs);
- :func:`verdicts`: one plain sentence per precision; :func:`figure`: the PNG.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from builders.shared.figures import png_bytes, subplots

# bf16 keeps 8 significant bits; vectors this close point the same way for every purpose
# steering or monitoring has (seed 002's question is whether low precision *breaks* them)
CLOSE_COSINE = 0.9


def cosine_rows(variant: str, precision: str, method: str, layers: Sequence[int], vectors_LD: Any,
                reference_LD: Any) -> list[dict[str, Any]]:
    """Per layer: ``cosine`` with the reference's vector and ``norm_ratio`` = ‖v‖ / ‖v_ref‖."""
    import numpy as np

    from transforms.stats import cosine

    a = np.asarray(vectors_LD, dtype=np.float64)
    b = np.asarray(reference_LD, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{variant}: vectors of shape {a.shape} cannot be compared with the reference's {b.shape}")
    rows = []
    for i, layer in enumerate(layers):
        na, nb = float(np.linalg.norm(a[i])), float(np.linalg.norm(b[i]))
        cos = float(cosine(a[i], b[i])) if na > 0 and nb > 0 else None  # a zero vector has no direction
        rows.append({"variant": variant, "precision": precision, "method": method, "layer": int(layer),
                     "cosine": None if cos is None else max(-1.0, min(1.0, cos)),
                     "norm": na, "reference_norm": nb, "norm_ratio": na / nb if nb > 0 else None})
    return rows


def same_answers(reference: list[dict[str, Any]], rows: list[dict[str, Any]]) -> tuple[int, int]:
    """``(identical, compared)``: responses rows (``prompt_id``, ``rollout``, ``token_ids``,
    ``prompt_len``) whose generated token ids equal the reference's for the same prompt."""
    def answers(table: list[dict[str, Any]]) -> dict[tuple[str, int], list[int]]:
        return {(r["prompt_id"], r["rollout"]): list(r["token_ids"][r["prompt_len"]:]) for r in table}

    ref, own = answers(reference), answers(rows)
    shared = [k for k in own if k in ref]
    return sum(own[k] == ref[k] for k in shared), len(shared)


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None, float | None, float | None]:
    """``(mean, sample std, 95% t-interval low, high)``; the interval needs two values."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return None, None, None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def _per_question(responses: list[dict[str, Any]], run_id: str, column: str) -> dict[str, float]:
    return {r["question_id"]: r[column] for r in responses if r["run_id"] == run_id and r[column] is not None}


def paired_deltas(runs: list[dict[str, Any]],
                  responses: list[dict[str, Any]]) -> dict[tuple[int, float], dict[str, float]]:
    """``{(layer, coef): {question_id: steered trait − unsteered trait}}`` of one steering run."""
    base = next(r for r in runs if r["mode"] == "baseline")
    unsteered = _per_question(responses, base["run_id"], "trait")
    out = {}
    for row in runs:
        if row["mode"] == "baseline" or row["layer"] is None:
            continue
        steered = _per_question(responses, row["run_id"], "trait")
        out[(int(row["layer"]), float(row["coef"]))] = {q: steered[q] - unsteered[q] for q in steered if q in unsteered}
    return out


def steering_rows(variant: str, precision: str, runs: list[dict[str, Any]], responses: list[dict[str, Any]],
                  reference: dict[tuple[int, float], dict[str, float]] | None) -> list[dict[str, Any]]:
    """One row per steered (layer, coef) of a grid run; ``reference``: the reference's
    :func:`paired_deltas` (None for the reference itself)."""
    base = next(r for r in runs if r["mode"] == "baseline")
    deltas = paired_deltas(runs, responses)
    out = []
    for row in runs:
        if row["mode"] == "baseline" or row["layer"] is None:
            continue
        key = (int(row["layer"]), float(row["coef"]))
        mean, sd, lo, hi = mean_ci(list(deltas[key].values()))
        diff: tuple[Any, ...] = (None, None, None, None)
        if reference is not None and key in reference:
            ref = reference[key]
            diff = mean_ci([d - ref[q] for q, d in deltas[key].items() if q in ref])
        out.append({"variant": variant, "precision": precision, "layer": key[0], "coef": key[1],
                    "perturbation_ratio": row.get("perturbation_ratio"), "v_norm": row.get("v_norm"),
                    "baseline_trait": base["trait_mean"], "trait_mean": row["trait_mean"], "delta": mean,
                    "delta_std": sd, "delta_ci_lo": lo, "delta_ci_hi": hi, "n": len(deltas[key]),
                    "coherence_mean": row["coherence_mean"], "baseline_coherence": base["coherence_mean"],
                    "delta_vs_reference": diff[0], "delta_vs_reference_ci_lo": diff[2],
                    "delta_vs_reference_ci_hi": diff[3]})
    return out


def _fmt(x: float | None, spec: str = "+.1f") -> str:
    return "n/a" if x is None else format(x, spec)


def verdicts(reference: str, ref_precision: str, cosines: list[dict[str, Any]], steering: list[dict[str, Any]],
             method: str, answers: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """One verdict row per compared precision: the lowest cosine over layers (of the steered
    method), and per steered configuration whether the delta differs from the reference's
    (the 95% interval of the per-question difference excludes 0) — stated plainly."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in cosines):
        rows = [r for r in cosines if r["variant"] == variant and r["method"] == method and r["cosine"] is not None]
        precision = rows[0]["precision"] if rows else variant
        worst = min(rows, key=lambda r: r["cosine"]) if rows else None
        parts = [f"{precision} ({variant}) vs {ref_precision} ({reference}), {method}:"]
        same, total = answers.get(variant, (0, 0))
        if total:
            parts.append(f"{total - same}/{total} answers to the trait prompts differ from the reference's;")
        if worst is not None:
            mean_cos = sum(r["cosine"] for r in rows) / len(rows)
            close = "close" if worst["cosine"] >= CLOSE_COSINE else f"NOT close (below {CLOSE_COSINE})"
            parts.append(f"vectors {close}: min cosine {worst['cosine']:.3f} (layer {worst['layer']}), "
                         f"mean {mean_cos:.3f} over {len(rows)} layers;")
        same = True
        for s in (r for r in steering if r["variant"] == variant):
            ref = next((r for r in steering if r["variant"] == reference and r["layer"] == s["layer"]
                        and r["coef"] == s["coef"]), None)
            lo, hi = s["delta_vs_reference_ci_lo"], s["delta_vs_reference_ci_hi"]
            differs = lo is not None and (lo > 0 or hi < 0)
            same = same and not differs and lo is not None
            parts.append(f"layer {s['layer']} coef {s['coef']:g}: steering delta {_fmt(s['delta'])} vs "
                         f"{_fmt(ref and ref['delta'])}, difference {_fmt(s['delta_vs_reference'])} "
                         f"(95% CI {_fmt(lo)} to {_fmt(hi)}, n {s['n']}): "
                         + ("DIFFERS from" if differs else "within the noise of" if lo is not None
                            else "too few questions to compare with")
                         + f" {ref_precision}; coherence {_fmt(s['coherence_mean'], '.1f')} vs "
                         f"{_fmt(ref and ref['coherence_mean'], '.1f')};")
        steers = [s for s in steering if s["variant"] == variant]
        out.append({"variant": variant, "precision": precision, "method": method,
                    "min_cosine": None if worst is None else worst["cosine"],
                    "min_cosine_layer": None if worst is None else worst["layer"],
                    "vectors_close": None if worst is None else worst["cosine"] >= CLOSE_COSINE,
                    "steers_like_reference": same if steers else None,
                    "answers_identical": answers.get(variant, (None, None))[0],
                    "answers_compared": answers.get(variant, (None, None))[1],
                    "text": " ".join(parts).rstrip(";") + "."})
    return out


def figure(cosines: list[dict[str, Any]], steering: list[dict[str, Any]], method: str, title: str) -> bytes:
    """Left: cosine to the reference per layer, one line per precision; right: steering
    delta per precision and configuration with its 95% interval."""
    fig, (left, right) = subplots(1, 2, figsize=(11, 4))
    for variant in dict.fromkeys(r["variant"] for r in cosines):
        pts = [(r["layer"], r["cosine"]) for r in cosines
               if r["variant"] == variant and r["method"] == method and r["cosine"] is not None]
        if pts:
            xs, ys = zip(*pts)
            left.plot(xs, ys, marker="o", markersize=3, label=next(r["precision"] for r in cosines
                                                                   if r["variant"] == variant))
    left.axhline(CLOSE_COSINE, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel("layer")
    left.set_ylabel(f"cosine to the reference's {method} vector")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    configs = sorted({(r["layer"], r["coef"]) for r in steering})
    precisions = list(dict.fromkeys(r["precision"] for r in steering))
    width = 0.8 / max(1, len(configs))
    for j, (layer, coef) in enumerate(configs):
        rows = {r["precision"]: r for r in steering if (r["layer"], r["coef"]) == (layer, coef)}
        xs = [i + j * width for i, p in enumerate(precisions) if p in rows]
        ys = [rows[p]["delta"] or 0.0 for p in precisions if p in rows]
        err = [[(rows[p]["delta"] or 0.0) - (rows[p]["delta_ci_lo"] if rows[p]["delta_ci_lo"] is not None
                                              else rows[p]["delta"] or 0.0) for p in precisions if p in rows],
               [(rows[p]["delta_ci_hi"] if rows[p]["delta_ci_hi"] is not None else rows[p]["delta"] or 0.0)
                - (rows[p]["delta"] or 0.0) for p in precisions if p in rows]]
        right.bar(xs, ys, width=width, yerr=err, capsize=3, label=f"layer {layer}, coef {coef:g}")
    right.set_xticks([i + width * (len(configs) - 1) / 2 for i in range(len(precisions))])
    right.set_xticklabels(precisions, fontsize=8)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_ylabel("trait delta (steered − unsteered), 95% CI")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)
