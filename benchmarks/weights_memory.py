"""Peak memory of the weight analysis on two full checkpoints (SmolLM2-135M size), side by side.

    python benchmarks/weights_memory.py [--workdir /tmp/traitstore-weights-bench]

A = the packaged SmolLM2-135M-Instruct checkpoint (fp32 safetensors), B = a copy with the
o_proj / down_proj of every third layer perturbed. Each run is a fresh child process; its
figure is peak RSS (``ru_maxrss``) minus the RSS after imports, against the size of one
checkpoint:

- streamed:  ``builders.stages.weights.weight_tables`` (diff norms of every parameter, per-layer
             residual directions, logit lens) reading one tensor at a time;
- naive:     ``safetensors.torch.load_file`` of both checkpoints, then the same norms.

Target: streamed peak < 1.5x one checkpoint. Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {repo!r})
import torch, transformers, safetensors.torch
from builders.stages.weights import weight_tables
from transforms.diffing import TensorReader

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

base_kb = rss_kb()
a, b, mode = {a!r}, {b!r}, {mode!r}
if mode == "streamed":
    from pathlib import Path
    tables = weight_tables(None, TensorReader(a), TensorReader(b), Path(a), [], "mean_diff", 20, True)
    n = len(tables["data"])
else:
    sa = safetensors.torch.load_file(a + "/model.safetensors")
    sb = safetensors.torch.load_file(b + "/model.safetensors")
    n = len([float((sb[k] - sa[k]).norm()) for k in sa])
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"base_kb": base_kb, "peak_kb": peak_kb, "params": n}}))
"""


def make_b(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from transforms.diffing import TensorReader

    if (b / "model.safetensors").exists():
        return
    b.mkdir(parents=True, exist_ok=True)
    reader = TensorReader(a)
    torch.manual_seed(0)
    tensors = {}
    for name in reader.names:
        t = reader.read(name)
        if any(f"layers.{k}." in name for k in range(0, 30, 3)) and name.endswith(("o_proj.weight", "down_proj.weight")):
            t = t + 0.01 * torch.randn_like(t)
        tensors[name] = t.contiguous()
    save_file(tensors, str(b / "model.safetensors"), metadata={"format": "pt"})
    for f in a.iterdir():
        if f.suffix == ".json" or f.name.endswith(".jinja"):
            (b / f.name).write_bytes(f.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/traitstore-weights-bench")
    args = parser.parse_args()
    from transforms.models import resolve_checkpoint

    a = Path(resolve_checkpoint("pkg:smollm2-135m-instruct"))
    b = Path(args.workdir) / "smollm2-perturbed"
    make_b(a, b)
    size = (a / "model.safetensors").stat().st_size
    figures = {"checkpoint_mb": round(size / 2**20, 1)}
    print(f"{'run':<10}{'increment MB':>14}{'x checkpoint':>14}{'peak RSS MB':>13}")
    for mode in ("streamed", "naive"):
        out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), a=str(a), b=str(b), mode=mode)],
                             capture_output=True, text=True, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        increment = (got["peak_kb"] - got["base_kb"]) * 1024
        figures[mode] = {"increment_mb": round(increment / 2**20, 1), "x_checkpoint": round(increment / size, 3),
                         "peak_rss_mb": round(got["peak_kb"] / 1024, 1), "params": got["params"]}
        print(f"{mode:<10}{increment / 2**20:>14.1f}{increment / size:>14.3f}{got['peak_kb'] / 1024:>13.1f}")
    print(f"\nstreamed weight analysis: {figures['streamed']['x_checkpoint']:.3f}x one checkpoint "
          f"({figures['checkpoint_mb']} MB) above the imports (target < 1.5x); naive: {figures['naive']['x_checkpoint']:.3f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
