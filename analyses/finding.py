"""The demo's finding, read from the store: does steering move the trait, and does model
diffing recover a planted one?

    python -m analyses.finding [--experiment demo] [--trait-set optimism_instruction]

Steering (the application variant's adaptive search and the grid at its best layer): best
layer and coefficient at coherence ≥ the floor, the delta against the unsteered baseline,
the coherence cliff (the first perturbation ratio whose mean coherence falls below the
floor), the vectors' held-out validation accuracy at that layer, and how far per-token
projections separate positive from negative responses of the **validation split** only (the
training split made the vectors, so it would separate by construction).

Planted organism (variants ``finetuned`` and ``control`` of the same model): (a) behaviour
on held-out questions (paired per question, sentiment judge), (b) the projection shift
along the trait vector (``builders.compare``) against the control's and random directions,
(c) weight-diff alignment with the vector against random directions (``builders.weights``),
(d) transfer of the vectors to the finetuned model. Each line says plainly when the
pipeline does not find what was planted.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

from builders.shared import names
from store import Store


def _rows(store: Store, name: str, table: str = "data") -> list[dict[str, Any]]:
    if name not in store.datasets():
        return []
    return store.read_table(store.latest(name), table).to_dicts()


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _paired(diffs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, standard error, t) of paired differences."""
    n = len(diffs)
    if n < 2:
        return _mean(diffs), float("nan"), float("nan")
    m = _mean(diffs)
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    return m, se, (m / se if se > 0 else float("inf") if m else 0.0)


