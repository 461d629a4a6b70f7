"""The circuits report's text and its ``findings`` rows, from the numbers of
:mod:`analyses.circuits_tables` (gathered by :mod:`analyses.circuits`). Nothing here reads a
store; every number printed comes from a :class:`CircuitsFacts` field."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analyses.circuits_tables import (AblationEffect, ablation_verdict, DirectionCurve, Estimate, HeadEffect, LensLayer, PairFacts,
                                      PatchLayer, ProbeFacts, best_last, first_separated, head_role)


@dataclass(frozen=True)
class Finding:
    """One row of the ``findings`` table: a claim, its number, and whether the data support it."""

    claim: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    supported: bool
    section: str

    @classmethod
    def of(cls, claim: str, est: Estimate, supported: bool, section: str) -> "Finding":
        return cls(claim, _num(est.mean), _num(est.ci_low), _num(est.ci_high), bool(supported), section)


def _num(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


@dataclass
class CircuitsFacts:
    """Everything the report states, computed from the parent datasets' tables."""

    experiment: str
    variant: str
    prompt_set: str
    model_id: str
    pairs: PairFacts
    min_gap: float | None
    n_pairs: int | None = None
    n_templates: int | None = None
    n_questions: int | None = None
    lens: list[LensLayer] | None = None
    lens_final: dict[str, float] = field(default_factory=dict)  # side -> mean logit diff at the last layer
    probe: ProbeFacts | None = None
    patch: list[PatchLayer] = field(default_factory=list)
    heads: list[HeadEffect] = field(default_factory=list)  # the top heads, best first
    heads_all: list[HeadEffect] = field(default_factory=list)  # every head, best first
    n_heads: int = 0
    ablation: list[AblationEffect] | None = None
    random_register: dict[str, Estimate] = field(default_factory=dict)  # mode -> random heads' register change
    head_ablation: dict[tuple[int, int], tuple[float | None, float | None]] = field(default_factory=dict)  # top_heads
    direction: list[DirectionCurve] | None = None
    refs: dict[str, str] = field(default_factory=dict)


