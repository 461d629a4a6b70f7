"""Capture throughput on SmolLM2-135M-Instruct, measured side by side in one run.

    python benchmarks/capture.py [--prompts 16] [--tokens 64] [--repeats 2]

Same real responses (>= --tokens generated tokens each), same batches, three ways:
- bare:     the decoder trunk's forward pass over the batches, nothing captured;
- ours:     transforms.capture hooks (capture_pooled), every layer, mean pooled, written to a Zarr array
            in a temporary store (what builders.activations does);
- baseline: persona-vectors style: batch size 1, ``output_hidden_states=True`` on the
            full model, every layer stacked, pooled, results saved with ``torch.save``.
Prints a table, then one JSON line with the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import round_robin  # noqa: E402  (after the path insert)


def real_sequences(loaded, n_prompts: int, min_tokens: int) -> list[dict]:
    from transforms.sequences import GenerationConfig, generate_batch
    from transforms.prompts import load_prompt_set
    from transforms.sequences import format_prompt

    repo = Path(__file__).resolve().parents[1]
    rows = load_prompt_set(repo / "datasets/traits/instruction/sycophancy").rows
    rows += load_prompt_set(repo / "datasets/inference/general.json").rows
    rows = rows[:n_prompts]
    prompts = [format_prompt(loaded.tokenizer, r["prompt"], r["system_prompt"]).ids for r in rows]
    config = GenerationConfig(max_new_tokens=min_tokens, min_new_tokens=min_tokens, batch_size=8)
    seqs = []
    for start in range(0, len(prompts), 8):
        batch = prompts[start:start + 8]
        for ids, out in zip(batch, generate_batch(loaded.model, loaded.tokenizer, batch, config, start)):
            seqs.append({"ids": ids + out.response_ids, "prompt_len": len(ids)})
    return seqs


def bare_forward(model, sequences, batch_size: int) -> None:
    import torch

    from transforms.capture import pad_batch, plan_spans, run_forward, sorted_batches
    from transforms.sequences import parse_position

    items, _ = plan_spans(sequences, parse_position("all[:]"), allow_empty=False)
    with torch.inference_mode():
        for batch in sorted_batches(items, batch_size):
            ids, mask = pad_batch(batch)
            run_forward(model, ids, mask)


def ours(model, sequences, position: str, batch_size: int, n_layers: int, root: str) -> None:
    from store import BuildSpec, Store
    from transforms.capture import capture_pooled

    def produce(writer):
        acts = capture_pooled(model, sequences, position, list(range(n_layers)), "residual", batch_size)
        writer.create_array("acts", acts.shape, (acts.shape[0], 1, acts.shape[2]), ("sample", "layer", "d_model"))[:] = acts

    Store(root).build(BuildSpec("bench", "activations", "bench", "1", {"p": position, "t": time.time()}, {}, {}), produce)


def baseline(model, sequences, position: str, out_path: str) -> None:
    import torch

    from transforms.sequences import parse_position

    pos = parse_position(position)
    pooled = []
    with torch.inference_mode():
        for seq in sequences:
            ids = torch.tensor([seq["ids"]])
            out = model(input_ids=ids, output_hidden_states=True)
            hidden = torch.stack(out.hidden_states[1:], dim=0)[:, 0]  # [layer, token, d]
            start, end = pos.span(seq["prompt_len"], len(seq["ids"]))
            pooled.append(hidden[:, start:end].mean(dim=1))
    torch.save(torch.stack(pooled), out_path)


def timed_round_robin(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds per run, the runs alternating."""
    return {name: statistics.median(values) for name, values in round_robin(runs, repeats).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per response")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from transformers.utils import logging as hf_logging

    from transforms.models import ModelRef, load_model

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    loaded = load_model(ModelRef("pkg:smollm2-135m-instruct"))
    model, n_layers = loaded.model, loaded.n_layers
    sequences = real_sequences(loaded, args.prompts, args.tokens)
    tokens = sum(len(s["ids"]) for s in sequences)
    print(f"{len(sequences)} responses, {tokens} tokens (prompt + >= {args.tokens} response tokens each), "
          f"{n_layers} layers, batch {args.batch_size}, median of {args.repeats}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "bare_forward": lambda: bare_forward(model, sequences, args.batch_size),
            "ours_response_all": lambda: ours(model, sequences, "response[:]", args.batch_size, n_layers, f"{tmp}/s"),
            "baseline_response_all": lambda: baseline(model, sequences, "response[:]", f"{tmp}/b.pt"),
            "ours_response_5": lambda: ours(model, sequences, "response[:5]", args.batch_size, n_layers, f"{tmp}/s"),
            "baseline_response_5": lambda: baseline(model, sequences, "response[:5]", f"{tmp}/b.pt"),
        }
        runs["bare_forward"]()  # warm-up: first-call allocations are not what we measure
        seconds = timed_round_robin(runs, args.repeats)

    figures = {
        "tokens": tokens,
        "bare_tok_s": round(tokens / seconds["bare_forward"], 1),
        "ours_all_tok_s": round(tokens / seconds["ours_response_all"], 1),
        "capture_vs_bare": round(seconds["bare_forward"] / seconds["ours_response_all"], 3),
        "speedup_vs_baseline_response_5": round(seconds["baseline_response_5"] / seconds["ours_response_5"], 2),
        "speedup_vs_baseline_response_all": round(seconds["baseline_response_all"] / seconds["ours_response_all"], 2),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    print(f"{'run':<24}{'seconds':>10}{'tokens/s':>12}")
    for name, sec in seconds.items():
        print(f"{name:<24}{sec:>10.3f}{tokens / sec:>12.1f}")
    print(f"\ncapture all layers -> Zarr vs bare forward:   {figures['capture_vs_bare']:.3f}x  (target >= 0.85)")
    print(f"speed-up vs baseline, response[:5]:           {figures['speedup_vs_baseline_response_5']:.2f}x  (target >= 3)")
    print(f"speed-up vs baseline, response[:]:            {figures['speedup_vs_baseline_response_all']:.2f}x  (target >= 1)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
