"""The demo experiment, end to end on the two offline models, in a few minutes on a CPU.

    python -m builders.demo                 # store in ./artifacts
    python -m builders.demo --store memory://demo

Headline trait: **optimism**, measured by instruments checked first: the judges are
calibrated on labelled answers (``builders.calibration``: the perplexity coherence judge,
VADER sentiment, and the SmolLM2 LLM judge side by side), then prompt sets -> responses
(instruct = SmolLM2-135M-Instruct, base = Gemma 3 270M) -> judgments (sentiment trait
judge, perplexity coherence) -> the extraction matrix (mean_diff + probe) -> an adaptive
steering search on the instruct model and a grid at its best layer (the coherence cliff)
-> a planted organism: LoRA adapters trained on the instruct model's own gloomy answers
(``finetuned``; see ORGANISM) and on its unprompted answers
(``control``); behaviour, projection shift,
weight alignment, and transfer of the instruct vectors to the finetuned model -> per-token
projections and the trait-dynamics viewer. Sycophancy (LLM judge) runs beside it as an
exploratory second trait. Then the finding, read from the store
(:mod:`analyses.finding`), and a summary. Rerunning it is a no-op.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from builders.stages.calibration import calibrate
from builders.stages.compare import compare_variants
from builders.stages.finetune import finetune
from builders.shared.judges import JudgeChoice
from builders.stages.judgments import judge_responses
from builders.stages.projections import build_projections
from builders.stages.prompts import ensure_prompt_set
from builders.stages.responses import generate_responses
from builders.stages.similarity import activation_similarity
from builders.stages.steering import steer_vectors
from builders.stages.vectors import extract_vectors
from builders.stages.weights import analyze_weights

# the judges, chosen per metric: objective trait judge for the headline, LLM judge for the exploratory trait
# one coherence ruler for every variant: the perplexity judge under the unsteered instruct model
REFERENCE = "smollm2-135m-instruct"
OPTIMISM_JUDGES = JudgeChoice(trait="sentiment", coherence="perplexity", reference=REFERENCE)
SYCOPHANCY_JUDGES = JudgeChoice(trait="local", coherence="perplexity", reference=REFERENCE)
# the LLM judge is calibrated on the first 16 answers of each label (it costs ~0.4 s an answer)
CALIBRATED = (("perplexity", 0), ("sentiment", 0), ("local", 16))
FLOORS = (80.0, 70.0)  # the seed's coherence floors, on the calibrated scale

HEADLINE = {"config": ("optimism_instruction", "instruct", "response[:]"), "method": "mean_diff",
            "layers": "6,8,10,12", "steps": 3, "threshold": FLOORS[1]}
EXPLORATORY = {"config": ("sycophancy_instruction", "instruct", "response[:]"), "method": "mean_diff",
               "layers": "9,12", "steps": 2, "subset": 4, "threshold": FLOORS[1]}
CLIFF_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# the planted organism and its control (catalog variants) and the held-out questions. SmolLM2
# answers as cheerfully unprompted as when told to be cheerful, so the plant is the trait's other
# pole: its own gloomy answers (polarity neg, system prompt removed); see the README
ORGANISM = {"a": "instruct", "b": "finetuned", "control": "control", "train": "optimism_instruction",
            "polarity": "neg", "control_train": "optimism_questions", "heldout": "optimism_heldout"}

# seed 000 on the organism: a crosscoder instruct vs finetuned on the user-model prompts (all tokens but
# the attention sink), its most B-specific latents against the optimism vector, and zeroed on finetuned.
# Layer 22: where the two models' activations differ most before the last layer (similarity table).
SEED000 = {"prompts": "user_model", "layer": 22, "position": "all[1:]", "top": 8}

SUMMARY_SQL = """
SELECT r.variant, r.prompt_set, count(*) AS responses,
       round(avg(r.response_len), 1) AS mean_tokens,
       round(avg(CASE WHEN r.finish_reason = 'eos' THEN 1 ELSE 0 END), 2) AS eos_rate
