"""Train a LoRA adapter on a responses dataset, on CPU, and publish it as a versioned artifact.

    python -m builders.finetune --variant instruct --prompts sycophancy_instruction --polarity pos

The persona-vectors "finetuning shift" setting in miniature: the model is trained on its
own positive-trait responses (loss on response tokens only, the stored token ids, no
re-tokenization of the response), so the adapter variant should express the trait more.
By default the eliciting system prompt is dropped (the prompt is re-formatted without it,
the response ids kept): the model learns to answer that way unprompted, as in the
persona-vectors finetuning setting; ``--keep-system-prompt`` trains on the ids as generated.
A response the model ended itself is trained with its end-of-sequence token (generation
strips it), so the adapter learns to stop. ``--passing-only``
keeps only responses the judgments vetted. Seeded and single-ordered: same inputs, same
version id. The version holds ``adapter/`` (a PEFT folder: ``adapter_config.json`` +
``adapter_model.safetensors``) and a ``data`` table of the training loss per step; a
catalog variant names it with ``adapter: finetune-<experiment>-<variant>-<set>-<polarity>``.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, placement, progress
from builders.shared.variants import canonical_adapter_config
from builders.stages.responses import generate_responses, model_identity

log = logging.getLogger(__name__)

BUILDER = "builders.finetune"
CODE_VERSION = "3"  # 2: targets end with EOS; 3: the template's end-of-turn token
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def training_rows(store: Store, responses: Any, polarity: str, passing: set[tuple[str, int]] | None) -> list[dict]:
    rows = store.read_table(responses).to_dicts()
    keep = [r for r in rows if (polarity == "all" or r.get("polarity") == polarity) and r["response_len"] > 0
            and (passing is None or (r["prompt_id"], r["rollout"]) in passing)]
    return sorted(keep, key=lambda r: (r["prompt_id"], r["rollout"]))


def with_eos(row: dict, end_id: int | None) -> dict:
    """The row's ids with the answer's stop token appended when the model stopped by itself.

    Generation strips the stop token, so training on the stored ids alone would never teach
    the adapter to stop. ``end_id`` is the token that ends an answer in the row's format
    (:func:`transforms.sequences.answer_end_id`: the template's end of turn for chat rows).
    A response cut by the token budget (``finish_reason == "length"``) gets none: it did not
    end there."""
    if row.get("finish_reason") != "eos" or end_id is None or (row["token_ids"] and row["token_ids"][-1] == end_id):
        return row
    return {**row, "token_ids": list(row["token_ids"]) + [int(end_id)]}


def answer_ends(loaded: Any) -> dict[bool, int | None]:
    """The stop token to append for chat-formatted and for plain rows."""
    from transforms.sequences import stop_ids
    from transforms.sequences import answer_end_id

    stops = stop_ids(loaded.model, loaded.tokenizer)
    return {chat: answer_end_id(loaded.tokenizer, stops, chat) for chat in (True, False)}


def without_system_prompt(tokenizer: Any, row: dict) -> dict:
    """The row's response ids after its prompt formatted without the system prompt."""
    from builders.stages.responses import format_row

    prompt = format_row(tokenizer, row["prompt"], None, row.get("prompt_style") or "instruction")
    ids = list(prompt.ids) + list(row["token_ids"][row["prompt_len"]:])
    return {**row, "token_ids": ids, "prompt_len": len(prompt.ids)}


def training_precision(dtype: str) -> str | None:
    """The autocast dtype for a model loaded in ``dtype``: bfloat16 / float16 models train
    mixed precision (float32 LoRA master weights, forward under autocast); float32 none."""
    return dtype if dtype in ("bfloat16", "float16") else None


def _lora_copy(loaded: Any, opts: dict[str, Any]) -> Any:
    """A PEFT LoRA model on a deep copy of ``loaded.model`` (the cached model stays untouched,
    checkpointing included: the copy is discarded after training), trainable weights float32."""
    import copy
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(loaded.model)
    if opts.get("gradient_checkpointing"):
        # non-reentrant: the reentrant variant drops the LoRA grads when the block inputs
        # do not require grad (the frozen embeddings'); the input hook is what PEFT needs
        enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
        enable({"use_reentrant": False})
        base.enable_input_require_grads()
    config = LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=0.0, target_modules=list(opts["targets"]),
                        task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # transformers deprecation noise from inside peft
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, config)
    for param in model.parameters():  # master weights: bf16 updates of lr*grad would round away
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def train_lora(loaded: Any, rows: list[dict], opts: dict[str, Any], out_dir: Path, quiet: bool) -> list[dict]:
    """LoRA on a copy of ``loaded``'s model; saves the adapter to ``out_dir``; returns the
    loss log. A bfloat16 / float16 model trains under ``torch.autocast`` in its dtype with
    float32 LoRA weights (float16 with a gradient scaler); ``opts["gradient_checkpointing"]``
    recomputes activations in the backward (less memory, same numbers)."""
    import contextlib

    import torch

    from transforms.sequences import left_pad

    torch.manual_seed(opts["seed"])
    model = _lora_copy(loaded, opts)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=0.0)
    pad = loaded.tokenizer.pad_token_id
    device = model.get_input_embeddings().weight.device  # batches are built on the CPU
    mixed = training_precision(loaded.dtype)
    autocast = (lambda: torch.autocast(device.type, dtype=getattr(torch, mixed))) if mixed else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=mixed == "float16")  # fp16 grads underflow unscaled
    generator = torch.Generator().manual_seed(opts["seed"])
    log_rows, step = [], 0
    n_batches = -(-len(rows) // opts["batch_size"])
    bar = progress(opts["epochs"] * n_batches, "finetune steps", quiet)
    for epoch in range(opts["epochs"]):
        order = torch.randperm(len(rows), generator=generator).tolist()
        for b in range(n_batches):
            batch = [rows[i] for i in order[b * opts["batch_size"]:(b + 1) * opts["batch_size"]]]
            ids, mask = left_pad([r["token_ids"] for r in batch], pad)
            labels = ids.clone()
            width = ids.shape[1]
            for i, r in enumerate(batch):  # loss on response tokens only
                start = width - len(r["token_ids"]) + r["prompt_len"]
                labels[i, :start] = -100
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            ids, mask, positions, labels = (t.to(device) for t in (ids, mask, positions, labels))
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels,
                             use_cache=False).loss
            optim.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
            log_rows.append({"step": step, "epoch": epoch, "loss": float(loss.detach()), "sequences": len(batch)})
            step += 1
            bar.update(1)
    bar.close()
    model.eval()
    model.save_pretrained(str(out_dir))
    config_path = out_dir / "adapter_config.json"  # same bytes for the same adapter, run after run
    config_path.write_bytes(canonical_adapter_config(json.loads(config_path.read_text())))
    return log_rows


