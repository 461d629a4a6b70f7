"""Head ablation on persona pairs (issue 16 item 5): do the chosen heads carry the persona?

    python -m builders.head_ablation --variant instruct --prompt-set persona --heads L3H4,L5H1
    python -m builders.head_ablation --variant instruct --prompt-set persona \\
        --from-patching patching-demo-instruct-persona-heads --top-k 5

The chosen heads (``--heads``, or the ``--top-k`` heads of largest |mean normalised effect| in a
per-head, all-positions patching dataset) are ablated together, each ``--modes`` mode:
``zero`` (the head's slice of the attention output projection's input set to 0) or ``mean``
(set to its mean over a reference set: every token of both sides of every pair used, BOS and
chat template included), at every position (:func:`transforms.circuits.ablated_heads`). The
control: ``--random-draws`` sets of as many heads drawn (seeded) from the heads not chosen.
The metric is the patching one: logit(expert token) − logit(simple token) at the last prompt
position, on both sides of every pair (``clean`` = expert persona, ``corrupted`` = child).

Published ``names.head_ablation(...)``:

- ``data``: heads (label; ``random-<i>`` for a control draw), kind (chosen | random), members
  (the heads, ``L3H4,L5H1``), mode, pair_id, side, metric, delta (metric − unablated metric);
- ``baselines``: the unablated metric per pair and side;
- ``by_set``: mean delta per head set, mode and side with a 95% t interval over pairs;
- ``top_heads``: layer, head, patch_effect (from the patching dataset, else null), zero_delta /
  mean_delta (mean clean-side delta with that head ablated alone; ``*_corrupted``: child side), rank;
- with ``--generate N``: ``generation`` (the first N pairs' expert-side prompts answered greedily
  under each head set and mode, KV cache; register = :class:`transforms.judge.register.RegisterJudge`
  score, delta_register vs the unablated answer) and ``generation_baseline``;
- ``figures/delta.png``: ``by_set`` drawn, chosen vs random.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_layer_count, progress
from builders.stages.head_ablation_tables import (
    Head,
    HeadSet,
    check_head_range,
    delta_figure,
    head_effects,
    head_label,
    parse_heads,
    random_head_sets,
    set_summary,
    top_by_effect,
    top_heads_rows,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BUILDER = "builders.head_ablation"
CODE_VERSION = "1"
MODES = ("zero", "mean")
SIDES = ("clean", "corrupted")
REFERENCE = "every token (BOS and chat template included) of both sides of every pair used"


@dataclass(frozen=True)
class AblationOptions:
    """What a run is asked for; all of it enters the version id. Exactly one of ``heads``
    (``L3H4,L5H1``) and ``from_patching`` (``DATASET[@VERSION]``)."""

    heads: str | None = None
    from_patching: str | None = None
    top_k: int = 5
    modes: tuple[str, ...] = MODES
    random_draws: int = 3
    seed: int = 0
    limit_pairs: int | None = None
    generate: int = 0
    max_new_tokens: int = 48
    batch_size: int = 16

    def check(self) -> None:
        if (self.heads is None) == (self.from_patching is None):
            raise BuildError("give exactly one of --heads L3H4,... and --from-patching DATASET[@VERSION]")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes or len(set(self.modes)) != len(self.modes):
            raise BuildError(f"--modes {','.join(self.modes)}: expected zero and/or mean, each once")
        for value, flag, low in ((self.top_k, "--top-k", 1), (self.random_draws, "--random-draws", 0),
                                 (self.generate, "--generate", 0), (self.max_new_tokens, "--max-new-tokens", 1),
                                 (self.batch_size, "--batch-size", 1)):
            if value < low:
                raise BuildError(f"{flag} {value}: must be at least {low}")
        if self.limit_pairs is not None and self.limit_pairs < 1:
            raise BuildError(f"--limit-pairs {self.limit_pairs}: must be at least 1")


@dataclass(frozen=True)
class PairInput:
    """Both sides of one pair as token ids (they need not align here) and the tracked answer ids."""

    pair_id: str
    prompt_id: str  # the clean (expert-side) prompt's id: the one generation answers
    clean_ids: list[int]
    corrupted_ids: list[int]
    answer_ids: tuple[int, int]
    tokens: tuple[str, str]


def pair_inputs(pairs: Sequence[Any], tokenizer: Any) -> list[PairInput]:
    """Every pair formatted (chat template when there is one) with its answer ids; a tracked
    token that is several tokens: BuildError."""
    from transforms.prompts.persona import single_token_id
    from transforms.sequences import format_prompt

    out = []
    for pair in pairs:
        q = pair.clean.question
        try:
            answer = (single_token_id(tokenizer, q.expert_token, f"question {q.id!r} expert_token"),
                      single_token_id(tokenizer, q.simple_token, f"question {q.id!r} simple_token"))
        except ValueError as err:  # TrackedTokenError
            raise BuildError(str(err)) from None
        out.append(PairInput(pair.pair_id, pair.clean.prompt_id, list(format_prompt(tokenizer, pair.clean.text).ids),
                             list(format_prompt(tokenizer, pair.corrupted.text).ids), answer,
                             (q.expert_token, q.simple_token)))
    return out


def pair_metrics(model: Any, ids_list: Sequence[list[int]], answer_ids: Sequence[tuple[int, int]],
                 batch_size: int = 16) -> "np.ndarray":
    """Logit difference at the last position of each sequence, under whatever hooks are attached.
    Sequences are batched by equal length, so there is no padding to get wrong."""
    import inspect

    import numpy as np
    import torch

    from transforms.capture import input_device
    from transforms.capture.layers import unwrap_model
    from transforms.circuits import logit_diff

    try:  # only the last position through the LM head when the model can (a 49k vocabulary x T is big)
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(unwrap_model(model).forward).parameters else {}
    except (TypeError, ValueError):
        keep = {}
    device = input_device(model)
    out = np.empty(len(ids_list), dtype=np.float64)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(ids_list):
        by_length.setdefault(len(ids), []).append(i)
    with torch.inference_mode():
        for rows in by_length.values():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                ids_BT = torch.tensor([ids_list[i] for i in chunk], device=device)
                logits = model(input_ids=ids_BT, use_cache=False, **keep).logits[:, -1]
                out[chunk] = logit_diff(logits, [answer_ids[i] for i in chunk]).cpu().double().numpy()
    return out


def side_metrics(model: Any, inputs: Sequence[PairInput], batch_size: int) -> dict[str, "np.ndarray"]:
    """``{"clean": metric per pair, "corrupted": ...}`` under the attached hooks."""
    answers = [p.answer_ids for p in inputs]
    # both sides in one call: a pair's two prompts usually have the same length, so they share forwards
    both = pair_metrics(model, [p.clean_ids for p in inputs] + [p.corrupted_ids for p in inputs], answers * 2,
                        batch_size)
    return {"clean": both[:len(inputs)], "corrupted": both[len(inputs):]}


def model_heads(entry: Any) -> tuple[int, int]:
    """``(n_layers, n_heads)`` from the variant's config, without weights."""
    from types import SimpleNamespace

    from transforms.circuits import head_shape
    from transforms.models import ModelRef, load_config

    config = load_config(ModelRef(entry.model.id, entry.model.revision))
    return model_layer_count(entry.model.id, entry.model.revision), head_shape(SimpleNamespace(config=config))[0]


