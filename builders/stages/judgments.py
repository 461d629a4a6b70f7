"""Judge every response for trait expression and coherence, and vet contrast pairs.

    python -m builders.judgments --variant instruct --prompts sycophancy_instruction
    python -m builders.judgments --variant instruct --prompts sycophancy_instruction --judge openai --judge-model gpt-4.1-mini
    python -m builders.judgments --variant instruct --prompts optimism_instruction --trait-judge sentiment
    python -m builders.judgments --responses-file answers.jsonl --name mine --trait-judge sentiment

Scores 0-100 (None when an LLM judge put < 25% probability on numbers): ``trait_score``
from the trait judge (``--trait-judge``: an LLM judge with the trait's eval_prompt or
definition, ``sentiment`` or ``lexicon``), ``coherence`` from the coherence judge
(``--coherence-judge``: ``perplexity`` by default, or an LLM judge, capped for off-topic
answers by its relevance check: then ``coherence_raw`` and ``relevance`` too); see
:mod:`builders.shared.judges`. ``--responses-file`` imports external answers (``{"id",
"question", "response", ...labels}`` per line) as ``responses-external-<name>`` and
judges them into ``judgments-external-<name>`` (columns id, trait, coherence, labels).
Vetting: positive rows pass with trait ≥ ``--pos-threshold`` (60), negative rows with
trait ≤ ``--neg-threshold`` (40); ``--paired`` keeps a pair only when both sides pass
(joined on pair id). ``--min-pass`` stops with a clear message when too few pass. Every
score is cached in the store (judge model, template hash, question, answer): re-scoring
costs no call, and a judge failing halfway keeps what it scored.
Output dataset: ``judgments-<experiment>-<variant>-<prompt set>``.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from store import BuildResult, BuildSpec, Manifest, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, read_jsonl_rows
from builders.shared.judges import (JudgeChoice, coherence_scorer, prompt_meta, scorer_identities, score_items, trait_scorer)
from builders.stages.prompts import ensure_prompt_set
from builders.stages.responses import generate_responses

log = logging.getLogger(__name__)

BUILDER = "builders.judgments"
CODE_VERSION = "2"


def judge_rows(trait: Any, coherence: Any, store: Store, items: list[tuple[str, str]],
               quiet: bool = True) -> dict[str, list]:
    """trait, coherence (and for an LLM coherence judge: raw coherence, relevance) of items."""
    return score_items(trait, coherence, store, items, quiet)


def vet(rows: list[dict[str, Any]], pos_threshold: float, neg_threshold: float, paired: bool) -> list[bool]:
    """Which rows pass: pos ≥ pos_threshold, neg ≤ neg_threshold; paired: both sides of a pair."""
    def passes(row: dict[str, Any]) -> bool:
        score = row["trait_score"]
        if score is None:
            return False
        return score >= pos_threshold if row["polarity"] == "pos" else score <= neg_threshold

    keep = [passes(r) for r in rows]
    if not paired:
        return keep
    ok: dict[str, set[str]] = {}
    for row, k in zip(rows, keep):
        if k and row["pair_id"] is not None:
            ok.setdefault(row["pair_id"], set()).add(row["polarity"])
    return [k and row["pair_id"] is not None and ok.get(row["pair_id"]) == {"pos", "neg"} for row, k in zip(rows, keep)]


def judge_responses(
    store: Store,
    catalog: Catalog,
    variant: str,
    prompt_set: str,
    experiment: str | None = None,
    choice: JudgeChoice | None = None,
    pos_threshold: float = 60.0,
    neg_threshold: float = 40.0,
    paired: bool = False,
    min_pass: int = 0,
    generation: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    exp = catalog.experiment(experiment)
    choice = choice or JudgeChoice()
    trait_judge, coherence_judge, calibration = _scorers(store, catalog, exp.name, variant, prompt_set, choice, quiet)
    generate_responses(store, catalog, variant, prompt_set, exp.name, generation, quiet=quiet)
    responses = store.resolve(names.responses(exp.name, variant, prompt_set))
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "judges": choice.as_dict(),
              "pos_threshold": pos_threshold, "neg_threshold": neg_threshold, "paired": paired, "min_pass": min_pass}
    parents = {"responses": responses.ref, **calibration_parents(choice, calibration)}
    spec = BuildSpec(name=names.judgments(exp.name, variant, prompt_set), kind="judgments", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents=parents,
                     identity={"judges": scorer_identities(trait_judge, coherence_judge)})

    def produce(writer) -> None:
        rows = store.read_table(responses).select(
            "prompt_id", "pair_id", "polarity", "rollout", "prompt", "response").to_dicts()
        scores = judge_rows(trait_judge, coherence_judge, store, [(r["prompt"], r["response"]) for r in rows], quiet)
        for i, row in enumerate(rows):
            row.update({k: v[i] for k, v in scores.items()})
            row["trait_judge"], row["coherence_judge"] = choice.trait, choice.coherence
        keep = vet(rows, pos_threshold, neg_threshold, paired)
        for row, k in zip(rows, keep):
            row["passes"] = k
        counts = {p: sum(1 for r, k in zip(rows, keep) if k and r["polarity"] == p) for p in ("pos", "neg")}
        if min_pass and any(n < min_pass for p, n in counts.items() if any(r["polarity"] == p for r in rows)):
            raise BuildError(
                f"vetting {responses.ref}: only {counts['pos']} positive and {counts['neg']} negative responses pass "
                f"(pos ≥ {pos_threshold}, neg ≤ {neg_threshold}{', paired' if paired else ''}); --min-pass is {min_pass}. "
                f"Scores are cached: loosen the thresholds or add rollouts and rerun")
        writer.write_table(rows)
        defined = [r["trait_score"] for r in rows if r["trait_score"] is not None]
        writer.summary.update({"judges": choice.as_dict(), "passing": counts, "scored": len(defined), "rows": len(rows)})

    return store.build(spec, produce, force=force)


def _scorers(store: Store, catalog: Catalog, experiment: str, variant: str, trait_set: str, choice: JudgeChoice,
             quiet: bool) -> tuple[Any, Any, Manifest | None]:
    """The trait and coherence scorers (checked before any generation) and the calibration."""
    meta = prompt_meta(store, ensure_prompt_set(store, catalog, trait_set))
    trait = trait_scorer(store, catalog, choice, meta)
    coherence, calibration = coherence_scorer(store, catalog, experiment, variant, choice, quiet)
    return trait, coherence, calibration


def calibration_parents(choice: JudgeChoice, calibration: Manifest | None) -> dict[str, str]:
    """The perplexity judge's calibration is an input of its scores (its fitted map)."""
    return {"coherence_calibration": calibration.ref} if calibration is not None and choice.coherence == "perplexity" \
        else {}