def _f(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _ci(e: Estimate, spec: str = ".2f") -> str:
    return f"{_f(e.mean, spec)} [{_f(e.ci_low, spec)}, {_f(e.ci_high, spec)}] (n = {e.n})"


def findings(facts: CircuitsFacts) -> list[Finding]:
    out: list[Finding] = []
    if facts.lens:
        last = facts.lens[-1]
        out.append(Finding.of(f"logit lens: expert side's logit diff above the child side's at the last layer "
                              f"(L{last.layer})", last.expert_minus_child, last.expert_minus_child.above_zero, "lens"))
        first = first_separated(facts.lens)
        out.append(Finding("logit lens: first layer from which the expert side stays above the child side",
                           None if first is None else float(first), None, None, first is not None, "lens"))
    if facts.probe:
        b = facts.probe.best
        for metric in ("auroc", "accuracy"):
            est = Estimate(b[metric], b[f"{metric}_ci_low"], b[f"{metric}_ci_high"], int(b.get("n_test") or 0))
            out.append(Finding.of(f"probe ({facts.probe.method}): held-out-template {metric} above chance at the best "
                                  f"layer (L{b['layer']})", est, est.ci_low > 0.5, "probe"))
    for component in sorted({p.component for p in facts.patch}):
        best = best_last(facts.patch, component)
        if best is not None:
            out.append(Finding.of(f"patching {component}: clean into corrupted at the last token restores the expert "
                                  f"answer (best layer L{best.layer})", best.last, best.last.above_zero, "patching"))
    for h in facts.heads:
        out.append(Finding.of(f"head {h.label}: patching it (all positions) restores the expert answer", h.effect,
                              h.effect.above_zero, "heads"))
        if h.last_share is not None and not math.isnan(h.last_share):
            moves = h.last_share >= 0.5 and h.last is not None and h.last.above_zero
            out.append(Finding(f"head {h.label}: its effect concentrated at the last position", h.last_share,
                               None, None, moves, "heads"))
    for a in facts.ablation or []:
        out.append(Finding.of(f"ablating {a.heads} ({a.mode}, {a.side} prompts) changes the logit diff beyond random "
                              f"heads", a.delta, a.beyond_random, "ablation"))
        if a.register_delta is not None and a.register_delta.n:
            control = facts.random_register.get(a.mode)
            beyond = a.register_delta.excludes(0.0) and (control is None or not control.n
                                                         or control.excludes(a.register_delta.mean))
            out.append(Finding.of(f"ablating {a.heads} ({a.mode}) changes the judged register of generations",
                                  a.register_delta, beyond, "ablation"))
    for c in facts.direction or []:
        out.append(Finding(f"direction patching at L{c.layer} ({c.side} prompts): logit diff monotone in alpha",
                           _num(c.rho), None, None, c.monotone, "direction"))
    return out


def report_markdown(facts: CircuitsFacts, figures: list[str]) -> str:
    lines = [f"# Persona circuits: {facts.experiment} / {facts.variant} on {facts.prompt_set}", "",
             "## 1. Objective", "",
             "Find whether the persona in the prompt (expert vs child) sets the answer's register before "
             "generation begins, and which layers and attention heads carry it to the answer.", "",
             "## 2. Model & dataset", ""]
    p = facts.pairs
    gap = f"|clean - corrupted| >= {_f(facts.min_gap, 'g')}" if facts.min_gap is not None else "the stage's min gap"
    lines += [f"- model: `{facts.model_id}` (variant `{facts.variant}`)",
              f"- persona set `{facts.prompt_set}`: {_f(facts.n_pairs, 'd')} pairs, {_f(facts.n_templates, 'd')} "
              f"templates, {_f(facts.n_questions, 'd')} questions",
              f"- pairs aligned token for token (patched): {p.aligned}; pairs used ({gap}): {p.used}; mean gap of "
              f"the used pairs {_f(p.mean_gap)} logits",
              "- metric: logit(expert token) - logit(simple token) at the last prompt token; normalised "
              "(clean = 1, corrupted = 0)", "",
              "## 3. Key results", ""]
    lines += _key_results(facts, figures)
    lines += ["", "## 4. Evidence of circuitry", ""] + _circuitry(facts)
    lines += ["", "## 5. Failures & negative results", ""] + (_negatives(facts) or ["- none found in these tables"])
    lines += ["", "## Inputs", ""] + [f"- {role}: `{ref}`" for role, ref in sorted(facts.refs.items())]
    return "\n".join(lines) + "\n"


def _key_results(facts: CircuitsFacts, figures: list[str]) -> list[str]:
    out = []
    if facts.lens:
        last = facts.lens[-1]
        first = first_separated(facts.lens)
        sides = ", ".join(f"{side} {_f(v)}" for side, v in sorted(facts.lens_final.items()))
        out += [f"- logit lens (last prompt token): at the last layer L{last.layer} the mean logit diff is {sides}; "
                f"expert - child (paired over pairs) {_ci(last.expert_minus_child)}",
                "- " + (f"the expert side stays above the child side from layer L{first} on" if first is not None
                        else "the expert side never stays above the child side to the last layer")]
    if "figures/logit_diff.png" in figures:
        out += ["", "![logit difference per layer by side](figures/logit_diff.png)", ""]
    for component in ("residual", "attn_out", "mlp_out"):
        rows = [r for r in facts.patch if r.component == component]
        if not rows:
            continue
        best = best_last(facts.patch, component)
        per = "; ".join(f"L{r.layer} {_f(r.last.mean)} / {_f(r.persona.mean)}" for r in rows)
        out.append(f"- patching {component}, normalised effect at the last token / at the persona tokens, by layer: "
                   f"{per}" + (f"; best at the last token: L{best.layer} {_ci(best.last)}" if best else ""))
    if "figures/patching.png" in figures:
        out += ["", "![normalised patching effect by layer](figures/patching.png)", ""]
    if facts.probe:
        b = facts.probe.best
        out.append(f"- probe ({facts.probe.method}, templates held out): best layer L{b['layer']}: accuracy "
                   f"{_f(b['accuracy'])} [{_f(b['accuracy_ci_low'])}, {_f(b['accuracy_ci_high'])}], AUROC "
                   f"{_f(b['auroc'])} [{_f(b['auroc_ci_low'])}, {_f(b['auroc_ci_high'])}] on {b.get('n_test')} "
                   f"held-out prompts")
    return out or ["- no logit lens, patching or probe tables given"]


def _circuitry(facts: CircuitsFacts) -> list[str]:
    if not facts.heads:
        return ["- no head patching table: no head is named"]
    out = [f"Top {len(facts.heads)} of {facts.n_heads} heads by normalised patching effect (all positions):", "",
           "| head | patch effect [95% CI] | last-token share | ablation (zero / mean) | role |", "|---|---|---|---|---|"]
    for h in facts.heads:
        own = facts.head_ablation.get((h.layer, h.head))  # the ablation stage's per-head deltas (top_heads)
        abl = (" / ".join(_f(x, "+.2f") for x in own) if own else
               " / ".join(_f(a.delta.mean, "+.2f") for mode in ("zero", "mean") for a in facts.ablation or []
                          if a.heads == h.label and a.mode == mode and a.side == "clean") or "n/a")
        out.append(f"| {h.label} | {_ci(h.effect)} | {_f(h.last_share, '.0%')} | {abl} | {head_role(h)} |")
    if facts.ablation:
        out += ["", "Ablation (change of the logit diff vs the unablated model; random heads of the same count as "
                "the control):", ""]
        for a in facts.ablation:
            rng = "no random control" if a.random_range is None else (
                f"random heads {_f(a.random_range[0], '+.2f')} .. {_f(a.random_range[1], '+.2f')}")
            verdict = ablation_verdict(a)
            out.append(f"- {a.heads}, {a.mode} ablation, {a.side} prompts: {_ci(a.delta, '+.2f')} vs {rng}: {verdict}")
            if a.register_delta is not None and a.register_delta.n:
                control = facts.random_register.get(a.mode)
                out.append(f"  - judged register during generation: {_ci(a.register_delta, '+.2f')}"
                           + (f" (random heads {_ci(control, '+.2f')})" if control is not None and control.n else ""))
    if facts.direction:
        out += ["", "Direction patching (α x the probe direction over the prompt; mean change of the logit diff):", ""]
        for c in facts.direction:
            steps = ", ".join(f"α={a:g}: {_f(d.mean, '+.2f')}" for a, d in zip(c.alphas, c.deltas))
            out.append(f"- L{c.layer}, {c.side} prompts: {steps} (Spearman ρ {_f(c.rho)}; "
                       f"{'monotone' if c.monotone else 'not monotone'})")
    return out


def _negatives(facts: CircuitsFacts) -> list[str]:
    out = []
    if facts.pairs.tiny_gap:
        named = ", ".join(f"{pid} ({gap:.3f})" for pid, gap in facts.pairs.tiny_gap)
        out.append(f"- {len(facts.pairs.tiny_gap)} pair(s) with a tiny clean - corrupted gap, left out of every "
                   f"normalised number: {named}")
    if facts.lens and first_separated(facts.lens) is None:
        out.append("- the logit lens does not separate the sides at the last layer: no decision point found")
    if facts.probe and facts.probe.chance_layers:
        out.append(f"- probe near chance (AUROC interval contains 0.5) at layers "
                   f"{', '.join(f'L{x}' for x in facts.probe.chance_layers)}")
    for component in sorted({p.component for p in facts.patch}):
        best = best_last(facts.patch, component)
        if best is not None and not best.last.above_zero:
            out.append(f"- patching {component} at the last token restores nothing distinguishable from 0 at any layer "
                       f"(best L{best.layer}: {_ci(best.last)})")
    weak = [h.label for h in facts.heads if not h.effect.above_zero]
    if weak:
        out.append(f"- top heads whose patch effect interval includes 0: {', '.join(weak)}")
    for a in facts.ablation or []:
        if not a.beyond_random:
            out.append(f"- ablating {a.heads} ({a.mode}, {a.side} prompts) is {ablation_verdict(a)} "
                       f"({_f(a.delta.mean, '+.2f')}): no evidence these heads matter more than any others")
    for c in facts.direction or []:
        if not c.monotone:
            out.append(f"- direction patching at L{c.layer} ({c.side} prompts) is not monotone in α "
                       f"(Spearman ρ {_f(c.rho)})")
    for role, missing in (("per-position head patching", facts.heads and all(h.last_share is None for h in facts.heads)),
                          ("head ablation", facts.ablation is None), ("direction patching", facts.direction is None)):
        if missing:
            out.append(f"- not run: {role} (no such dataset given)")
    return out


def findings_rows(items: list[Finding]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [asdict(f) for f in items]