def patching_heads(store: Store, ref: str, identity: dict[str, Any], top_k: int) -> tuple[Any, dict[Head, float], list[Head]]:
    """The patching manifest, every head's mean normalised effect, and the ``top_k`` heads;
    BuildError for a dataset of the wrong kind or built on another model."""
    manifest = store.resolve(ref)  # a missing dataset: StoreError, one line
    kind = manifest.params.get("kind")
    if kind is not None and kind != "heads":
        raise BuildError(f"--from-patching {manifest.ref}: a {kind} patching dataset; need kind heads "
                         f"(per-head patching over all positions)")
    theirs = {k: manifest.identity.get(k) for k in ("model_id", "model_revision", "adapter")}
    ours = {k: identity.get(k) for k in theirs}
    if theirs != ours:
        raise BuildError(f"--from-patching {manifest.ref}: built on {theirs['model_id']} "
                         f"({theirs['model_revision']}), not this variant's {ours['model_id']} ({ours['model_revision']})")
    try:
        rows = store.read_table(manifest, "data").to_dicts()
    except (KeyError, FileNotFoundError, ValueError):
        raise BuildError(f"--from-patching {manifest.ref}: has no data table") from None
    effects = head_effects(rows, manifest.ref)
    return manifest, effects, top_by_effect(effects, top_k)


