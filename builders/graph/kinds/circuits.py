"""Stage kinds of seed 003's circuits workflow on persona pairs: the persona probe, the logit
lens, activation / head patching, head ablation, direction patching and the circuits report.

Each runner calls the stage function exactly as its command line does, so a stage's dataset is
the one ``python -m builders.<kind>`` builds with the same flags (same version id). Choices made
from results are references: ``patching.from_patching`` (a heads stage: its ``top_k`` heads by
|mean normalised effect|, as ``head_ablation --from-patching`` ranks them, become ``--heads``),
``direction_patching.layer`` left out (the ``vectors`` stage's best layer by held-out AUROC).
The CLI's ``--kind`` of patching is ``patch_kind`` here (``kind`` names the stage kind).
"""
from __future__ import annotations

from typing import Any

from builders.graph import costs
from builders.graph.kinds import Kind
from builders.graph.kinds.options import make_options, options_params
from builders.graph.params import Param, layers_text
from builders.stages.direction_patching import SCALES, DirectionOptions
from builders.stages.head_ablation import MODES, AblationOptions
from builders.stages.logit_lens import LensOptions
from builders.stages.patching import KINDS as PATCH_KINDS
from builders.stages.patching import PatchOptions
from builders.stages.persona_probe import METHODS, ProbeOptions


def _options(cls: type, p: dict[str, Any], **given: Any) -> Any:
    """``cls`` from the stage's parameters, ``layers`` as CLI text, ``given`` overriding."""
    values = dict(p)
    if "layers" in values:
        values["layers"] = layers_text(values["layers"])
    return make_options(cls, {**values, **given})


def _result(result: Any) -> list:
    return [(result.manifest, result.built)]


def _error(message: str) -> Exception:
    from builders.shared.common import BuildError

    return BuildError(message)


# ------------------------------------------------------------------------------------- runners