def _auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Probability a positive outranks a negative (ties count half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _cohens_d(pos: Sequence[float], neg: Sequence[float]) -> float:
    from transforms.stats import cohens_d

    return cohens_d(pos, neg)


def _best(rows: list[dict[str, Any]], floor: float) -> dict[str, Any] | None:
    ok = [r for r in rows if r["mode"] != "baseline" and r["delta"] is not None and (r["coherence_mean"] or 0) >= floor]
    return max(ok, key=lambda r: r["direction"] * r["delta"], default=None)


def calibration_lines(store: Store) -> list[str]:
    """One line per published judge calibration: the instruments' AUROCs side by side."""
    lines = []
    for name in store.datasets():
        m = store.latest(name)
        if m.kind != "judge_calibration":
            continue
        s = m.summary
        lines.append(f"  {name.removeprefix('judge-calibration-'):<36} fluent vs degenerate {s['coherence_auroc']:.3f} "
                     f"({s['estimate']}), positive vs negative {s['trait_auroc']:.3f}, {m.rows} answers")
    return lines


def steering_finding(store: Store, exp: str, variant: str, short: str, method: str, floor: float) -> dict[str, Any]:
    search = _rows(store, names.steering(exp, variant, short, method, "adaptive"))
    grid = _rows(store, names.steering(exp, variant, short, method, "grid"))
    best = _best(search + [r for r in grid if r["mode"] != "baseline"], floor)
    out: dict[str, Any] = {"baseline_trait": None if best is None else best["baseline_trait"], "best": best}
    ladder = sorted((r for r in grid if r["mode"] == "grid"), key=lambda r: r["perturbation_ratio"])
    out["ladder"] = [{k: r[k] for k in ("perturbation_ratio", "coef", "trait_mean", "coherence_mean")} for r in ladder]
    out["cliff_ratio"] = next((r["perturbation_ratio"] for r in ladder if (r["coherence_mean"] or 0) < floor), None)
    return out


def vector_finding(store: Store, vectors: str, method: str, layer: int | None) -> dict[str, Any]:
    rows = [r for r in _rows(store, vectors) if r["method"] == method and r["layer"] == layer]
    return rows[0] if rows else {}


def projection_finding(store: Store, exp: str, variant: str, trait_set: str, vectors: str, method: str,
                       layer: int | None) -> dict[str, Any]:
    """Separation of positive vs negative responses by their mean response-token projection,
    on the vectors' validation split."""
    if vectors not in store.datasets():
        return {}
    val = {r["sample_id"] for r in store.read_table(store.latest(vectors), "split").to_dicts() if r["split"] == "val"}
    per_sample: dict[str, list[float]] = {}
    for r in _rows(store, names.projections(exp, variant, trait_set)):
        if r["layer"] == layer and r["vector"].endswith(f":{method}") and r["is_response"] and r["sample"] in val:
            per_sample.setdefault(r["sample"], []).append(r["score"])
    pos = [_mean(v) for s, v in per_sample.items() if s.startswith("pos-")]
    neg = [_mean(v) for s, v in per_sample.items() if s.startswith("neg-")]
    return {"n_pos": len(pos), "n_neg": len(neg), "auroc": _auroc(pos, neg), "d": _cohens_d(pos, neg)}


def _judged(store: Store, ref: str | None) -> dict[str, float]:
    """Mean trait score per prompt (over rollouts) of exactly the judgments version ``ref``."""
    per: dict[str, list[float]] = {}
    if ref is not None:
        for r in store.read_table(store.resolve(ref)).to_dicts():
            if r["trait_score"] is not None:
                per.setdefault(r["prompt_id"], []).append(r["trait_score"])
    return {p: _mean(v) for p, v in per.items()}


def behaviour_finding(store: Store, exp: str, a: str, b: str, prompt_set: str) -> dict[str, Any]:
    """Paired per question, on the judgments the comparison of ``a`` and ``b`` recorded as parents
    (so both sides were scored by the same judges)."""
    name = names.compare(exp, a, b, prompt_set)
    parents = store.latest(name).parents if name in store.datasets() else {}
    score = {v: _judged(store, parents.get(f"judgments_{v}")) for v in (a, b)}
    shared = sorted(set(score[a]) & set(score[b]))
    mean, se, t = _paired([score[b][p] - score[a][p] for p in shared])
    return {"n": len(shared), "a": _mean([score[a][p] for p in shared]), "b": _mean([score[b][p] for p in shared]),
            "diff": mean, "se": se, "t": t}


def shift_finding(store: Store, exp: str, a: str, b: str, prompt_set: str, vectors_ref_prefix: str,
                  n_layers: int, plant: int = 1) -> dict[str, Any]:
    rows = [r for r in _rows(store, names.compare(exp, a, b, prompt_set)) if r["vectors"].startswith(vectors_ref_prefix)]
    mid = [r for r in rows if 0.3 * n_layers <= r["layer"] <= 0.7 * n_layers]
    return {"layers": len(rows), "mid_layers": len(mid), "mid_planted": sum(plant * r["shift"] > 0 for r in mid),
            "mid_shift": _mean([r["shift"] for r in mid]), "mid_d_paired": _mean([r["d_paired"] for r in mid]),
            "mid_random_share": _mean([r.get("random_share_as_aligned") or 0.0 for r in mid])}


def weight_finding(store: Store, exp: str, a: str, b: str) -> dict[str, Any]:
    rows = _rows(store, names.weights(exp, a, b), "alignment")
    above = [r for r in rows if abs(r["cosine"]) > r["random_abs_cos_p95"]]
    manifest = store.latest(names.weights(exp, a, b)) if rows else None
    top = ([r for r in store.read_table(manifest, "directions_alignment").to_dicts() if r["index"] == 0]
           if manifest is not None and "directions_alignment" in manifest.tables else [])
    singular = {m: {"layers": len(rs), "above_p95": sum(abs(r["cosine"]) > r["random_abs_cos_p95"] for r in rs),
                    "mean_abs_cos": _mean([abs(r["cosine"]) for r in rs])}
                for m in sorted({r["matrix"] for r in top}) for rs in [[r for r in top if r["matrix"] == m]]}
    return {"layers": len(rows), "above_p95": len(above), "mean_abs_cos": _mean([abs(r["cosine"]) for r in rows]),
            "random_mean": _mean([r["random_abs_cos_mean"] for r in rows]),
            "best": max(rows, key=lambda r: abs(r["cosine"]), default=None), "singular": singular}


def _f(x: Any, spec: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def finding_report(store: Store, experiment: str = "demo", trait_set: str = "optimism_instruction",
                   application: str = "instruct", method: str = "mean_diff", floor: float = 70.0,
                   organism: tuple[str, str] = ("finetuned", "control"), heldout: str = "optimism_heldout",
                   n_layers: int = 30, plant: int = 1) -> str:
    """The finding as text, every number read from published versions. ``plant``: the
    direction the organism was trained in along the trait (+1 the trait, -1 its opposite)."""
    # the demo's headline vectors: response tokens (slug ``response__``), residual stream
    short = names.vectors_short(application, trait_set, "response__", "residual")
    vectors = names.vectors(experiment, application, trait_set, "response__", "residual")
    s = steering_finding(store, experiment, application, short, method, floor)
    best = s["best"]
    layer = None if best is None else best["layer"]
    lines = ["# Instruments: judge calibration AUROCs (coherence gates steering at ≥ 0.9)", "",
             *calibration_lines(store), "",
             f"# Finding: {trait_set} on {application}", ""]
    if best is None:
        lines.append(f"steering: no configuration kept coherence ≥ {floor:g}: no steering effect to report")
    else:
        goal = "met" if best["direction"] * best["delta"] >= 20 else "NOT met"
        verb = "adding" if best["direction"] > 0 else "suppressing"
        lines.append(f"steering ({verb} the trait): best layer {layer}, coefficient {best['coef']:.2f} "
                     f"(perturbation ratio {_f(best['perturbation_ratio'], '.2f')}): trait {best['trait_mean']:.1f} vs "
                     f"baseline {s['baseline_trait']:.1f}, delta {best['delta']:+.1f} at coherence "
                     f"{best['coherence_mean']:.1f} ≥ {floor:g} (goal ≥ 20: {goal})")
    ladder = ", ".join(f"{r['perturbation_ratio']:.2f}→{_f(r['trait_mean'], '.0f')}/{_f(r['coherence_mean'], '.0f')}"
                       for r in s["ladder"])
    cliff = s["cliff_ratio"]
    lines.append(f"coherence cliff at layer {layer}: " + (f"first below {floor:g} at perturbation ratio {cliff:.2f}"
                 if cliff is not None else f"none up to ratio {max(r['perturbation_ratio'] for r in s['ladder']):.2f}"
                 if s["ladder"] else "no grid run") + (f" (ratio→trait/coherence: {ladder})" if ladder else ""))
    v = vector_finding(store, vectors, method, layer)
    lines.append(f"vectors at layer {layer}: validation accuracy {_f(v.get('val_accuracy'), '.2f')}, AUROC "
                 f"{_f(v.get('val_auroc'), '.2f')} on {v.get('n_val', 'n/a')} held-out responses")
    p = projection_finding(store, experiment, application, trait_set, vectors, method, layer)
    if p:
        lines.append(f"per-token projections (layer {layer}, validation split, mean over response tokens): positive vs "
                     f"negative responses AUROC {_f(p['auroc'], '.2f')}, Cohen's d {_f(p['d'], '.2f')} "
                     f"({p['n_pos']} vs {p['n_neg']})")
    b, c = organism
    pole = "positive" if plant > 0 else "negative"
    lines += ["", f"# Planted organism: {b} (trained on {application}'s own {pole}-pole answers) vs {c} (its "
              f"unprompted answers); the plant moves the trait {'up' if plant > 0 else 'down'}", ""]
    for variant in (b, c):
        beh = behaviour_finding(store, experiment, application, variant, heldout)
        found = "found" if plant * beh["diff"] > 0 and abs(beh["t"]) >= 2 else "NOT found"
        lines.append(f"(a) behaviour, {variant} vs {application} on {beh['n']} held-out questions: trait "
                     f"{_f(beh['b'])} vs {_f(beh['a'])}, paired diff {_f(beh['diff'], '+.1f')} ± {_f(beh['se'])} "
                     f"(t = {_f(beh['t'], '.2f')}): shift in the planted direction {found}")
    for variant in (b, c):
        sh = shift_finding(store, experiment, application, variant, heldout, vectors, n_layers, plant)
        lines.append(f"(b) projection shift {variant} − {application} along the vector: in the planted direction at "
                     f"{sh['mid_planted']}/{sh['mid_layers']} mid layers, mean {_f(sh['mid_shift'], '+.3f')}, paired d "
                     f"{_f(sh['mid_d_paired'], '+.2f')}; random directions as aligned: {_f(sh['mid_random_share'], '.1%')}")
    for variant in (b, c):
        w = weight_finding(store, experiment, application, variant)
        verdict = "above" if w["above_p95"] > w["layers"] / 2 else "NOT above"
        lines.append(f"(c) Δθ ({variant}) alignment with the vector: |cos| {_f(w['mean_abs_cos'], '.3f')} vs random "
                     f"{_f(w['random_mean'], '.3f')}; above the random 95th percentile at {w['above_p95']}/{w['layers']} "
                     f"layers ({verdict} the random baseline)")
        for matrix, sv in w["singular"].items():
            lines.append(f"    top singular direction of Δ{matrix}: |cos| {_f(sv['mean_abs_cos'], '.3f')}, above the "
                         f"random 95th percentile at {sv['above_p95']}/{sv['layers']} layers")
    t = steering_finding(store, experiment, b, short, method, floor)
    tb = t["best"]
    lines.append(f"(d) transfer: {application}'s vectors steering {b}: " + (
        f"best delta {tb['delta']:+.1f} at layer {tb['layer']} (coherence {tb['coherence_mean']:.1f})" if tb
        else f"no configuration kept coherence ≥ {floor:g}"))
    lines += seed000_lines(store, experiment, application, b)
    return "\n".join(lines)


def seed000_lines(store: Store, experiment: str, a: str, b: str) -> list[str]:
    """(e) the crosscoder of A and the organism (analyses.organism_latents), when the demo built it."""
    prefix = f"analysis-crosscoder-{experiment}-{a}-{b}-"
    found = sorted(n for n in store.datasets() if n.startswith(prefix))
    if not found:
        return []
    manifest = store.resolve(found[0])
    row = store.read_table(manifest).to_dicts()[0]
    picked = ("b_only latents" if row["selection"] == "b_only" else
              f"most B-leaning latents (none b_only; lowest dec_norm_diff {row['min_dec_norm_diff']:.2f})")
    aligned = "aligned" if row["p_value"] < 0.05 else "NOT aligned"
    line = (f"(e) crosscoder {a} vs {b}, layer {row['layer']}: its {row['n_selected']} {picked} are {aligned} with the "
            f"vector (span share {row['span_fraction']:.3f} vs random {row['null_span_mean']:.3f}, p = "
            f"{row['p_value']:.2g}); decoder-bias difference cos {row['bias_difference_cosine']:+.3f}")
    if row.get("zero_chosen_trait_delta") is not None:
        line += (f"; zeroing them on {b}: trait {row['zero_chosen_trait_delta']:+.1f} (random latents "
                 f"{_f(row.get('zero_random_trait_delta'), '+.1f')}), coherence "
                 f"{_f(row.get('zero_chosen_coherence_delta'), '+.1f')}")
    return [line]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.finding", description=__doc__.split("\n")[0])
    parser.add_argument("--store")
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--trait-set", default="optimism_instruction")
    parser.add_argument("--floor", type=float, default=70.0)
    parser.add_argument("--plant", type=int, choices=(1, -1), default=-1,
                        help="direction the organism was trained in (the demo plants the negative pole: -1)")
    args = parser.parse_args(argv)
    print(finding_report(Store(args.store), args.experiment, args.trait_set, floor=args.floor, plant=args.plant))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
