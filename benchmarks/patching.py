"""Residual patching sweep, layer x position, on SmolLM2-135M-Instruct: batched vs one forward
per configuration, side by side.

    python benchmarks/patching.py [--layers all:5] [--batch-size 8] [--threads 1] [--repeats 1]

The first pair of the persona set (datasets/persona, chat formatted; a fixed aligned pair when
that set cannot be read) patched clean -> corrupted at every (layer, position) of ``--layers``:
- batched:    ``patch_sweep`` (``--batch-size`` rows per forward, rows sorted by (layer,
              position); a chunk runs only the blocks above its lowest layer and only the
              tokens from its earliest position on, the corrupted run's keys/values of the
              earlier tokens handed in as a cache: transforms.circuits.replay);
- sequential: ``patch_sweep(batched=False)``, one full forward per configuration.
Both must give the same numbers (max abs diff printed and asserted <= 1e-4). Prints a table,
then as the last line one JSON object with the figures, including the machine's load average
(the timings of a shared machine mean little without it).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import round_robin  # noqa: E402

MODEL = "pkg:smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[1]


def pair(tokenizer) -> tuple[str, list[int], list[int], tuple[int, int]]:
    """(pair id, clean ids, corrupted ids, answer ids): the persona set's first pair, or a
    fixed one differing in one persona word."""
    try:
        from transforms.prompts.persona import load_persona_set, tokenize_pairs

        tp = tokenize_pairs(load_persona_set(REPO / "datasets/persona").pairs()[:1], tokenizer)[0]
        return tp.pair_id, tp.clean_ids, tp.corrupted_ids, tp.answer_ids
    except Exception as exc:  # the set is optional here: the benchmark measures the engine
        logging.warning("persona set unusable (%s); using a fixed pair", exc)
    from transforms.sequences import format_prompt

    text = "You are a {} . Explain in one word why the sky is blue."
    clean = format_prompt(tokenizer, text.format("physicist")).ids
    corrupted = format_prompt(tokenizer, text.format("child")).ids
    if len(clean) != len(corrupted):
        corrupted = clean[:-3] + corrupted[-3:] if len(corrupted) >= 3 else clean
    answers = (tokenizer.encode(" Rayleigh", add_special_tokens=False)[0],
               tokenizer.encode(" because", add_special_tokens=False)[0])
    return "fixed", clean, corrupted, answers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="all:5", help="layer spec (transforms.capture.parse_layers)")
    ap.add_argument("--batch-size", type=int, default=8,
                    help="rows per forward (8: best measured on 1-2 CPU threads; larger suits a GPU)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable on a shared machine; oversubscribed OpenMP threads thrash)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from transforms.capture import model_dims, parse_layers
    from transforms.circuits import PatchTarget, patch_sweep
    from transforms.models import load_model

    loaded = load_model(MODEL)
    model = loaded.model
    pair_id, clean, corrupted, answers = pair(loaded.tokenizer)
    layers = parse_layers(args.layers, model_dims(model)[0])
    targets = [PatchTarget("residual", k, p) for k in layers for p in range(len(clean))]
    out = {}

    def batched():
        out["batched"] = patch_sweep(model, clean, corrupted, answers, targets, batch_size=args.batch_size)

    def sequential():
        out["sequential"] = patch_sweep(model, clean, corrupted, answers, targets, batched=False)

    patch_sweep(model, clean, corrupted, answers, targets[:2], batch_size=2)  # warm-up
    times = round_robin({"batched": batched, "sequential": sequential}, args.repeats)
    diff = float(np.max(np.abs(out["batched"].metric - out["sequential"].metric)))
    med = {k: float(np.median(v)) for k, v in times.items()}
    speedup = med["sequential"] / med["batched"]
    n_fwd = {"batched": -(-len(targets) // args.batch_size) + 2, "sequential": len(targets) + 2}
    sweep = out["batched"]
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"SmolLM2-135M-Instruct, residual patching, pair {pair_id}: {len(layers)} layers x {len(clean)} positions "
          f"= {len(targets)} configurations, torch threads {torch.get_num_threads()}, {args.repeats} repeat(s), "
          f"load average {load} on {os.cpu_count()} CPUs")
    print(f"{'way':<12} {'forwards':>9} {'rows/forward':>13} {'median s':>10} {'configs/s':>10}")
    for name, rows in (("batched", args.batch_size), ("sequential", 1)):
        print(f"{name:<12} {n_fwd[name]:>9} {rows:>13} {med[name]:>10.2f} {len(targets) / med[name]:>10.1f}")
    print(f"speedup (sequential / batched): {speedup:.2f}x; max |batched - sequential| = {diff:.2e}; "
          f"clean {sweep.clean_metric:.3f}, corrupted {sweep.corrupted_metric:.3f}")
    grid = sweep.normalised.reshape(len(layers), len(clean))
    for k, row in zip(layers, grid):
        print(f"  L{k:<3} max restored {np.nanmax(row):6.3f} at position {int(np.nanargmax(row))}")
    print(json.dumps({
        "benchmark": "patching_sweep", "model": MODEL, "pair": pair_id, "layers": layers,
        "positions": len(clean), "configurations": len(targets), "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "load_average": load, "cpus": os.cpu_count(),
        "batched_s": round(med["batched"], 3), "sequential_s": round(med["sequential"], 3),
        "speedup": round(speedup, 2), "max_abs_diff": diff, "identical": diff <= 1e-4,
    }))
    if diff > 1e-4:
        logging.error("batched and sequential sweeps differ by %.3g", diff)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
