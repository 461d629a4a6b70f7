"""Stage kinds that generate, read and judge: responses, activations, judgments, vectors,
calibration, finetune. Each runner calls the stage function exactly as its command line does,
so a stage's datasets are the ones ``python -m builders.<kind>`` builds (same version ids)."""
from __future__ import annotations

from typing import Any

from builders.graph import costs
from builders.graph.kinds import Kind
from builders.graph.params import Param, layers_text

# generation settings a stage may override (catalog defaults.responses otherwise)
GENERATION = {
    "max_new_tokens": Param("int", help="new tokens per response"),
    "rollouts": Param("int", help="responses per prompt"),
    "temperature": Param("float", help="0 = greedy"),
    "top_p": Param("float"),
    "seed": Param("int", help="sampling seed"),
    "responses": Param("stage", help="a responses stage whose generation settings this stage uses"),
}


def generation(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Overrides for :func:`generate_responses`: a ``responses`` stage's settings, else the
    stage's own (None = the catalog's defaults)."""
    if params.get("responses"):
        manifest = ctx.store.resolve(params["responses"])
        own = manifest.params
        for key in ("variant", "prompt_set"):
            if key in params and params[key] != own[key]:
                from builders.shared.common import BuildError

                raise BuildError(f"responses {manifest.ref} are of {key} {own[key]!r}, not {params[key]!r}")
        settings = own["generation"]
        return {"rollouts": own["rollouts"], **{k: settings[k] for k in ("max_new_tokens", "temperature", "top_p",
                                                                          "seed") if k in settings}}
    return {k: params.get(k) for k in ("max_new_tokens", "rollouts", "temperature", "top_p", "seed")
            if params.get(k) is not None}


def _plain_generation(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in ("max_new_tokens", "rollouts") if params.get(k) is not None}


def run_responses(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.responses import generate_responses

    result = generate_responses(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], ctx.experiment,
                                generation(ctx, p) | ({"batch_size": p["batch_size"]} if "batch_size" in p else {}),
                                executor=ctx.executor, **ctx.common)
    return [(result.manifest, result.built)]


def run_activations(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.activations import capture_activations

    from builders.stages.responses import generate_responses

    # the responses it reads (the command line expects them built; the catalog's defaults)
    generate_responses(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], ctx.experiment, quiet=ctx.quiet)
    defaults = ctx.catalog.stage_defaults("activations")  # as the CLI: catalog defaults, then its own
    result = capture_activations(ctx.store, ctx.catalog, p["variant"], p["prompt_set"],
                                 p.get("position", defaults.get("position", "response[:]")),
                                 layers_text(p.get("layers", defaults.get("layers", "all"))),
                                 p.get("component", defaults.get("component", "residual")), ctx.experiment,
                                 replay_from=p.get("replay_from"), per_token=p.get("per_token", False),
                                 batch_size=defaults.get("batch_size", "auto"), executor=ctx.executor, **ctx.common)
    return [(result.manifest, result.built)]


def run_judgments(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.judgments import judge_responses

    result = judge_responses(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], ctx.experiment,
                             ctx.judges(p.get("judges")), p.get("pos_threshold", 60.0), p.get("neg_threshold", 40.0),
                             p.get("paired", False), p.get("min_pass", 0), generation(ctx, p) or None, **ctx.common)
    return [(result.manifest, result.built)]


def run_vectors(ctx: Any, p: dict[str, Any]) -> list:
    from builders.shared.catalog import ExtractionConfig
    from builders.stages.vectors import extract_vectors

    config = ExtractionConfig(p["prompt_set"], p["variant"], p["position"], tuple(p.get("methods", ("mean_diff", "probe"))))
    result = extract_vectors(ctx.store, ctx.catalog, config, ctx.experiment, p.get("component", "residual"),
                             p.get("val_fraction", 0.2), p.get("seed", 0),
                             generation(ctx, {k: v for k, v in p.items() if k != "seed"}) or None,
                             vetted=p.get("vetted", False), vet_trait_threshold=p.get("vet_trait_threshold", 50.0),
                             vet_coherence_floor=p.get("vet_coherence_floor", 50.0), judgments=p.get("judgments"),
                             replay_from=p.get("replay_from"), **ctx.common)
    return [(result.manifest, result.built)]


def run_calibration(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.calibration import DEFAULT_TRAIT_SET, calibrate

    result = calibrate(ctx.store, ctx.catalog, p["judge"], experiment=ctx.experiment, variant=p.get("variant"),
                       choice=ctx.judges(p.get("judges")), trait_set=p.get("trait_set", DEFAULT_TRAIT_SET),
                       per_label=p.get("per_label", 0), **ctx.common)
    return [(result.manifest, result.built)]


def run_finetune(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.finetune import finetune

    keys = ("polarity", "passing_only", "keep_system_prompt", "r", "alpha", "epochs", "lr", "batch_size", "seed")
    result = finetune(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], experiment=ctx.experiment,
                      generation=_plain_generation(p) or None, **{k: p[k] for k in keys if k in p}, **ctx.common)
    return [(result.manifest, result.built)]


def _answers(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    return costs.generate(cc, p["prompt_set"], _plain_generation(p), variant=p["variant"])


def _answers_and_reads(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    return _answers(cc, p) + costs.read(cc, p["prompt_set"], _plain_generation(p))


VARIANT, PROMPTS = Param("variant", required=True), Param("prompt_set", required=True)
KINDS = [
    Kind("responses", "answers of a variant to a prompt set (builders.responses)",
         {"variant": VARIANT, "prompt_set": PROMPTS, **{k: v for k, v in GENERATION.items() if k != "responses"},
          "batch_size": Param("int", help="rows per generate call (speed only)")},
         run_responses, _answers),
    Kind("activations", "per-layer activations of responses (builders.activations)",
         {"variant": VARIANT, "prompt_set": PROMPTS, "position": Param("str"), "layers": Param("layers"),
          "component": Param("str", choices=("residual", "attn_out", "mlp_out")), "replay_from": Param("variant"),
          "per_token": Param("bool")},
         run_activations, _answers_and_reads),
    Kind("judgments", "trait and coherence scores of responses (builders.judgments)",
         {"variant": VARIANT, "prompt_set": PROMPTS, "judges": Param("judges"), "pos_threshold": Param("float"),
          "neg_threshold": Param("float"), "paired": Param("bool"), "min_pass": Param("int"), **GENERATION},
         run_judgments, _answers_and_reads),
    Kind("vectors", "trait vectors from a prompt set on a variant at a position (builders.vectors)",
         {"prompt_set": PROMPTS, "variant": VARIANT, "position": Param("str", required=True),
          "methods": Param("strs"), "component": Param("str", choices=("residual", "attn_out", "mlp_out")),
          "val_fraction": Param("float"), "vetted": Param("bool"), "vet_trait_threshold": Param("float"),
          "vet_coherence_floor": Param("float"), "judgments": Param("stage"), "replay_from": Param("variant"),
          **GENERATION, "seed": Param("int", help="train/validation split seed")},
         run_vectors, _answers_and_reads),
    Kind("calibration", "a judge scored on labelled answers (builders.calibration)",
         {"judge": Param("str", required=True), "judges": Param("judges"), "variant": Param("variant"),
          "trait_set": Param("prompt_set"), "per_label": Param("int")},
         run_calibration, uses_application=True),
    Kind("finetune", "a LoRA adapter on a variant's own answers (builders.finetune)",
         {"variant": VARIANT, "prompt_set": PROMPTS, "polarity": Param("str", choices=("pos", "neg", "all")),
          "passing_only": Param("bool"), "keep_system_prompt": Param("bool"), "r": Param("int"), "alpha": Param("float"),
          "epochs": Param("int"), "lr": Param("float"), "batch_size": Param("int"), "seed": Param("int"),
          "max_new_tokens": Param("int"), "rollouts": Param("int")},
         run_finetune, _answers),
]
