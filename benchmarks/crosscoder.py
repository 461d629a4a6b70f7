"""Crosscoder training: streaming from the store vs a plain PyTorch loop over in-memory tensors.

    python benchmarks/crosscoder.py [--tokens 60000] [--big-tokens 400000] [--d 576]

Two per-token activation datasets (A, B) of planted sparse features are published into a
temporary store in the layout ``builders.activations --per-token`` writes (Zarr ``acts``
[token, layer, d], chunks of 1024 tokens), then:

- speed: ``train_crosscoder`` fed by ``PairedActivations.shuffled`` (chunks read from Zarr,
  shuffled in a two-chunk window) against a bare loop over one in-memory tensor (random
  permutation, same model, same loss, Adam) — same tokens, epochs and batch size, the two
  runs alternating (``benchmarks/timing.round_robin``). Our time is the stage's own training
  call (``builders.stages.crosscoder.train_dictionary``) and includes everything the trainer
  does besides the steps: the input-scale estimate (a seeded sample of at most
  ``SCALE_SAMPLE_TOKENS`` tokens of whole chunks), gradient clipping, the LR schedule,
  dead-latent tracking, the log (no final explained-variance pass: the stage's latent pass
  measures that). Goal: ours ≥ 0.8× the plain loop's tokens/s.
- memory: a child process trains on ``--big-tokens`` tokens whose activations are larger
  than the memory the child is given (``RLIMIT_DATA``: half the array size above what the child
  holds after its imports and a warm-up run), for one epoch; its peak RSS above that baseline is
  reported against the array size. A plain in-memory loop under the same limit cannot even load
  the data (reported as such).

Prints a table, then one JSON line of the figures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import round_robin  # noqa: E402

CHUNK = 1024
DICT, BATCH, EPOCHS = 1024, 1024, 2


def publish_pair(root: str, n_tokens: int, d: int, seed: int = 0) -> tuple[str, str]:
    """Two per-token activation versions over the same tokens; planted features shared by both
    models plus some only in B. Written chunk by chunk (never the whole array in memory)."""
    import numpy as np

    from store import BuildSpec, Store

    rng = np.random.default_rng(seed)
    n_feat = 256
    dirs = rng.standard_normal((2, n_feat, d)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=2, keepdims=True)
    dirs[0, :64] = 0.0  # the first 64 features are B-only
    dirs[1, 64:] = dirs[0, 64:]  # the rest shared
    store = Store(root)
    per_sample = 64
    n_samples = n_tokens // per_sample
    refs = []
    for m, name in enumerate(("activations-bench-a-set-response_all-residual-per_token",
                              "activations-bench-b-set-response_all-residual-replay_a-per_token")):
        spec = BuildSpec(name=name, kind="activations", builder="benchmarks.crosscoder", code_version="1",
                         params={"per_token": True, "tokens": n_tokens, "d": d, "seed": seed}, parents={},
                         identity={})

        def produce(writer, m=m):
            acts = writer.create_array("acts", (n_samples * per_sample, 1, d), (CHUNK, 1, d),
                                       ("token", "layer", "d_model"), attributes={"layers": [0]})
            gen = np.random.default_rng(seed + 1)  # the same codes for both models
            for lo in range(0, n_samples * per_sample, CHUNK):
                hi = min(lo + CHUNK, n_samples * per_sample)
                codes = gen.exponential(1.0, (hi - lo, n_feat)).astype(np.float32)
                codes *= gen.random((hi - lo, n_feat)) < 0.03
                noise = gen.standard_normal((hi - lo, d)).astype(np.float32) * 0.05
                acts[lo:hi, 0, :] = (codes @ dirs[m] + noise)[:, :]
            writer.write_table([{"sample": i, "prompt_id": str(i), "pair_id": None, "polarity": None, "rollout": 0,
                                 "token_ids": [0] * per_sample, "span_start": 0, "n_tokens": per_sample,
                                 "token_start": i * per_sample, "token_end": (i + 1) * per_sample}
                                for i in range(n_samples)])

        refs.append(store.build(spec, produce).manifest.ref)
    return refs[0], refs[1]


def plain_loop(x, d: int, seed: int, epochs: int = EPOCHS) -> float:
    """The bare baseline: one in-memory tensor, a random permutation per epoch, Adam."""
    import torch

    from transforms.dictionaries import CrossCoder
    from transforms.dictionaries.training import crosscoder_losses

    torch.manual_seed(seed)
    model = CrossCoder(2, d, DICT, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(BATCH):
            loss = crosscoder_losses(model, x[idx], 2.0)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return float(loss.detach())


def streamed(root: str, refs: tuple[str, str], d: int, seed: int, epochs: int = EPOCHS) -> list[float]:
    """The stage's own training call (``builders.stages.crosscoder.train_dictionary``)."""
    from store import Store

    from builders.stages.crosscoder import CrosscoderOptions, train_dictionary
    from builders.stages.paired_activations import pair_manifests

    store = Store(root)
    paired = pair_manifests(store, store.resolve(refs[0]), store.resolve(refs[1]), 0)
    options = CrosscoderOptions(kind="l1", dict_size=DICT, l1_coefficient=2.0, k=32, lr=1e-3, batch_size=BATCH,
                                epochs=epochs, seed=seed, target_rms=1.0, dead_after=50_000, resample_every=0)
    _, rows, _ = train_dictionary(store, paired, options, quiet=True)
    return rows[-1]["explained_variance"]