def inputs_digest(inputs: Sequence[PairInput]) -> str:
    data = [[p.pair_id, p.clean_ids, p.corrupted_ids, list(p.answer_ids)] for p in inputs]
    return hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()[:16]


def build_head_ablation(store: Store, catalog: Catalog, variant: str, prompt_set: str, *, experiment: str | None = None,
                        options: AblationOptions = AblationOptions(), force: bool = False,
                        quiet: bool = False) -> BuildResult:
    """Check every input (before any weights load: a refused run publishes nothing and an
    up-to-date one loads no model), then build or find the ablation version (module docstring)."""
    from transforms.judge.register import RegisterJudge, validate_register

    from builders.stages.logit_lens import load_pairs
    from builders.stages.replay import variant_tokenizer
    from builders.stages.responses import model_identity

    options.check()
    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    pairs = load_pairs(catalog, prompt_set, options.limit_pairs)
    if options.generate > len(pairs):
        raise BuildError(f"--generate {options.generate}: only {len(pairs)} pairs (expert-side prompts) are used")
    n_layers, n_heads = model_heads(entry)
    identity = model_identity(catalog, exp.name, variant, store)
    parents: dict[str, str] = {}
    effects: dict[Head, float] | None = None
    if options.heads is not None:
        chosen = parse_heads(options.heads)
        check_head_range(chosen, n_layers, n_heads, "--heads")
    else:
        manifest, effects, chosen = patching_heads(store, str(options.from_patching), identity, options.top_k)
        check_head_range(chosen, n_layers, n_heads, f"--from-patching {manifest.ref}")
        parents["patching"] = manifest.ref
    head_sets = [HeadSet(head_label(chosen), "chosen", tuple(chosen))]
    head_sets += random_head_sets(chosen, n_layers, n_heads, options.random_draws, options.seed)
    inputs = pair_inputs(pairs, variant_tokenizer(entry))
    params: dict[str, Any] = {
        "experiment": exp.name, "variant": variant, "prompt_set": prompt_set, **asdict(options),
        "modes": list(options.modes), "chosen": head_label(chosen),
        "head_sets": {s.label: s.members for s in head_sets}, "mean_reference": REFERENCE,
        "metric": "logit(expert_token) - logit(simple_token) at the last prompt position",
        "inputs": inputs_digest(inputs),
    }
    judge = None
    if options.generate:
        judge = RegisterJudge()
        check = validate_register(judge)
        if not check.passed:
            raise BuildError(f"register judge AUROC {check.auroc_main:.3f} on its calibration set is below the "
                             f"required minimum: refusing to judge generations with it")
        params.update(register_judge=judge.identity(), register_auroc_main=check.auroc_main,
                      register_auroc_hard=check.auroc_hard)
    spec = BuildSpec(name=names.head_ablation(exp.name, variant, prompt_set), kind="ablation", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents=parents, identity=identity)

    def produce(writer: Any) -> None:
        from builders.shared.variants import variant_model

        loaded = variant_model(store, entry)
        _produce(writer, loaded, inputs, head_sets, effects, options, judge, spec.name, quiet)
        writer.summary.update({"pairs": len(inputs), "chosen": head_label(chosen), "device": loaded.device,
                               "dtype": loaded.dtype, "mean_reference": REFERENCE})

    return store.build(spec, produce, force=force)


