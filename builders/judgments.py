"""Judge every response for trait expression and coherence, and vet contrast pairs.

    python -m builders.judgments --variant instruct --prompts sycophancy_instruction
    python -m builders.judgments --variant instruct --prompts sycophancy_instruction --judge openai --judge-model gpt-4.1-mini

Scores (0-100, None when the judge put < 25% probability on numbers): ``trait_score``
(the trait's eval_prompt, or the trait_score template bound to its definition.txt),
``coherence`` (capped for off-topic answers by the relevance check) and ``relevance``.
Vetting: positive rows pass with trait ≥ ``--pos-threshold`` (60), negative rows with
trait ≤ ``--neg-threshold`` (40); ``--paired`` keeps a pair only when both sides pass
(joined on pair id). ``--min-pass`` stops with a clear message when too few pass. Every
score is cached in the store (judge model, template hash, question, answer): re-scoring
costs no call, and a judge failing halfway keeps what it scored.
Output dataset: ``judgments-<experiment>-<variant>-<prompt set>``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store

from .catalog import Catalog
from .common import (BuildError, add_experiment_args, base_parser, cached_model, open_store_and_catalog, progress,
                     report, run)
from .judge_cache import StoreScoreCache
from .responses import dataset_name as responses_name
from .responses import generate_responses

log = logging.getLogger(__name__)

BUILDER = "builders.judgments"
CODE_VERSION = "1"
DEFAULT_LOCAL_JUDGE = "pkg:smollm2-135m-instruct"


def dataset_name(experiment: str, variant: str, prompt_set: str) -> str:
    return f"judgments-{experiment}-{variant}-{prompt_set}"


def make_judge(backend: str, model: str | None, concurrency: int = 8) -> Any:
    """A judge by backend name: ``local`` (in-process HF chat model) or ``openai``
    (any OpenAI-compatible endpoint: OPENAI_API_KEY, OPENAI_BASE_URL)."""
    from transforms.judge import LocalJudge, OpenAIJudge

    if backend == "local":
        return LocalJudge(cached_model(model or DEFAULT_LOCAL_JUDGE))
    if backend == "openai":
        if not model:
            raise BuildError("--judge openai needs --judge-model (e.g. gpt-4.1-mini)")
        return OpenAIJudge(model, base_url=os.environ.get("OPENAI_BASE_URL"), concurrency=concurrency)
    raise BuildError(f"--judge: unknown backend {backend!r} (local, openai)")


def trait_judge_template(store: Store, prompts: Manifest) -> Any:
    from transforms.judge import load_templates
    from transforms.judge.templates import trait_template

    meta = json.loads(store.read_bytes(prompts, "prompt_set.json"))
    steering = meta.get("steering") or {}
    return trait_template(load_templates(), meta.get("definition"), steering.get("eval_prompt"),
                          meta.get("trait") or meta["name"])


def judge_rows(judge: Any, store: Store, items: list[tuple[str, str]], trait_template: Any,
               quiet: bool = True) -> dict[str, list]:
    """trait, coherence (relevance-capped) and relevance scores for (question, answer) items."""
    from transforms.judge import apply_relevance_cap, load_templates, score_responses

    templates = load_templates()
    cache = StoreScoreCache(store)
    bar = progress(3 * len(items), "judge scores", quiet)
    try:
        tick = lambda index, score: bar.update(1)  # noqa: E731
        trait = score_responses(judge, trait_template, items, cache, on_result=tick)
        coherence = score_responses(judge, templates["coherence"], items, cache, on_result=tick)
        relevance = score_responses(judge, templates["relevance"], items, cache, on_result=tick)
    finally:
        bar.close()
    return {"trait_score": trait, "coherence_raw": coherence, "relevance": relevance,
            "coherence": [apply_relevance_cap(c, r) for c, r in zip(coherence, relevance)]}


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
    backend: str = "local",
    judge_model: str | None = None,
    pos_threshold: float = 60.0,
    neg_threshold: float = 40.0,
    paired: bool = False,
    min_pass: int = 0,
    generation: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    exp = catalog.experiment(experiment)
    generate_responses(store, catalog, variant, prompt_set, exp.name, generation, quiet=quiet)
    responses = store.resolve(responses_name(exp.name, variant, prompt_set))
    prompts = store.resolve(responses.parents["prompts"])
    judge_id = f"{backend}:{judge_model or DEFAULT_LOCAL_JUDGE}"
    template = trait_judge_template(store, prompts)
    from transforms.judge import load_templates

    templates = load_templates()
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "judge": judge_id,
              "templates": {"trait": template.hash, "coherence": templates["coherence"].hash,
                            "relevance": templates["relevance"].hash},
              "pos_threshold": pos_threshold, "neg_threshold": neg_threshold, "paired": paired, "min_pass": min_pass}
    spec = BuildSpec(name=dataset_name(exp.name, variant, prompt_set), kind="judgments", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents={"responses": responses.ref},
                     identity={"judge": judge_id})

    def produce(writer) -> None:
        rows = store.read_table(responses).select(
            "prompt_id", "pair_id", "polarity", "rollout", "prompt", "response").to_dicts()
        judge = make_judge(backend, judge_model)
        scores = judge_rows(judge, store, [(r["prompt"], r["response"]) for r in rows], template, quiet)
        for i, row in enumerate(rows):
            row.update({k: v[i] for k, v in scores.items()})
            row["judge_model"] = judge.model_id
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
        writer.summary.update({"judge": judge.model_id, "passing": counts, "scored": len(defined), "rows": len(rows)})

    return store.build(spec, produce, force=force)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.judgments", "Judge responses for trait and coherence; vet pairs.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, action="append", metavar="SET", help="prompt set (repeatable)")
    parser.add_argument("--judge", default="local", choices=("local", "openai"))
    parser.add_argument("--judge-model", help=f"model id (local default {DEFAULT_LOCAL_JUDGE})")
    parser.add_argument("--pos-threshold", type=float, default=60.0)
    parser.add_argument("--neg-threshold", type=float, default=40.0)
    parser.add_argument("--paired", action="store_true", help="keep a pair only when both sides pass")
    parser.add_argument("--min-pass", type=int, default=0, help="stop when fewer rows of a polarity pass")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    for prompt_set in args.prompts:
        report(judge_responses(store, catalog, args.variant, prompt_set, args.experiment, args.judge, args.judge_model,
                               args.pos_threshold, args.neg_threshold, args.paired, args.min_pass,
                               force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
