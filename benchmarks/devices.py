"""Capture and steering-sweep throughput in float32 vs bfloat16, side by side in one run.

    python benchmarks/devices.py [--prompts 8] [--tokens 32] [--repeats 3] [--threads 1]

SmolLM2-135M-Instruct on the CPU (and, when CUDA is present, on ``cuda`` too): the same real
responses (``--tokens`` generated tokens each) and the same 8 steering configurations
(``benchmarks/steering.py``'s set) in each precision:
- capture: ``transforms.capture.capture_pooled``, every layer, ``response[:]``, batch 8;
- sweep:   ONE ``generate_steered`` call, 8 configs x P prompts, greedy, ``--tokens`` forced.
Precisions alternate (ABBA order) so they share background load. Besides time, it prints how
far bf16 lands from float32: the largest per-layer relative error of the pooled activations
and the share of identical greedy tokens. A table, then one JSON line with the figures.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.capture import real_sequences  # noqa: E402
from benchmarks.steering import build  # noqa: E402


def devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def timed(fn, sync) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (1: stable on a shared machine)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from transforms.capture import capture_pooled
    from transforms.sequences import GenerationConfig
    from transforms.models import load_model
    from transforms.steering import generate_steered

    loaded = load_model("pkg:smollm2-135m-instruct")
    sequences = real_sequences(loaded, args.prompts, args.tokens)
    prompts, configs = build(loaded, min(args.prompts, 4))
    gen = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, temperature=0.0)
    layers = list(range(loaded.n_layers))
    figures: dict[str, dict] = {}
    rows = []
    for device in devices():
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        models = {dtype: copy.deepcopy(loaded.model).to(device=device, dtype=getattr(torch, dtype)).eval()
                  for dtype in ("float32", "bfloat16")}
        times: dict[str, dict[str, list[float]]] = {d: {"capture": [], "sweep": []} for d in models}
        outputs: dict[str, dict[str, object]] = {d: {} for d in models}
        for dtype, model in models.items():  # warm-up
            generate_steered(model, loaded.tokenizer, prompts[:1], configs[:2], GenerationConfig(max_new_tokens=2))
        for rep in range(args.repeats):
            order = list(models.items())
            for dtype, model in (order if rep % 2 == 0 else order[::-1]):
                t, outputs[dtype]["capture"] = timed(
                    lambda: capture_pooled(model, sequences, "response[:]", layers, "residual", 8), sync)
                times[dtype]["capture"].append(t)
                t, outputs[dtype]["sweep"] = timed(
                    lambda: generate_steered(model, loaded.tokenizer, prompts, configs, gen,
                                             max_batch=len(configs) * len(prompts)), sync)
                times[dtype]["sweep"].append(t)
        ref, low = outputs["float32"]["capture"], outputs["bfloat16"]["capture"]
        rel = np.linalg.norm(low - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-12)  # [N, L]
        tokens = [(g.response_ids, h.response_ids) for a, b in zip(outputs["float32"]["sweep"], outputs["bfloat16"]["sweep"])
                  for g, h in zip(a, b)]
        same = sum(sum(x == y for x, y in zip(g, h)) for g, h in tokens) / max(1, sum(len(g) for g, _ in tokens))
        n_tokens = sum(len(g.response_ids) for rows_ in outputs["float32"]["sweep"] for g in rows_)
        med = {d: {k: statistics.median(v) for k, v in t.items()} for d, t in times.items()}
        figures[device] = {
            "capture_s": {d: round(m["capture"], 3) for d, m in med.items()},
            "sweep_s": {d: round(m["sweep"], 3) for d, m in med.items()},
            "capture_speedup_bf16": round(med["float32"]["capture"] / med["bfloat16"]["capture"], 2),
            "sweep_speedup_bf16": round(med["float32"]["sweep"] / med["bfloat16"]["sweep"], 2),
            "capture_max_rel_err_bf16": round(float(rel.max()), 4),
            "capture_median_rel_err_bf16": round(float(np.median(rel)), 4),
            "sweep_identical_token_share_bf16": round(same, 3),
            "sweep_tokens": n_tokens,
        }
        for d in models:
            rows.append((device, d, med[d]["capture"], len(sequences) / med[d]["capture"], med[d]["sweep"],
                         n_tokens / med[d]["sweep"]))
    print(f"SmolLM2-135M-Instruct: capture of {len(sequences)} responses ({args.tokens} tokens, {len(layers)} layers), "
          f"sweep of {len(configs)} configs x {len(prompts)} prompts x {args.tokens} tokens; torch threads "
          f"{torch.get_num_threads()}, {args.repeats} repeats (ABBA)")
    print(f"{'device':<7} {'dtype':<9} {'capture s':>10} {'seq/s':>8} {'sweep s':>9} {'tokens/s':>9}")
    for device, dtype, cs, cps, ss, tps in rows:
        print(f"{device:<7} {dtype:<9} {cs:>10.2f} {cps:>8.1f} {ss:>9.2f} {tps:>9.1f}")
    for device, f in figures.items():
        print(f"{device}: bf16/float32 speedup capture {f['capture_speedup_bf16']}x, sweep {f['sweep_speedup_bf16']}x; "
              f"bf16 capture relative error max {f['capture_max_rel_err_bf16']}, median "
              f"{f['capture_median_rel_err_bf16']}; identical greedy tokens {f['sweep_identical_token_share_bf16']:.1%}")
    print(json.dumps({"benchmark": "devices", "model": "pkg:smollm2-135m-instruct", "prompts": len(sequences),
                      "new_tokens": args.tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
                      "devices": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