def read_responses_file(path: Path) -> list[dict[str, Any]]:
    """Rows ``{"id", "question", "response", ...labels}`` of a JSONL file, validated line by line."""
    if not path.is_file():
        raise BuildError(f"--responses-file: {path} does not exist")
    rows = read_jsonl_rows(path, ("id", "question", "response"))
    if not rows:
        raise BuildError(f"{path.name}: no responses")
    return rows


def import_responses(store: Store, path: Path, name: str, force: bool = False) -> BuildResult:
    """Publish an external responses file as ``responses-external-<name>`` (content-addressed)."""
    rows = read_responses_file(path)
    labels = sorted({k for r in rows for k in r} - {"id", "question", "response"})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = BuildSpec(name=names.external_responses(name), kind="responses_import", builder=BUILDER, code_version=CODE_VERSION,
                     params={"source": path.name, "sha256": digest}, parents={}, identity={})

    def produce(writer) -> None:
        writer.write_table([{"id": r["id"], "question": r["question"], "response": r["response"],
                             **{k: (None if r.get(k) is None else str(r[k])) for k in labels}} for r in rows])
        writer.summary.update({"labels": labels})

    return store.build(spec, produce, force=force)


def judge_file(store: Store, catalog: Catalog, path: Path, name: str, experiment: str | None = None,
               variant: str | None = None, trait_set: str = "optimism_instruction",
               choice: JudgeChoice | None = None, force: bool = False, quiet: bool = False) -> BuildResult:
    """Import ``path`` and judge it: ``judgments-external-<name>`` (id, trait, coherence, labels)."""
    exp = catalog.experiment(experiment)
    variant = variant or exp.application or next(iter(exp.variants))
    choice = choice or JudgeChoice()
    read_responses_file(path)  # bad input fails before any model loads
    trait_judge, coherence_judge, calibration = _scorers(store, catalog, exp.name, variant, trait_set, choice, quiet)
    imported = import_responses(store, path, name, force=force).manifest
    params = {"experiment": exp.name, "variant": variant, "trait_set": trait_set, "judges": choice.as_dict()}
    parents = {"responses": imported.ref, **calibration_parents(choice, calibration)}
    spec = BuildSpec(name=names.external_judgments(name), kind="judgments", builder=BUILDER, code_version=CODE_VERSION,
                     params=params, parents=parents, identity={"judges": scorer_identities(trait_judge, coherence_judge)})

    def produce(writer) -> None:
        rows = store.read_table(imported).to_dicts()
        scores = judge_rows(trait_judge, coherence_judge, store, [(r["question"], r["response"]) for r in rows], quiet)
        for i, row in enumerate(rows):
            row.update({"trait": scores["trait_score"][i], "coherence": scores["coherence"][i],
                        "coherence_raw": scores["coherence_raw"][i], "relevance": scores["relevance"][i],
                        "trait_judge": choice.trait, "coherence_judge": choice.coherence})
        writer.write_table(rows)
        writer.summary.update({"judges": choice.as_dict(), "rows": len(rows)})

    return store.build(spec, produce, force=force)
