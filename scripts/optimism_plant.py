"""Can an optimism organism be planted in SmolLM2? (the measurement behind the demo's choice)

    .venv/bin/python scripts/optimism_plant.py --store ./artifacts [--rollouts 4 --temperature 0.8 --vet 80]

Samples the instruct model's cheerfully prompted answers (``--rollouts`` at ``--temperature``),
keeps those the sentiment judge scores ≥ ``--vet``, trains the demo's ``finetuned`` LoRA on
them (system prompt removed), and compares held-out cheerfulness with the instruct model,
paired per question. It publishes new versions of ``finetune-demo-instruct-optimism_instruction-pos``
and responses (the catalog's ``finetuned`` variant is pointed at it for this run only); the
demo's own organism (the gloomy pole) is unaffected. Measured: +1.2 ± 5.4 (t = 0.23), 28 answers kept.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile

from builders.shared.catalog import DEFAULT_CATALOG, load_catalog
from builders.stages.finetune import finetune
from builders.shared.judges import JudgeChoice
from builders.stages.judgments import judge_responses
from builders.stages.responses import generate_responses
from store import Store
from transforms.judge import SentimentScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="./artifacts")
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--vet", type=float, default=80.0)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    # the catalog's "finetuned" variant, pointed at the cheerful adapter this script trains
    text = DEFAULT_CATALOG.read_text().replace("adapter: finetune-demo-instruct-optimism_instruction-neg",
                                               "adapter: finetune-demo-instruct-optimism_instruction-pos")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=DEFAULT_CATALOG.parent, delete=False) as handle:
        handle.write(text)
    try:
        catalog = load_catalog(handle.name)
    finally:
        os.unlink(handle.name)
    store = Store(args.store)
    gen = {"rollouts": args.rollouts, "temperature": args.temperature}
    judges = JudgeChoice(trait="sentiment", coherence="perplexity", reference="smollm2-135m-instruct")
    judged = judge_responses(store, catalog, "instruct", "optimism_instruction", "demo", judges,
                             pos_threshold=args.vet, neg_threshold=50, generation=gen, quiet=True).manifest
    tuned = finetune(store, catalog, "instruct", "optimism_instruction", experiment="demo", polarity="pos",
                     passing_only=True, generation=gen, epochs=args.epochs, quiet=True).manifest
    scorer = SentimentScorer()
    scores = {}
    for variant in ("instruct", "finetuned"):
        rows = store.read_table(generate_responses(store, catalog, variant, "optimism_heldout", "demo",
                                                   quiet=True).manifest).to_dicts()
        scores[variant] = {r["prompt_id"]: s for r, s in zip(rows, scorer.score([(r["prompt"], r["response"])
                                                                                 for r in rows]))}
    diffs = [scores["finetuned"][p] - scores["instruct"][p] for p in scores["instruct"]]
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    print(f"trained on {tuned.summary['sequences']} cheerful answers (of {judged.summary['passing']}); "
          f"held-out cheerfulness finetuned − instruct: {mean:+.1f} ± {se:.1f} (t = {mean / se:.2f})")


if __name__ == "__main__":
    main()
