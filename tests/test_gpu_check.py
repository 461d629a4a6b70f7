"""scripts/gpu_check.py stays runnable: here on the CPU in bf16 against float32 (on a GPU
machine it compares cuda bf16 with the CPU), every stage within its tolerance."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_runs_every_stage_in_bf16_within_tolerance(monkeypatch, capsys):
    module = runpy.run_path(str(SCRIPT))
    monkeypatch.setattr(sys, "argv", ["gpu_check"])
    code = module["main"](["--device", "cpu", "--dtype", "bfloat16", "--layers", "3", "--width", "128"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and last["failed"] == [], last
    assert last["judge_scored"] == [4, 4] and 0 < last["activations_max_rel_err"] < 0.08
    assert 0 < last["patching_max_rel_err"] < 0.08 and 0 < last["lens_max_rel_err"] < 0.08  # circuits ran in bf16
    assert last["steering_edit_rel_err"] > 0  # bf16 really ran: not bit-identical to float32
    assert last["auto_batch_2048_tokens"] == 8  # off CUDA, auto is the CPU batch
    assert 0.98 <= last["int8_min_cos"] < 1.0  # torchao int8 really quantized, and close


def test_gpu_check_refuses_a_missing_cuda_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        return
    module = runpy.run_path(str(SCRIPT))
    assert module["main"](["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