CHILD = r"""
import json, resource, sys
sys.path.insert(0, {repo!r})
import numpy, polars, pyarrow, torch, zarr
import benchmarks.crosscoder as bench
import builders.stages.paired_activations, transforms.dictionaries.training, transforms.dictionaries.crosscoder
from store import Store

torch.set_num_threads(2)
bench.streamed({small!r}, tuple({small_refs!r}), {d}, 0, epochs=1)  # warm: every lazy import and allocator pool

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

base = rss_kb()
data_now = int(open("/proc/self/statm").read().split()[5]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_DATA, (data_now + {budget}, resource.getrlimit(resource.RLIMIT_DATA)[1]))
status = "ok"
try:
    if {mode!r} == "streamed":
        bench.streamed({root!r}, tuple({refs!r}), {d}, 0, epochs=1)
    else:
        store = Store({root!r})
        a = store.open_array({refs!r}[0], "acts")[:, 0, :]
        b = store.open_array({refs!r}[1], "acts")[:, 0, :]
        bench.plain_loop(torch.from_numpy(numpy.stack([a, b], axis=1)), {d}, 0, epochs=1)
except (MemoryError, RuntimeError) as err:  # an allocation, or a thread stack, over the limit
    status = f"{{type(err).__name__}}: {{err}}"[:60]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"status": status, "peak_above_base_mb": (peak - base) / 1024}}))
"""


def child(mode: str, root: str, refs: tuple[str, str], small: tuple[str, tuple[str, str]], d: int,
          budget: int) -> dict:
    """One run in a fresh process whose private memory (RLIMIT_DATA) may grow by ``budget``
    bytes after imports and a warm-up run on the small store."""
    code = CHILD.format(repo=str(REPO), root=root, refs=list(refs), small=small[0], small_refs=list(small[1]),
                        d=d, budget=budget, mode=mode)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"status": f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}", "peak_above_base_mb": None}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=60_000)
    parser.add_argument("--big-tokens", type=int, default=400_000)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/store"
        refs = publish_pair(root, args.tokens, args.d)
        from store import Store

        store = Store(root)
        a = store.open_array(refs[0], "acts")[:, 0, :]
        b = store.open_array(refs[1], "acts")[:, 0, :]
        x = torch.from_numpy(np.stack([a, b], axis=1))  # the in-memory baseline's tensor
        n = len(x)
        evs: list[list[float]] = []
        times = round_robin({"plain": lambda: plain_loop(x, args.d, 0),
                             "streamed": lambda: evs.append(streamed(root, refs, args.d, 0))}, args.repeats)
        rate = {k: n * EPOCHS / min(v) for k, v in times.items()}
        ratio = rate["streamed"] / rate["plain"]

        start = time.perf_counter()
        big = publish_pair(f"{tmp}/big", args.big_tokens, args.d, seed=1)
        big_bytes = args.big_tokens * args.d * 4 * 2
        budget = big_bytes // 2
        mem = {mode: child(mode, f"{tmp}/big", big, (root, refs), args.d, budget) for mode in ("streamed", "plain")}
        elapsed = time.perf_counter() - start

    print(f"crosscoder training, d={args.d}, dict={DICT}, batch={BATCH}, {EPOCHS} epochs, {n} tokens")
    print(f"{'run':<10} {'best s':>8} {'tokens/s':>10}")
    for k in times:
        print(f"{k:<10} {min(times[k]):>8.2f} {rate[k]:>10.0f}")
    print(f"streamed / plain tokens/s: {ratio:.2f}  (goal >= 0.8)   explained variance of the last batch (streamed): "
          f"{[round(v, 3) for v in evs[-1]]}")
    print(f"\nmemory: activations of A and B = {big_bytes / 2**20:.0f} MiB; memory given to the run "
          f"(RLIMIT_DATA above imports) = {budget / 2**20:.0f} MiB  ({elapsed:.0f} s)")
    for mode, r in mem.items():
        peak = r["peak_above_base_mb"]
        print(f"{mode:<10} peak RSS above imports: {'-' if peak is None else f'{peak:.0f} MiB':<9} {r['status']}")
    print(json.dumps({"tokens": n, "plain_tokens_per_s": rate["plain"], "streamed_tokens_per_s": rate["streamed"],
                      "ratio": ratio, "explained_variance": evs[-1], "big_activation_mib": big_bytes / 2**20,
                      "budget_mib": budget / 2**20, "streamed_status": mem["streamed"]["status"],
                      "streamed_peak_mib": mem["streamed"]["peak_above_base_mb"],
                      "plain_status": mem["plain"]["status"]}))


if __name__ == "__main__":
    main()