def finetune(
    store: Store,
    catalog: Catalog,
    variant: str,
    prompt_set: str,
    *,
    experiment: str | None = None,
    polarity: str = "pos",
    passing_only: bool = False,
    keep_system_prompt: bool = False,
    r: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_size: int = 4,
    seed: int = 0,
    generation: dict[str, Any] | None = None,
    gradient_checkpointing: bool = False,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    from builders.shared.variants import variant_model

    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    if entry.quantization is not None:  # training on quantized weights (QLoRA) is out of scope
        raise BuildError(f"--variant {variant} is quantized ({entry.quantization.label}); finetune an unquantized "
                         f"variant of the same model and quantize the adapted variant")
    if entry.adapter:
        raise BuildError(f"--variant {variant} already has an adapter; finetune its base variant")
    if polarity not in ("pos", "neg", "all"):
        raise BuildError(f"--polarity: expected pos, neg or all, got {polarity!r}")
    if r < 1 or epochs < 1 or batch_size < 1 or not lr > 0:
        raise BuildError("--r, --epochs and --batch-size must be >= 1 and --lr > 0")
    generate_responses(store, catalog, variant, prompt_set, exp.name, generation, quiet=quiet)
    responses = store.resolve(names.responses(exp.name, variant, prompt_set))
    parents = {"responses": responses.ref}
    passing = None
    if passing_only:
        judged = store.resolve(names.judgments(exp.name, variant, prompt_set))
        parents["judgments"] = judged.ref
        passing = {(j["prompt_id"], j["rollout"]) for j in store.read_table(judged).to_dicts() if j["passes"]}
    rows = training_rows(store, responses, polarity, passing)
    if not rows:
        raise BuildError(f"{responses.ref}: no {polarity} responses to train on"
                         + (" that pass vetting" if passing_only else ""))
    opts = {"r": r, "alpha": alpha, "targets": sorted(targets), "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "seed": seed}
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "polarity": polarity,
              "passing_only": passing_only, "keep_system_prompt": keep_system_prompt, **opts}
    mixed = training_precision(placement(entry.device, entry.dtype)[1])
    if mixed:  # autocast changes the numbers; only then, so float32 ids stay as they were
        params["autocast"] = mixed
    # checkpointing is not in the id: it recomputes the same activations (losses identical
    # to the last bit on CPU, float32 and bfloat16; tests/test_finetune_precision.py)
    opts["gradient_checkpointing"] = gradient_checkpointing
    spec = BuildSpec(name=names.finetune(exp.name, variant, prompt_set, polarity), kind="finetune", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents=parents,
                     identity=model_identity(catalog, exp.name, variant, store))

    def produce(writer: Any) -> None:
        loaded = variant_model(store, entry)
        data = rows if keep_system_prompt else [without_system_prompt(loaded.tokenizer, r) for r in rows]
        ends = answer_ends(loaded)
        data = [with_eos(r, ends[bool(r.get("used_chat_template"))]) for r in data]
        with tempfile.TemporaryDirectory() as tmp:
            log_rows = train_lora(loaded, data, opts, Path(tmp), quiet)
            for path in sorted(Path(tmp).iterdir()):
                if path.is_file():
                    writer.write_bytes(f"adapter/{path.name}", path.read_bytes())
        writer.write_table(log_rows)
        writer.summary.update({"sequences": len(rows), "steps": len(log_rows),
                               "ending_with_eos": sum(r.get("finish_reason") == "eos" for r in rows),
                               "loss_first": log_rows[0]["loss"], "loss_last": log_rows[-1]["loss"],
                               "device": loaded.device, "gradient_checkpointing": gradient_checkpointing})

    return store.build(spec, produce, force=force)