def _produce(writer: Any, loaded: Any, inputs: list[PairInput], head_sets: list[HeadSet],
             effects: dict[Head, float] | None, options: AblationOptions, judge: Any, title: str, quiet: bool) -> None:
    """Every forward and generation of the build, then the tables and the figure."""
    from transforms.circuits import ablated_heads, head_means

    model, bs = loaded.model, options.batch_size
    chosen = head_sets[0].heads
    means = None
    if "mean" in options.modes:
        layers = sorted({layer for s in head_sets for layer, _ in s.heads})
        means = head_means(model, [ids for p in inputs for ids in (p.clean_ids, p.corrupted_ids)], layers)
    base = side_metrics(model, inputs, bs)
    data = []
    bar = progress(len(head_sets) * len(options.modes) + len(chosen) * len(options.modes), "ablation", quiet)
    for head_set in head_sets:
        for mode in options.modes:
            with ablated_heads(model, head_set.heads, mode, means):
                got = side_metrics(model, inputs, bs)
            for i, p in enumerate(inputs):
                for side in SIDES:
                    data.append({"heads": head_set.label, "kind": head_set.kind, "members": head_set.members,
                                 "mode": mode, "pair_id": p.pair_id, "side": side, "metric": float(got[side][i]),
                                 "delta": float(got[side][i] - base[side][i])})
            bar.update(1)
    single: dict[tuple[Head, str], dict[str, float]] = {}
    for head in chosen:  # each chosen head alone: which of them carries the effect
        for mode in options.modes:
            with ablated_heads(model, [head], mode, means):
                got = side_metrics(model, inputs, bs)
            single[(head, mode)] = {side: float((got[side] - base[side]).mean()) for side in SIDES}
            bar.update(1)
    bar.close()
    writer.write_table(data)
    writer.write_table([{"pair_id": p.pair_id, "side": side, "n_tokens": len(p.clean_ids if side == "clean" else p.corrupted_ids),
                         "metric": float(base[side][i]), "expert_token": p.tokens[0], "simple_token": p.tokens[1]}
                        for i, p in enumerate(inputs) for side in SIDES], table="baselines")
    by_set = set_summary(data)
    writer.write_table(by_set, table="by_set")
    writer.write_table(top_heads_rows(chosen, effects, single, options.modes), table="top_heads")
    if options.generate:
        generation, baseline = _generations(loaded, inputs[:options.generate], head_sets, options, means, judge)
        writer.write_table(generation, table="generation")
        writer.write_table(baseline, table="generation_baseline")
        finite = [r["delta_register"] for r in generation if r["kind"] == "chosen" and not math.isnan(r["delta_register"])]
        writer.summary["chosen_mean_delta_register"] = sum(finite) / len(finite) if finite else None
    writer.write_bytes("figures/delta.png", delta_figure(by_set, options.modes, title))
    writer.summary["by_set"] = [{k: r[k] for k in ("heads", "mode", "side", "mean_delta")} for r in by_set]


def generate_answers(loaded: Any, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int) -> list[Any]:
    """Greedy answers (:class:`transforms.sequences.generation.Generated`) to ``prompts`` with
    the KV cache, under whatever hooks are attached."""
    from transforms.sequences.generation import GenerationConfig, generate_batch

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    out = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        out += generate_batch(loaded.model, loaded.tokenizer, prompts[start:start + batch_size], config, b)
    return out


def _generations(loaded: Any, inputs: Sequence[PairInput], head_sets: Sequence[HeadSet], options: AblationOptions,
                 means: Any, judge: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from transforms.circuits import ablated_heads
    from transforms.judge.register import generated_register

    prompts = [p.clean_ids for p in inputs]

    def answer() -> tuple[list[str], list[float], list[str]]:
        got = generate_answers(loaded, prompts, options.max_new_tokens, options.batch_size)
        texts = [loaded.tokenizer.decode(g.response_ids, skip_special_tokens=True) for g in got]
        return texts, generated_register(texts, judge), [g.finish_reason for g in got]

    texts, registers, reasons = answer()
    baseline = [{"prompt_id": p.prompt_id, "pair_id": p.pair_id, "side": "clean", "response": t, "register": r,
                 "finish_reason": f} for p, t, r, f in zip(inputs, texts, registers, reasons)]
    rows = []
    for head_set in head_sets:
        for mode in options.modes:
            with ablated_heads(loaded.model, head_set.heads, mode, means):
                got_texts, got_registers, got_reasons = answer()
            for i, p in enumerate(inputs):
                rows.append({"heads": head_set.label, "kind": head_set.kind, "members": head_set.members, "mode": mode,
                             "prompt_id": p.prompt_id, "pair_id": p.pair_id, "side": "clean", "response": got_texts[i],
                             "register": got_registers[i], "delta_register": got_registers[i] - registers[i],
                             "finish_reason": got_reasons[i]})
    return rows, baseline
