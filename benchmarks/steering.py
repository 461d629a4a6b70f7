"""Batched steering sweep vs one configuration at a time, SmolLM2-135M-Instruct, side by side.

    python benchmarks/steering.py [--prompts 4] [--tokens 32] [--repeats 3] [--threads 1]
                                  [--no-min-tokens] [--no-share-prefill]

8 configurations (baseline, 3 layers x 2 coefficients at ``response`` positions, one
two-layer ensemble), the same prompts from datasets/inference/general.json (chat
formatted), greedy, ``--tokens`` new tokens (forced with ``min_new_tokens`` so both ways do
the same work, unless --no-min-tokens):
- batched:    ONE ``generate_steered`` call, 8 x P rows in one ``generate`` (the configs
              steer response positions only, so each prompt is prefilled once and its KV
              cache shared by its 8 rows; --no-share-prefill prefills all 8 x P rows);
- sequential: the 8 configurations one after another, P rows per ``generate``.
The two alternate (ABBA order) so they share background load; both must give the same
tokens. Prints a table, then as the last line one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(loaded, n_prompts: int):
    import torch

    from transforms.steering import SteeringConfig, mean_residual_norms
    from transforms.sequences import format_prompt

    repo = Path(__file__).resolve().parents[1]
    rows = json.loads((repo / "datasets/inference/general.json").read_text())["prompts"][:n_prompts]
    prompts = [format_prompt(loaded.tokenizer, r["text"]).ids for r in rows]
    layers = [9, 12, 15]
    h = mean_residual_norms(loaded.model, prompts, layers)
    g = torch.Generator().manual_seed(0)
    vecs = {k: torch.randn(loaded.d_model, generator=g) for k in layers}
    start = {k: 0.7 * h[k] / float(vecs[k].norm()) for k in layers}
    configs = [SteeringConfig(label="baseline")]
    for k in layers:
        for scale in (0.5, 1.0):
            configs.append(SteeringConfig.single(k, vecs[k], scale * start[k], label=f"L{k} x{scale}"))
    configs.append(SteeringConfig.multi([(9, vecs[9], start[9] / 2), (15, vecs[15], start[15] / 2)], label="L9+L15 /2"))
    return prompts, configs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable on a shared machine; oversubscribed OpenMP threads thrash)")
    ap.add_argument("--no-min-tokens", action="store_true", help="let rows stop at EOS")
    ap.add_argument("--no-share-prefill", action="store_true", help="prefill every row of the batched run")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from transforms.sequences import GenerationConfig
    from transforms.models import load_model
    from transforms.steering import generate_steered

    loaded = load_model("pkg:smollm2-135m-instruct")
    model, tok = loaded.model, loaded.tokenizer
    prompts, configs = build(loaded, args.prompts)
    gen = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=0 if args.no_min_tokens else args.tokens,
                           temperature=0.0)

    def batched():
        return generate_steered(model, tok, prompts, configs, gen, max_batch=len(configs) * len(prompts),
                                share_prefill=not args.no_share_prefill)

    def sequential():
        return [generate_steered(model, tok, prompts, [cfg], gen, share_prefill=False)[0] for cfg in configs]

    generate_steered(model, tok, prompts[:1], configs[:2], GenerationConfig(max_new_tokens=2))  # warm-up
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    outputs = {}
    for rep in range(args.repeats):
        order = (("batched", batched), ("sequential", sequential))
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)

    identical = all([g.response_ids for g in a] == [g.response_ids for g in b]
                    for a, b in zip(outputs["batched"], outputs["sequential"]))
    n_tokens = sum(len(g.response_ids) for rows in outputs["batched"] for g in rows)
    baseline = outputs["batched"][0]
    changed = sum(rows != baseline for rows in outputs["batched"][1:])
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = med["sequential"] / med["batched"]

    rows_per = len(prompts)
    print(f"SmolLM2-135M-Instruct, {len(configs)} configs x {rows_per} prompts, greedy, {args.tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats (ABBA), "
          f"shared prefill {not args.no_share_prefill}")
    print(f"{'way':<12} {'generate calls':>15} {'rows/call':>10} {'median s':>10} {'min s':>8} {'tokens/s':>10}")
    for name, calls, rows in (("batched", 1, len(configs) * rows_per), ("sequential", len(configs), rows_per)):
        print(f"{name:<12} {calls:>15} {rows:>10} {med[name]:>10.2f} {min(times[name]):>8.2f} "
              f"{n_tokens / med[name]:>10.1f}")
    print(f"speedup (median sequential / median batched): {speedup:.2f}x; identical greedy tokens: {identical}; "
          f"configs differing from baseline: {changed}/{len(configs) - 1}")
    for cfg, rows in zip(configs, outputs["batched"]):
        print(f"  {cfg.describe():<28} {tok.decode(rows[0].response_ids)[:60]!r}")
    print(json.dumps({
        "benchmark": "steering_sweep", "model": "pkg:smollm2-135m-instruct", "configs": len(configs),
        "prompts": rows_per, "new_tokens": args.tokens, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "tokens_generated": n_tokens,
        "batched_s": round(med["batched"], 3), "sequential_s": round(med["sequential"], 3),
        "batched_s_all": [round(t, 3) for t in times["batched"]],
        "sequential_s_all": [round(t, 3) for t in times["sequential"]],
        "share_prefill": not args.no_share_prefill, "min_new_tokens": gen.min_new_tokens,
        "speedup": round(speedup, 2), "identical": identical, "configs_changed": changed,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