def run_persona_probe(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.persona_probe import persona_probe

    if p.get("n_bootstrap", 1) < 1 or p.get("batch_size", 1) < 1:  # as the CLI refuses them
        raise _error("--n-bootstrap and --batch-size must be >= 1")
    return _result(persona_probe(ctx.store, ctx.catalog, p["variant"], p["prompt_set"],
                                 _options(ProbeOptions, p), ctx.experiment, **ctx.common))


def run_logit_lens(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.logit_lens import build_logit_lens

    if "track" in p and len(p["track"]) != 2:
        raise _error(f"track {p['track']}: give two tokens, [EXPERT, SIMPLE]")
    return _result(build_logit_lens(ctx.store, ctx.catalog, p["variant"], p["prompt_set"],
                                    experiment=ctx.experiment, options=_options(LensOptions, p), **ctx.common))


def top_heads(ctx: Any, variant: str, patching_ref: str, top_k: int) -> str:
    """The ``top_k`` heads of a per-head patching dataset by |mean normalised effect|, as
    ``L3H4,L5H1`` (the ranking and checks of ``head_ablation --from-patching``)."""
    from builders.stages.head_ablation import patching_heads
    from builders.stages.head_ablation_tables import head_label
    from builders.stages.responses import model_identity

    if top_k < 1:
        raise _error(f"top_k {top_k}: must be at least 1")
    identity = model_identity(ctx.catalog, ctx.experiment, variant, ctx.store)
    return head_label(patching_heads(ctx.store, patching_ref, identity, top_k)[2])


def run_patching(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.patching import build_patching

    kind, heads = p.get("patch_kind", PatchOptions.kind), p.get("heads")
    if p.get("from_patching"):
        if heads is not None:
            raise _error("give heads or from_patching, not both")
        if not kind.startswith("heads"):
            raise _error(f"from_patching picks heads: patch_kind must be heads or heads_by_position, not {kind}")
        heads = top_heads(ctx, p["variant"], p["from_patching"], p.get("top_k", AblationOptions.top_k))
    elif "top_k" in p:
        raise _error("top_k applies with from_patching only")
    options = _options(PatchOptions, p, kind=kind, heads=heads)
    return _result(build_patching(ctx.store, ctx.catalog, p["variant"], p["prompt_set"],
                                  experiment=ctx.experiment, options=options, **ctx.common))


def best_layer(manifest: Any, method: str) -> int:
    """The layer of best held-out AUROC of ``method`` that a probe or vectors dataset reports."""
    summary = manifest.summary
    best = summary.get("best_by_heldout_auroc") or summary.get("best_by_val_auroc") or {}
    if method not in best:
        raise _error(f"{manifest.ref} reports no best layer of method {method!r}: give layer")
    return int(best[method]["layer"])


def run_direction_patching(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.direction_patching import build_direction_patching

    method = p.get("method", DirectionOptions.method)
    layer = p["layer"] if "layer" in p else best_layer(ctx.store.resolve(p["vectors"]), method)
    given = {"layer": layer}
    if "alphas" in p:
        given["alphas"] = tuple(float(a) for a in p["alphas"])  # the CLI parses floats: 4 and 4.0 alike
    return _result(build_direction_patching(ctx.store, ctx.catalog, p["vectors"], variant=p.get("variant"),
                                            prompt_set=p["prompt_set"], experiment=ctx.experiment,
                                            options=_options(DirectionOptions, p, **given), **ctx.common))


def run_head_ablation(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.head_ablation import build_head_ablation

    return _result(build_head_ablation(ctx.store, ctx.catalog, p["variant"], p["prompt_set"],
                                       experiment=ctx.experiment, options=_options(AblationOptions, p), **ctx.common))


def input_role(manifest: Any) -> str:
    """Which :class:`analyses.circuits.CircuitsInputs` field a dataset fills, by its builder."""
    from builders.stages import direction_patching, head_ablation, logit_lens, patching, persona_probe

    roles = {persona_probe.BUILDER: "probe", logit_lens.BUILDER: "logit_lens", head_ablation.BUILDER: "ablation",
             direction_patching.BUILDER: "direction"}
    if manifest.builder == patching.BUILDER:
        return str(manifest.params["kind"])
    if manifest.builder not in roles:
        raise _error(f"inputs: {manifest.ref} is not a probe, logit-lens, patching or ablation dataset "
                     f"(built by {manifest.builder})")
    return roles[manifest.builder]


def run_circuits_report(ctx: Any, p: dict[str, Any]) -> list:
    from analyses.circuits import CircuitsInputs, circuits_report

    refs: dict[str, str] = {}
    manifests = {}
    for ref in p["inputs"]:
        manifest = ctx.store.resolve(ref)
        role = input_role(manifest)
        if role in refs:
            raise _error(f"inputs: two {role} datasets ({refs[role]}, {manifest.ref}): give one")
        refs[role], manifests[role] = manifest.ref, manifest
    missing = [r for r in ("residual", "heads") if r not in refs]
    if missing:
        raise _error(f"inputs: the report needs a residual and a heads patching stage (missing: {', '.join(missing)})")
    own = manifests["residual"].params
    variant, prompt_set = p.get("variant", own["variant"]), p.get("prompt_set", own["prompt_set"])
    return _result(circuits_report(ctx.store, ctx.experiment, variant, prompt_set, CircuitsInputs(**refs),
                                   top=p.get("top", 3), force=ctx.force))


# --------------------------------------------------------------------------------------- costs
# sequences = rows through the model (each patched / steered / ablated row is one sequence),
# tokens = a prompt's length, passes = 1 per read (new tokens when generating).


def _persona(cc: costs.CostContext, p: dict[str, Any]) -> Any:
    from transforms.prompts.persona import load_persona_set

    return load_persona_set(cc.catalog.prompt_set(p["prompt_set"]).path)


def n_pairs(cc: costs.CostContext, p: dict[str, Any]) -> int:
    """Pairs a stage uses: ``pairs`` or the whole set, cut at ``limit_pairs``."""
    n = len(p["pairs"]) if p.get("pairs") else len(_persona(cc, p).pairs())
    return min(n, p["limit_pairs"]) if p.get("limit_pairs") else n


def _model(cc: costs.CostContext, variant: str | None) -> tuple[int, int]:
    """(layers, query heads per layer) of the variant, from its config."""
    from builders.shared.common import model_layer_count
    from builders.stages.patching import config_head_count

    entry = cc.catalog.variant(cc.experiment, variant)
    return model_layer_count(entry.model.id, entry.model.revision), config_head_count(entry)


def _layer_count(cc: costs.CostContext, variant: str | None, layers: Any) -> int:
    from transforms.capture import parse_layers

    return len(parse_layers(layers_text(layers), _model(cc, variant)[0]))


def _reads(rows: int, what: str) -> costs.Cost:
    return costs.Cost(rows, costs.PROMPT_TOKENS, 1, what=what)


def cost_persona_probe(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    return _reads(len(_persona(cc, p).subset(p.get("templates"), p.get("questions")).prompts()), "read prompts")


def cost_logit_lens(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    return _reads(2 * n_pairs(cc, p), "read pairs")


def positions_count(spec: str) -> int:
    """Prompt positions a patching ``positions`` spec selects in a typical prompt."""
    from builders.stages.patching import parse_positions

    lo, hi = parse_positions(spec).span(costs.PROMPT_TOKENS, costs.PROMPT_TOKENS)
    return hi - lo


def cost_patching(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    kind = p.get("patch_kind", PatchOptions.kind)
    layers, n_heads = _model(cc, p["variant"])
    if p.get("from_patching"):
        heads = p.get("top_k", AblationOptions.top_k)
    elif p.get("heads"):
        heads = len(p["heads"].split(","))
    else:
        heads = _layer_count(cc, p["variant"], p.get("layers", "all")) * n_heads
    positions = positions_count(p.get("positions", "all"))
    targets = {"heads": heads, "heads_by_position": heads * positions}.get(
        kind, _layer_count(cc, p["variant"], p.get("layers", "all")) * positions)
    return _reads(n_pairs(cc, p) * (targets + 2), "patched rows")  # + the clean and corrupted runs


def cost_direction_patching(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    alphas = len(p.get("alphas", DirectionOptions.alphas))
    return _reads(n_pairs(cc, p) * 2 * (alphas + 2), "steered rows")  # both sides: norms, unsteered, each alpha


def cost_head_ablation(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    modes = len(p.get("modes", MODES))
    chosen = len(p["heads"].split(",")) if p.get("heads") else p.get("top_k", AblationOptions.top_k)
    sets = 1 + p.get("random_draws", AblationOptions.random_draws)
    reads = 1 + ("mean" in p.get("modes", MODES)) + (sets + chosen) * modes  # base, means, sets, single heads
    total = _reads(2 * n_pairs(cc, p) * reads, "ablated rows")
    generate = p.get("generate", AblationOptions.generate)
    if generate:
        new = p.get("max_new_tokens", AblationOptions.max_new_tokens)
        total = total + costs.Cost(generate * (1 + sets * modes), costs.PROMPT_TOKENS + new, new, what="generate")
    return total


# ---------------------------------------------------------------------------------------- kinds

VARIANT = Param("variant", required=True)
# required although the CLIs default to persona: only a named set's contents enter the plan key
PROMPT_SET = Param("prompt_set", required=True, help="a persona prompt set")
LAYERS = Param("layers", help="all, 12, [6, 8], \"9-19\", \"0-30:5\", \"30%-60%\"")
TOP_K = Param("int", help=f"heads taken from from_patching (default {AblationOptions.top_k})")


def _circuit(cls: type, skip: tuple[str, ...]) -> dict[str, Param]:
    return {"variant": VARIANT, "prompt_set": PROMPT_SET, **options_params(cls, skip)}


KINDS = [
    Kind("persona_probe", "persona probes per layer with template holdout; a vectors dataset (builders.persona_probe)",
         {**_circuit(ProbeOptions, ("layers", "methods", "template_holdout")), "layers": LAYERS,
          "methods": Param("strs", choices=METHODS),
          "template_holdout": Param("str", help="N folds or template ids, as text: \"4\" or \"physicist,doctor\"")},
         run_persona_probe, cost_persona_probe, uses_generation=False),
    Kind("logit_lens", "each layer's residual through the unembedding on persona pairs (builders.logit_lens)",
         {**_circuit(LensOptions, ("layers", "track")), "layers": LAYERS,
          "track": Param("strs", help="[EXPERT, SIMPLE]: two tokens tracked for every pair")},
         run_logit_lens, cost_logit_lens, uses_generation=False),
    Kind("patching", "activation / head patching of expert into child persona runs (builders.patching)",
         {**_circuit(PatchOptions, ("kind", "layers")), "layers": LAYERS,
          "patch_kind": Param("str", choices=PATCH_KINDS, help="the CLI's --kind (default residual)"),
          "from_patching": Param("stage", help="a heads patching stage: patch its top_k heads"), "top_k": TOP_K},
         run_patching, cost_patching, uses_generation=False),
    Kind("head_ablation", "zero / mean ablation of chosen heads against random heads (builders.head_ablation)",
         {**_circuit(AblationOptions, ("from_patching", "modes")),
          "from_patching": Param("stage", help="a heads patching stage: ablate its top_k heads"),
          "modes": Param("strs", choices=MODES)},
         run_head_ablation, cost_head_ablation, uses_generation=False),
    Kind("direction_patching", "alpha x a probe / vectors direction added over the prompt "
         "(builders.direction_patching)",
         {"vectors": Param("stage", required=True, help="a persona_probe or vectors stage"),
          "variant": Param("variant", help="default: the vectors' variant"), "prompt_set": PROMPT_SET,
          **options_params(DirectionOptions, ("layer", "scale")),
          "layer": Param("int", help="default: the vectors' best layer by held-out AUROC of method"),
          "scale": Param("str", choices=SCALES)},
         run_direction_patching, cost_direction_patching, uses_generation=False),
    Kind("circuits_report", "seed 003's report over probe, lens, patching, ablation stages "
         "(python -m analyses.circuits)",
         {"inputs": Param("stages", required=True, help="residual and heads patching stages, and any of probe, "
                                                        "logit_lens, heads_by_position, ablation, direction stages"),
          "variant": Param("variant", help="default: the residual stage's"),
          "prompt_set": Param("prompt_set", help="default: the residual stage's"),
          "top": Param("int", help="heads the report names (default 3)")},
         run_circuits_report, uses_generation=False, version=2),  # 2: heads ranked by |effect|
]

__all__ = ["KINDS", "best_layer", "input_role", "n_pairs", "positions_count", "top_heads"]
