"""Greedy generation throughput by batch size on the CPU, measured side by side in one run.

    python benchmarks/generation_batch.py [--prompts 64] [--tokens 32] [--repeats 2] [--model pkg:smollm2-135m-instruct]

The same chat-formatted prompts (the user-model minimal pairs, as the seed 000 crosscoder
answers them) generated with ``transforms.sequences.generate_batch`` - what
``builders.responses`` runs - at batch 8 (the CPU's ``auto`` before), 16, 32
(:data:`transforms.batching.CPU_GENERATION_BATCH`) and 64, every run exactly
``--tokens`` new tokens. A decoding step reads every weight once for the whole batch, so
on the CPU a step costs nearly the same for 8 rows as for 32. Also checks that every batch
size gives the same tokens (greedy, left padded): a faster batch that changed the answers
would not be a speed-up. Prints a table, then one JSON line with the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import round_robin  # noqa: E402  (after the path insert)

SIZES = (8, 16, 32, 64)


def prompt_ids(tokenizer, n_prompts: int) -> list[list[int]]:
    from transforms.prompts.paired import load_paired_set
    from transforms.sequences import format_prompt

    repo = Path(__file__).resolve().parents[1]
    rows = load_paired_set(repo / "datasets/user_model").rows[:n_prompts]
    return [format_prompt(tokenizer, r["prompt"], r.get("system_prompt")).ids for r in rows]


def generate_all(loaded, prompts: list[list[int]], tokens: int, batch_size: int) -> list[list[int]]:
    from transforms.sequences import GenerationConfig, generate_batch

    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, batch_size=batch_size)
    out: list[list[int]] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        out += [g.response_ids for g in generate_batch(loaded.model, loaded.tokenizer,
                                                       prompts[start:start + batch_size], config, b)]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="pkg:smollm2-135m-instruct")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    from transforms.models import ModelRef, load_model

    hf_logging.disable_progress_bar()
    loaded = load_model(ModelRef(args.model), padding_side="left")
    prompts = prompt_ids(loaded.tokenizer, args.prompts)
    print(f"{len(prompts)} prompts x {args.tokens} new tokens, {args.model}, median of {args.repeats}",
          file=sys.stderr)
    outputs = {size: generate_all(loaded, prompts, args.tokens, size) for size in SIZES}  # also the warm-up
    same = all(outputs[size] == outputs[SIZES[0]] for size in SIZES)
    times = round_robin({str(size): (lambda s=size: generate_all(loaded, prompts, args.tokens, s)) for size in SIZES},
                        args.repeats)
    seconds = {int(k): statistics.median(v) for k, v in times.items()}
    total = len(prompts) * args.tokens
    print(f"{'batch':>6} {'seconds':>8} {'tokens/s':>9} {'vs batch 8':>11}")
    for size in SIZES:
        print(f"{size:>6} {seconds[size]:>8.2f} {total / seconds[size]:>9.1f} {seconds[8] / seconds[size]:>10.2f}x")
    print(f"same tokens at every batch size: {same}")
    figures = {"prompts": len(prompts), "new_tokens": args.tokens, "same_tokens": same,
               **{f"seconds_b{size}": round(seconds[size], 2) for size in SIZES},
               **{f"speedup_b{size}_vs_b8": round(seconds[8] / seconds[size], 2) for size in SIZES[1:]}}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
