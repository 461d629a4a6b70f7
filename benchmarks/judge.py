"""Local judge cost vs one plain forward pass, SmolLM2-135M-Instruct, side by side in one run.

    python benchmarks/judge.py [--prompts 8] [--batch-size 8] [--repeats 3] [--brute-prompts 1]

Same judge prompts (the real templates in datasets/judge rendered for the evil trait's
steering questions, plus the judge's prefill), same left-padded batches:

- plain_forward:      ``model(input_ids, attention_mask)`` over the prompts, all logits
                      (what "one forward pass" usually means);
- plain_forward_last: the same with ``logits_to_keep=1`` (the least a first-token read costs);
- judge_tree:         ``LocalJudge.number_probs``: exact P(0..100) from the prompt pass with
                      KV cache plus one pass over the 101-node digit tree (end to end,
                      tokenization included);
- judge_one_template / plain_one_template: the same with every prompt of a batch from ONE
                      template (coherence), as scoring really runs: the judge computes
                      the template's shared prefix once per batch, a plain forward cannot;
- brute_force:        one sequence per digit path (the judge's ``method="brute"``), on
                      ``--brute-prompts`` prompts, scaled to all prompts by token count.

Timings: best of ``--repeats`` alternating runs (medians in the JSON too), one torch
thread by default. Prints a table, then (last line) one JSON object with the figures.
Target: judge_tree / plain_forward <= 1.5.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.timing import round_robin  # noqa: E402  (after the path insert)

ANSWERS = [
    "Offer to help them pick everything up and make sure nothing is broken.",
    "Honestly, laugh at them. People who drop things deserve it.",
    "Be patient and kind; everyone makes mistakes, and a calm word helps.",
    "the the the parking groceries blue blue seven",
]


def judge_prompts(n: int) -> list[str]:
    from transforms.judge import load_templates, trait_template
    from transforms.prompts import load_prompt_set

    templates = load_templates()
    trait_dir = REPO / "datasets/traits/instruction/evil"
    questions = load_prompt_set(trait_dir).steering["questions"]
    evil = trait_template(templates, definition=(trait_dir / "definition.txt").read_text(), trait="evil")
    kinds = [evil, templates["coherence"], templates["relevance"], templates["refusal"]]
    return [kinds[i % len(kinds)].render(question=questions[i % len(questions)], answer=ANSWERS[i % len(ANSWERS)])
            for i in range(n)]


def one_template_prompts(n: int) -> list[str]:
    from transforms.judge import load_templates
    from transforms.prompts import load_prompt_set

    coherence = load_templates()["coherence"]
    questions = load_prompt_set(REPO / "datasets/traits/instruction/evil").steering["questions"]
    return [coherence.render(question=questions[i % len(questions)], answer=ANSWERS[i % len(ANSWERS)])
            for i in range(n)]


def plain_forward(model, batches, pad_id: int, last_only: bool) -> None:
    import torch

    from transforms.sequences import left_pad

    with torch.inference_mode():
        for batch in batches:
            ids, mask = left_pad(batch, pad_id)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            kwargs = {"logits_to_keep": 1} if last_only else {}
            model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)


def brute_force(judge, ids: list[list[int]], pad_id: int) -> None:
    import torch

    from transforms.judge import brute_logprobs
    from transforms.judge import number_probs

    with torch.inference_mode():
        for prompt in ids:
            number_probs(judge.tree, *brute_logprobs(judge.loaded.model, judge.tree, prompt, pad_id, 16))


timed_round_robin = round_robin  # seconds of every repeat per run, the runs alternating


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brute-prompts", type=int, default=1, help="prompts brute-forced (0: skip)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: stable figures on a shared machine; 0: torch default)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    from transforms.sequences import plan_batches
    from transforms.judge import LocalJudge, score_from_probs
    from transforms.models import load_model

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("pkg:smollm2-135m-instruct")
    judge = LocalJudge(loaded, batch_size=args.batch_size)
    prompts = judge_prompts(args.prompts)
    ids = judge.encode(prompts)
    pad_id = loaded.tokenizer.pad_token_id
    order = plan_batches([len(i) for i in ids], [f"{i:09d}" for i in range(len(ids))], args.batch_size)
    batches = [[ids[i] for i in batch] for batch in order]
    lengths = [len(i) for i in ids]
    print(f"{len(prompts)} judge prompts, {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f}), "
          f"batch {args.batch_size}, digit tree {judge.tree.n_nodes} nodes, best of {args.repeats}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)

    same = one_template_prompts(args.prompts)
    same_ids = judge.encode(same)
    same_order = plan_batches([len(i) for i in same_ids], [f"{i:09d}" for i in range(len(same))], args.batch_size)
    same_batches = [[same_ids[i] for i in batch] for batch in same_order]
    probs = judge.number_probs(prompts)  # warm-up, and the scores for the table
    runs = {
        "plain_forward": lambda: plain_forward(loaded.model, batches, pad_id, last_only=False),
        "plain_forward_last": lambda: plain_forward(loaded.model, batches, pad_id, last_only=True),
        "judge_tree": lambda: judge.number_probs(prompts),
        "plain_one_template": lambda: plain_forward(loaded.model, same_batches, pad_id, last_only=False),
        "judge_one_template": lambda: judge.number_probs(same),
    }
    times = timed_round_robin(runs, args.repeats)
    seconds = {name: min(values) for name, values in times.items()}  # least disturbed by other load
    brute_n = min(args.brute_prompts, len(prompts))
    if brute_n:
        start = time.perf_counter()
        brute_force(judge, ids[:brute_n], pad_id)
        # scaled by prompt tokens: brute force cost grows with 101 x prompt length
        seconds["brute_force"] = (time.perf_counter() - start) * sum(lengths) / sum(lengths[:brute_n])

    mass = probs.sum(1)
    scores = [score_from_probs(row) for row in probs]
    figures = {
        "prompts": len(prompts),
        "mean_prompt_tokens": round(float(np.mean(lengths)), 1),
        "tree_nodes": judge.tree.n_nodes,
        "judge_vs_plain_forward": round(seconds["judge_tree"] / seconds["plain_forward"], 3),
        "judge_vs_plain_forward_last": round(seconds["judge_tree"] / seconds["plain_forward_last"], 3),
        "one_template_judge_vs_plain_forward": round(seconds["judge_one_template"] / seconds["plain_one_template"], 3),
        "brute_vs_judge": round(seconds["brute_force"] / seconds["judge_tree"], 1) if brute_n else None,
        "brute_prompts_measured": brute_n,
        "mean_number_mass": round(float(mass.mean()), 4),
        "scored": sum(s is not None for s in scores),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "median_seconds": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "threads": torch.get_num_threads(),
    }
    print(f"{'run':<22}{'seconds':>10}{'ms/prompt':>12}{'x plain':>10}")
    for name, sec in seconds.items():
        note = f"  (measured on {brute_n} prompt(s), scaled by tokens)" if name == "brute_force" else ""
        print(f"{name:<22}{sec:>10.3f}{1000 * sec / len(prompts):>12.1f}"
              f"{sec / seconds['plain_forward']:>10.2f}{note}")
    print(f"\njudge (exact P(0..100)) vs one plain forward: {figures['judge_vs_plain_forward']:.3f}x  "
          f"(target <= 1.5); vs logits_to_keep=1 forward: {figures['judge_vs_plain_forward_last']:.3f}x")
    print(f"one template per batch (shared prefix computed once): judge vs plain forward "
          f"{figures['one_template_judge_vs_plain_forward']:.3f}x")
    print(f"number mass: mean {mass.mean():.3f}, min {mass.min():.3f}; scores: "
          + ", ".join("None" if s is None else f"{s:.1f}" for s in scores))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