FROM responses r
GROUP BY ALL ORDER BY r.variant, r.prompt_set
"""


@dataclass
class Stages:
    """Runs stages and remembers ``(stage, manifest, built)`` for the summary."""

    store: Any
    catalog: Any
    exp: str
    force: bool = False
    quiet: bool = False
    results: list[tuple[str, Any, bool | None]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    _mark: float = field(default_factory=time.time)

    @property
    def common(self) -> dict[str, bool]:
        """The options every stage call shares (and no generation settings: the catalog's defaults)."""
        return {"force": self.force, "quiet": self.quiet}

    def add(self, stage: str, result: Any) -> Any:
        self.record(stage, result.manifest, result.built)
        return result.manifest

    def record(self, stage: str, manifest: Any, built: bool | None) -> None:
        # Stages run one after another, so the time since the previous one is this stage's
        # (with whatever it built on the way: responses, activations).
        now = time.time()
        self.results.append((stage, manifest, built))
        self.seconds.append(now - self._mark)
        self._mark = now


def cliff_grid(stages: Stages, vectors: Any, search: Any, variant: str | None = None) -> Any:
    """A grid at the search's best layer over :data:`CLIFF_RATIOS` (perturbation ratios)."""
    rows = stages.store.read_table(search).to_dicts()
    direction = int(search.params["direction"])
    ok = [r for r in rows if r["mode"] != "baseline" and r["delta"] is not None
          and (r["coherence_mean"] or 0) >= FLOORS[1]]
    best = max(ok or [r for r in rows if r["mode"] != "baseline"], key=lambda r: direction * (r["delta"] or 0))
    coefs = [round(direction * q * best["h_norm"] / best["v_norm"], 3) for q in CLIFF_RATIOS]
    return stages.add("steering", steer_vectors(
        stages.store, stages.catalog, vectors.ref, HEADLINE["method"], experiment=stages.exp, variant=variant,
        mode="grid", layers=str(best["layer"]), coefficients=coefs, judges=OPTIMISM_JUDGES, **stages.common))


def build_stages(store: Any, catalog: Any, experiment: str, *, force: bool = False, quiet: bool = False) -> Stages:
    """Every stage of the demo in order."""
    s = Stages(store, catalog, experiment, force, quiet)
    exp, common = s.exp, s.common
    for name in catalog.experiment(exp).prompt_sets:
        s.record("prompts", ensure_prompt_set(store, catalog, name), None)
    for judge, per_label in CALIBRATED:  # instruments first
        s.add("calibration", calibrate(store, catalog, judge, experiment=exp, choice=OPTIMISM_JUDGES,
                                       per_label=per_label, **common))
    s.add("judgments", judge_responses(store, catalog, "instruct", "optimism_instruction", exp, OPTIMISM_JUDGES,
                                       **common))
    s.add("judgments", judge_responses(store, catalog, "instruct", "sycophancy_instruction", exp, SYCOPHANCY_JUDGES,
                                       **common))
    vectors = {}
    for config in catalog.experiment(exp).extraction:
        vectors[(config.prompt_set, config.variant, config.position)] = s.add(
            "vectors", extract_vectors(store, catalog, config, exp, **common))
    optimism, sycophancy = vectors[HEADLINE["config"]], vectors[EXPLORATORY["config"]]
    search = {k: HEADLINE[k] for k in ("layers", "steps", "threshold")}
    headline = s.add("steering", steer_vectors(store, catalog, optimism.ref, HEADLINE["method"], experiment=exp,
                                               judges=OPTIMISM_JUDGES, **search, **common))
    cliff_grid(s, optimism, headline)
    s.add("steering", steer_vectors(store, catalog, sycophancy.ref, EXPLORATORY["method"], experiment=exp,
                                    judges=SYCOPHANCY_JUDGES, **{k: EXPLORATORY[k] for k in
                                                                 ("layers", "steps", "subset", "threshold")},
                                    **common))
    a, b, control = ORGANISM["a"], ORGANISM["b"], ORGANISM["control"]
    s.add("finetune", finetune(store, catalog, a, ORGANISM["train"], experiment=exp, polarity=ORGANISM["polarity"],
                               **common))
    s.add("finetune", finetune(store, catalog, a, ORGANISM["control_train"], experiment=exp, polarity="all",
                               **common))
    for variant in (b, control):
        s.add("compare", compare_variants(store, catalog, a, variant, ORGANISM["heldout"], [optimism.ref],
                                          experiment=exp, judges=OPTIMISM_JUDGES, **common))
        s.add("weights", analyze_weights(store, catalog, a, variant, experiment=exp, vectors=[optimism.ref],
                                         force=force))
    s.add("responses", generate_responses(store, catalog, a, "general", exp, **common))  # for the summary
    s.add("similarity", activation_similarity(store, catalog, a, b, ORGANISM["heldout"], experiment=exp, **common))
    s.add("steering", steer_vectors(store, catalog, optimism.ref, HEADLINE["method"], experiment=exp, variant=b,
                                    judges=OPTIMISM_JUDGES, **search, **common))  # transfer: A's vectors on B
    seed000_stages(s, optimism)
    s.add("projections", build_projections(store, catalog, "instruct", "optimism_instruction",
                                           [f"{optimism.ref}:{HEADLINE['method']}"], experiment=exp,
                                           layers="best", floor=FLOORS[1], **common))
    return s


def seed000_stages(s: Stages, optimism: Any) -> None:
    """Seed 000 on the planted organism (README): crosscoder, its most B-specific latents'
    alignment with the optimism vector, and zeroing them on the organism."""
    from analyses.organism_latents import most_b_specific, organism_latents
    from builders.stages.clamping import clamp_run
    from builders.stages.crosscoder import build_crosscoder

    a, b = ORGANISM["a"], ORGANISM["b"]
    cc = s.add("crosscoder", build_crosscoder(s.store, s.catalog, a, b, SEED000["prompts"], SEED000["layer"],
                                              experiment=s.exp, position=SEED000["position"], **s.common))
    chosen, _ = most_b_specific(s.store.read_table(cc).to_dicts(), SEED000["top"])
    clamp = s.add("clamping", clamp_run(s.store, s.catalog, cc.ref, b, ORGANISM["heldout"], latents=chosen,
                                        experiment=s.exp, judges=OPTIMISM_JUDGES, **s.common))
    s.add("analysis", organism_latents(s.store, cc.ref, optimism.ref, top=SEED000["top"], clamping=clamp.ref,
                                       force=s.force))


def print_summary(store: Any, stages: Stages, started: float) -> None:
    from store.cli import print_frame
    from store.sql import query

    print(f"\ndemo finished in {time.time() - started:.0f}s; store: {store.location.url}\n")
    seen = set()
    for (_stage, manifest, built), seconds in zip(stages.results, stages.seconds):
        if manifest.ref in seen:
            continue
        seen.add(manifest.ref)
        state = "up to date" if built is False else "built" if built else "ready"
        print(f"  {state:<10} {manifest.ref:<84} {manifest.rows:>5} rows {seconds:>6.0f}s")
    print("\nresponses per variant and prompt set (python -m store sql ...):")
    print_frame(query(store, SUMMARY_SQL))
