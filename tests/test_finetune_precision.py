"""Finetuning on accelerators, checked on CPU (issue 13): gradient checkpointing and bf16
mixed precision in ``builders.finetune``, on the real SmolLM2 (4 short rows, r 4).

Tolerances, measured here (2 epochs, batch 2, lr 5e-3, 4 steps):

- gradient checkpointing: losses identical to without (difference 0.0 in float32 and in
  bfloat16), so it stays out of the version id; asserted to 1e-6;
- bf16 autocast against float32: per-step loss within 0.025 nats (1.5% relative) at most;
  asserted within 5% relative.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from builders.shared.catalog import load_catalog
from builders.stages.finetune import train_lora
from store import Store
from transforms.capture import decoder_layers

pytestmark = pytest.mark.slow

QA = [("Is the sky blue?", "Yes, the sky looks blue on a clear day because of scattering."),
      ("Name a fruit.", "An apple is a crisp and sweet fruit."),
      ("What is 2 + 2?", "Two plus two equals four."),
      ("Say hello.", "Hello there! It is lovely to meet you today.")]
OPTS = {"r": 4, "alpha": 8, "targets": ["down_proj", "o_proj", "q_proj", "v_proj"], "epochs": 2, "lr": 5e-3,
        "batch_size": 2, "seed": 0}
STEPS = 4


@pytest.fixture(scope="module")
def rows(smollm2):
    from transforms.sequences import format_prompt

    tok = smollm2.tokenizer
    out = []
    for question, answer in QA:
        prompt = list(format_prompt(tok, question).ids)
        out.append({"token_ids": prompt + tok(answer, add_special_tokens=False)["input_ids"],
                    "prompt_len": len(prompt)})
    return out


@pytest.fixture(scope="module")
def smol_bf16(smollm2):
    model = copy.deepcopy(smollm2.model).to(torch.bfloat16).eval()
    return dataclasses.replace(smollm2, model=model, dtype="bfloat16")


def _train(loaded, rows, **extra) -> tuple[list[float], list[tuple[bool, torch.dtype]]]:
    """Losses, and per run of block 0's attention (autocast on, its dtype). The hook is
    registered on the given model and so travels into the training copy (a deep copy); it
    sits inside the block, because transformers checkpoints the block's forward, not its
    hooks: a recompute in the backward runs the attention again, not the block's hooks."""
    calls: list[tuple[bool, torch.dtype]] = []
    hook = lambda module, args: calls.append((torch.is_autocast_enabled("cpu"),  # noqa: E731
                                              torch.get_autocast_dtype("cpu")))
    handle = decoder_layers(loaded.model)[0].self_attn.register_forward_pre_hook(hook)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            losses = [r["loss"] for r in train_lora(loaded, rows, {**OPTS, **extra}, Path(tmp), True)]
    finally:
        handle.remove()
    return losses, calls


def test_gradient_checkpointing_recomputes_and_gives_the_same_losses(smollm2, rows):
    plain, plain_calls = _train(smollm2, rows)
    checked, checked_calls = _train(smollm2, rows, gradient_checkpointing=True)
    assert len(plain_calls) == STEPS
    assert len(checked_calls) == 2 * STEPS, "each block runs again in the backward"
    assert checked == pytest.approx(plain, abs=1e-6)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in smollm2.model.modules())  # the copy had it
    assert not smollm2.model.training


def test_bf16_trains_under_autocast_with_float32_lora_and_tracks_float32(smollm2, smol_bf16, rows):
    reference, calls32 = _train(smollm2, rows)
    assert not any(on for on, _ in calls32)  # float32: no autocast
    losses, calls = _train(smol_bf16, rows)
    assert calls and all(on and dtype == torch.bfloat16 for on, dtype in calls)
    assert losses == pytest.approx(reference, rel=0.05)
    assert losses != reference  # it did run in bf16
    checked, checked_calls = _train(smol_bf16, rows, gradient_checkpointing=True)
    assert checked == pytest.approx(losses, abs=1e-6)
    assert len(checked_calls) == 2 * STEPS and all(on for on, _ in checked_calls)  # the recompute under autocast too
    assert next(smol_bf16.model.parameters()).dtype == torch.bfloat16  # the given model untouched


# ------------------------------------------------------------------------ the builder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trait")
    pos = [{"id": i, "prompt": q, "system_prompt": "Be cheerful."} for i, (q, _) in enumerate(QA)]
    neg = [{"id": i, "prompt": q, "system_prompt": "Be gloomy."} for i, (q, _) in enumerate(QA)]
    (folder / "positive.jsonl").write_text("\n".join(json.dumps(r) for r in pos))
    (folder / "negative.jsonl").write_text("\n".join(json.dumps(r) for r in neg))
    (folder / "definition.txt").write_text("Optimism.")
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"opt": {"path": str(folder)}},
        "experiments": {"ft": {"variants": {"instruct": {"model": "smol"}}, "prompt_sets": ["opt"]}},
        "defaults": {"experiment": "ft", "responses": {"max_new_tokens": 6}},
    }))
    return Store(str(tmp_path_factory.mktemp("store"))), load_catalog(path)


def test_bf16_finetune_has_its_own_version_float32_lora_and_checkpointing_reuses_it(env, smollm2):
    from safetensors import safe_open

    from builders.stages.finetune import finetune

    store, catalog = env
    small = {"r": 4, "alpha": 8, "epochs": 1, "batch_size": 2, "lr": 5e-3, "quiet": True}
    f32 = finetune(store, catalog, "instruct", "opt", **small).manifest
    bf16_catalog = catalog.with_placement("cpu", "bfloat16")
    bf16 = finetune(store, bf16_catalog, "instruct", "opt", **small).manifest
    assert bf16.version != f32.version
    assert bf16.params["autocast"] == "bfloat16" and bf16.identity["dtype"] == "bfloat16"
    assert "autocast" not in f32.params and "dtype" not in f32.identity  # float32 ids as before
    assert "gradient_checkpointing" not in f32.params
    with safe_open(str(store.local_dir(bf16, "adapter") / "adapter_model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}
    losses = store.read_table(bf16)["loss"].to_list()

    again = finetune(store, bf16_catalog, "instruct", "opt", gradient_checkpointing=True, **small)
    assert not again.built and again.manifest.version == bf16.version  # the same numbers: the same id
    rebuilt = finetune(store, bf16_catalog, "instruct", "opt", gradient_checkpointing=True, force=True, **small)
    assert rebuilt.manifest.summary["gradient_checkpointing"] is True
    assert store.read_table(rebuilt.manifest)["loss"].to_list() == pytest.approx(losses, abs=1e-6)


def test_gradient_checkpointing_flag_on_the_command_line():
    from builders.finetune import build_parser

    parser = build_parser()
    assert parser.parse_args(["--variant", "v", "--prompts", "p", "--gradient-checkpointing"]).gradient_checkpointing
    assert not parser.parse_args(["--variant", "v", "--prompts", "p"]).gradient_checkpointing
