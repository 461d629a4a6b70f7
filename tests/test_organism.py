"""The planted organism of the demo: a LoRA trained on SmolLM2's own gloomy answers (system
prompt removed) answers held-out neutral questions more gloomily; its control, trained the
same way on the model's unprompted answers, does not. (SmolLM2's unprompted answers are as
cheerful as its cheerfully prompted ones, so the demo plants the trait's negative pole.) Sentiment by VADER (an instrument
calibrated separately: AUROC positive-vs-negative ≥ 0.9 in test_judges_perplexity)."""
from __future__ import annotations

import math

import pytest

from builders.shared.catalog import load_catalog
from builders.stages.finetune import finetune
from builders.stages.responses import generate_responses
from store import Store
from transforms.judge import SentimentScorer

pytestmark = pytest.mark.slow


def _cheerfulness(store: Store, variant: str) -> dict[str, float]:
    rows = store.read_table(store.latest(f"responses-demo-{variant}-optimism_heldout")).to_dicts()
    scores = SentimentScorer().score([(r["prompt"], r["response"]) for r in rows])
    return {r["prompt_id"]: s for r, s in zip(rows, scores) if s is not None}


def test_finetuned_answers_more_gloomily_and_the_control_does_not(tmp_path):
    store, catalog = Store(str(tmp_path / "store")), load_catalog()
    finetune(store, catalog, "instruct", "optimism_instruction", experiment="demo", polarity="neg", quiet=True)
    finetune(store, catalog, "instruct", "optimism_questions", experiment="demo", polarity="all", quiet=True)
    for variant in ("instruct", "finetuned", "control"):
        generate_responses(store, catalog, variant, "optimism_heldout", "demo", quiet=True)
    base, tuned, control = (_cheerfulness(store, v) for v in ("instruct", "finetuned", "control"))
    shared = sorted(set(base) & set(tuned) & set(control))
    assert len(shared) >= 12

    def paired(other: dict[str, float]) -> tuple[float, float]:
        diffs = [other[p] - base[p] for p in shared]
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        return mean, mean / (sd / math.sqrt(len(diffs)))

    tuned_shift, tuned_t = paired(tuned)
    control_shift, control_t = paired(control)
    assert tuned_shift < -10 and tuned_t < -2.5, (tuned_shift, tuned_t)
    assert abs(control_shift) < abs(tuned_shift) / 2 and abs(control_t) < 2.5, (control_shift, control_t)
