"""Persona probes with template holdout (seed 003): is the persona readable from the residual
stream at a prompt position, on persona templates the probe never saw?

    python -m builders.persona_probe --variant instruct --prompt-set persona --position "prompt[-1]" \\
        --layers all --template-holdout 4

Every prompt of a persona set (both sides of every template pair x question, formatted by the
variant's tokenizer, the persona in the user turn) is run once; the residual at ``--position``
(mean over its span) is captured at each layer with :func:`transforms.capture.capture_pooled`.
Per method (``probe``: centred, row-normalised logistic regression, penalty by grouped CV over
template pairs; ``mean_diff``: the training mean difference) and layer, a direction is trained
on the training template pairs of each fold and scored on the held-out pairs
(:mod:`transforms.circuits.holdout`; ``--template-holdout N``: N folds over the template pairs,
or a comma list of template ids / pair names: one fold). Pooled over folds: accuracy with a
Wilson 95% interval, AUROC with a 95% percentile bootstrap interval resampling held-out prompt
pairs (a pair's expert and child prompt together).

Output: one dataset ``names.persona_probe(...)`` of kind ``vectors``, laid out as
:mod:`builders.stages.vectors` publishes (``vectors/<method>.safetensors``, tensor ``vectors``
[layer, d_model] float32 with the same metadata; the directions fit on ALL templates, the
held-out numbers estimate how they generalise), so steering and projections read it. Tables:
``data`` (one row per method x layer: the held-out metrics, ``center_proj`` / ``polarity`` /
``norm`` of the published direction), ``folds`` (one row per fold x template: its side),
``scores`` (held-out score per prompt x layer x method); ``figures/probe.png``.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_config_dims

log = logging.getLogger(__name__)

BUILDER = "builders.persona_probe"
CODE_VERSION = "1"
METHODS = ("probe", "mean_diff")
COMPONENT = "residual"
LAYER_CONVENTION = "layer k = output of decoder block k = hidden_states[k+1]"


@dataclass(frozen=True)
class ProbeOptions:
    """What a persona-probe run is asked for (all of it enters the version id)."""

    position: str = "prompt[-1]"
    layers: str = "all"
    template_holdout: str = "4"  # N folds, or a comma list of template ids / pair names
    methods: tuple[str, ...] = METHODS
    templates: tuple[str, ...] | None = None  # template pairs to use (default all)
    questions: tuple[str, ...] | None = None  # question ids to use (default all)
    seed: int = 0
    n_bootstrap: int = 1000
    batch_size: int = 8


def parse_holdout(text: str, pair_of: dict[str, str], seed: int) -> list[Any]:
    """``--template-holdout``: an integer (folds) or a comma list of template ids / pair names."""
    from transforms.circuits.holdout import holdout_fold, template_folds

    text = str(text).strip()
    try:
        if text.lstrip("-").isdigit():
            return template_folds(list(pair_of.values()), int(text), seed)
        return [holdout_fold(pair_of, [h.strip() for h in text.split(",") if h.strip()])]
    except ValueError as err:
        raise BuildError(str(err)) from None


def persona_probe(store: Store, catalog: Catalog, variant: str, prompt_set: str = "persona",
                  options: ProbeOptions = ProbeOptions(), experiment: str | None = None, force: bool = False,
                  quiet: bool = False) -> BuildResult:
    """Check every input (before any weights load), then build or find the probe version."""
    from transforms.capture import parse_layers
    from transforms.prompts.persona import is_persona_set, load_persona_set
    from transforms.sequences import EmptySpanError, format_prompt, parse_position

    from builders.stages.prompts import ensure_prompt_set
    from builders.stages.replay import variant_tokenizer
    from builders.stages.responses import model_identity

    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    try:
        pos = parse_position(options.position)
    except ValueError as err:
        raise BuildError(f"--position: {err}") from None
    unknown = [m for m in options.methods if m not in METHODS]
    if unknown or not options.methods:
        raise BuildError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'} "
                         f"(known: {', '.join(METHODS)})")
    set_entry = catalog.prompt_set(prompt_set)
    if not is_persona_set(set_entry.path):
        raise BuildError(f"--prompt-set {prompt_set}: {set_entry.path} is not a persona set (no persona.json)")
    persona = load_persona_set(set_entry.path, prompt_set)  # a bad file: PromptSetError, one line
    try:
        persona = persona.subset(options.templates, options.questions)
    except ValueError as err:
        raise BuildError(f"--templates / --questions: {err}") from None
    folds = parse_holdout(options.template_holdout, {t.id: t.pair for t in persona.templates}, options.seed)
    n_layers, _ = model_config_dims(entry.model.id, entry.model.revision)
    try:
        layer_ids = parse_layers(options.layers, n_layers)
    except ValueError as err:
        raise BuildError(f"--layers: {err}") from None
    tokenizer = variant_tokenizer(entry)
    prompts = persona.prompts()
    ids = [format_prompt(tokenizer, p.text).ids for p in prompts]
    for p, seq in zip(prompts, ids):
        try:
            pos.span(len(seq), len(seq))  # prompts only: a response position selects nothing
        except EmptySpanError:
            raise BuildError(f"--position {pos}: selects no token of prompt {p.prompt_id} "
                             f"({len(seq)} prompt tokens, no response)") from None
    source = ensure_prompt_set(store, catalog, prompt_set)
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "position": str(pos),
              "component": COMPONENT, "layers": layer_ids, "methods": sorted(options.methods),
              "template_holdout": str(options.template_holdout).strip(), "folds": [list(f.test_pairs) for f in folds],
              "templates": list(options.templates) if options.templates else None,
              "questions": list(options.questions) if options.questions else None,
              "seed": options.seed, "n_bootstrap": options.n_bootstrap, "batch_size": options.batch_size}
    spec = BuildSpec(name=names.persona_probe(exp.name, variant, prompt_set, pos.slug), kind="vectors",
                     builder=BUILDER, code_version=CODE_VERSION, params=params, parents={"prompts": source.ref},
                     identity=model_identity(catalog, exp.name, variant, store))

    def produce(writer: Any) -> None:
        from transforms.capture import capture_pooled
        from transforms.sequences import PromptResponse

        from builders.shared.variants import variant_model

        loaded = variant_model(store, entry)
        sequences = [PromptResponse(seq, len(seq)) for seq in ids]
        acts_NLD = capture_pooled(loaded.model, sequences, pos, layer_ids, COMPONENT, options.batch_size)
        _publish(writer, acts_NLD, prompts, folds, params, loaded, source.ref)

    return store.build(spec, produce, force=force)


def _publish(writer: Any, acts_NLD: Any, prompts: Sequence[Any], folds: Sequence[Any], params: dict[str, Any],
             loaded: Any, parent_ref: str) -> None:
    """Held-out metrics, the all-template directions, tables and the figure."""
    import numpy as np
    from safetensors.numpy import save

    from transforms.circuits.holdout import holdout_scores
    from transforms.vectors import evaluate, extract

    from builders.stages.detector import auroc_with_ci
    from builders.stages.vectors import finite_json

    layers = params["layers"]
    labels = np.asarray([1 if p.template.side == "expert" else 0 for p in prompts], dtype=np.int64)
    row_pairs = [p.template.pair for p in prompts]
    pair_ids = [p.pair_id for p in prompts]
    data, scores_rows = [], []
    for method in params["methods"]:
        held = holdout_scores(acts_NLD, labels, row_pairs, folds, method, seed=params["seed"])
        final = extract(method, acts_NLD, labels, seed=params["seed"], groups=row_pairs)
        vectors_LD = np.asarray(final.vectors_LD, dtype=np.float32)
        fitted = evaluate(vectors_LD, acts_NLD, labels, None, None)
        groups = [pair_ids[i] for i in held.rows]
        for j, layer in enumerate(layers):
            acc, acc_lo, acc_hi = held.accuracy(j)
            auc, auc_lo, auc_hi = auroc_with_ci(held.labels_N, held.scores_NL[:, j], groups, params["n_bootstrap"],
                                                params["seed"])
            data.append({"layer": layer, "method": method, "accuracy": acc, "accuracy_ci_low": acc_lo,
                         "accuracy_ci_high": acc_hi, "auroc": auc, "auroc_ci_low": auc_lo, "auroc_ci_high": auc_hi,
                         "val_accuracy": acc, "val_auroc": auc, "n_train": int(round(np.mean(held.n_train))),
                         "n_test": int(len(held.rows)), "folds": len(folds), "norm": fitted[j]["norm"],
                         "center_proj": fitted[j]["center_proj"], "polarity": fitted[j]["polarity"],
                         "train_accuracy": fitted[j]["train_accuracy"], "info": finite_json(final.info[j])})
        for i, row in enumerate(held.rows.tolist()):
            for j, layer in enumerate(layers):
                scores_rows.append({"prompt_id": prompts[row].prompt_id, "pair_id": pair_ids[row],
                                    "template": prompts[row].template.id, "fold": int(held.fold_N[i]),
                                    "label": int(held.labels_N[i]), "layer": layer, "method": method,
                                    "score": float(held.scores_NL[i, j])})
        metadata = {
            "model_id": str(loaded.model_id), "model_revision": str(loaded.revision),
            "layer_convention": LAYER_CONVENTION, "layers": json.dumps(layers), "position": params["position"],
            "component": COMPONENT, "method": method,
            "norms": json.dumps([float(n) for n in np.linalg.norm(vectors_LD, axis=-1)]),
            "parents": json.dumps({"prompts": parent_ref}), "variant": params["variant"],
            "prompt_set": params["prompt_set"], "info": finite_json(final.info),
            "template_holdout": params["template_holdout"],
        }
        writer.write_bytes(f"vectors/{method}.safetensors", save({"vectors": vectors_LD}, metadata=metadata))
    writer.write_table(data)
    templates = sorted({(p.template.id, p.template.pair) for p in prompts})
    writer.write_table([{"fold": f.index, "template": t, "pair": pair,
                         "split": "test" if pair in f.test_pairs else "train"}
                        for f in folds for t, pair in templates], table="folds")
    writer.write_table(scores_rows, table="scores")
    writer.write_bytes("figures/probe.png", _figure(data, params))
    best = {m: max((r for r in data if r["method"] == m), key=lambda r: -1.0 if math.isnan(r["auroc"]) else r["auroc"])
            for m in params["methods"]}
    writer.summary.update({"prompts": len(prompts), "layers": layers, "folds": len(folds),
                           "best_by_heldout_auroc": {m: {"layer": r["layer"], "auroc": r["auroc"],
                                                         "accuracy": r["accuracy"]} for m, r in best.items()}})


def _figure(data: list[dict[str, Any]], params: dict[str, Any]) -> bytes:
    from builders.shared.figures import png_bytes, subplots

    fig, axes = subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for ax, metric in zip(axes, ("accuracy", "auroc")):
        for method in params["methods"]:
            rows = [r for r in data if r["method"] == method]
            x = [r["layer"] for r in rows]
            ax.plot(x, [r[metric] for r in rows], marker="o", markersize=3, label=method)
            ax.fill_between(x, [r[f"{metric}_ci_low"] for r in rows], [r[f"{metric}_ci_high"] for r in rows],
                            alpha=0.2)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"held-out {metric}")
        ax.legend(fontsize=7)
    fig.suptitle(f"persona probe, {params['variant']} {params['position']}, held-out templates "
                 f"({params['template_holdout']})", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)
