"""Stage kinds that compare two variants and build or read sparse dictionaries (seeds 000 and
001): compare, weights, similarity, crosscoder, sae, clamping, organism_latents, decompose,
user_features, detector.

Each runner calls the stage function exactly as its command line (``python -m builders.<kind>``,
``python -m analyses.organism_latents``) does, so a stage's dataset is the one the CLI builds
(same version id). Parameter names are the CLI's flags with underscores, except the dictionary
training flag ``--kind``, which is ``dict_kind`` here (``kind`` names the stage's kind).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from builders.graph import costs
from builders.graph.costs import Cost, CostContext
from builders.graph.kinds import Kind, Output
from builders.graph.params import Param, layers_text

Runner = Callable[[Any, dict[str, Any]], list[Output]]
NO_PASSES = Cost(0, 0, 0)  # reads published datasets (or weights) only: no forward pass


def cli_values(params: dict[str, Param], values: dict[str, Any]) -> dict[str, Any]:
    """Values as the CLI's argparse gives them: a ``float`` written as ``2`` is ``2.0`` (version
    ids hash the JSON of their params, where ``2`` and ``2.0`` differ)."""
    out = dict(values)
    for key, value in values.items():
        ptype = params[key].type if key in params else None
        if ptype == "float" and value is not None:
            out[key] = float(value)
        elif ptype == "floats" and value is not None:
            out[key] = [float(v) for v in value]
    return out


def generation(p: dict[str, Any]) -> dict[str, Any]:
    """The ``generation`` argument the CLIs pass (``--max-new-tokens``; None = the catalog's)."""
    return {"max_new_tokens": p.get("max_new_tokens")}


def _kind(name: str, help: str, params: dict[str, Param], run: Runner,
          cost: Callable[[CostContext, dict[str, Any]], Cost | None], *, uses_generation: bool = True) -> Kind:
    def typed_run(ctx: Any, p: dict[str, Any]) -> list[Output]:
        return run(ctx, cli_values(params, p))

    return Kind(name, help, params, typed_run, cost, uses_generation=uses_generation)


# ---- training options shared by crosscoder and sae (builders.crosscoder.add_training_args) ----

def training_params() -> dict[str, Param]:
    from builders.graph.kinds.options import options_params
    from builders.stages.crosscoder import KINDS as DICT_KINDS, CrosscoderOptions

    return {"dict_kind": Param("str", choices=DICT_KINDS, help="--kind: l1 or batch_topk"),
            "l1": Param("float", help="--l1: L1 coefficient (dict_kind l1)"),
            **options_params(CrosscoderOptions, skip=("kind", "l1_coefficient"))}


def training_options(p: dict[str, Any]) -> Any:
    from builders.graph.kinds.options import make_options
    from builders.stages.crosscoder import CrosscoderOptions

    renamed = {"kind": p.get("dict_kind"), "l1_coefficient": p.get("l1")}
    return make_options(CrosscoderOptions, {**p, **{k: v for k, v in renamed.items() if v is not None}})


def activation_batch(p: dict[str, Any], key: str = "batch_size") -> int | str:
    return p.get(key, "auto")


# ---- runners ----

def run_compare(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.compare import compare_variants

    judged = p.get("judge_responses", False) or "judges" in p
    result = compare_variants(ctx.store, ctx.catalog, p["a"], p["b"], p["prompt_set"], p["vectors"],
                              experiment=ctx.experiment, method=p.get("method", "mean_diff"),
                              controls=p.get("controls", []), position=p.get("position", "response[:]"),
                              n_random=p.get("random", 1000), seed=p.get("seed", 0),
                              judges=ctx.judges(p.get("judges")) if judged else None, generation=generation(p),
                              batch_size=activation_batch(p), **ctx.common)
    return [(result.manifest, result.built)]


def run_weights(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.weights import analyze_weights

    result = analyze_weights(ctx.store, ctx.catalog, p["a"], p["b"], experiment=ctx.experiment,
                             vectors=p.get("vectors", []), method=p.get("method", "mean_diff"),
                             top_k=p.get("top_k", 20), filter_tokens=not p.get("no_token_filter", False),
                             singular_k=p.get("singular_k", 3), force=ctx.force)
    return [(result.manifest, result.built)]


def run_similarity(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.similarity import activation_similarity

    result = activation_similarity(ctx.store, ctx.catalog, p["a"], p["b"], p["prompt_set"], experiment=ctx.experiment,
                                   layers=layers_text(p.get("layers", "all")), min_share=p.get("min_share", 0.8),
                                   batch_size=activation_batch(p), generation=generation(p), **ctx.common)
    return [(result.manifest, result.built)]


def run_crosscoder(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.crosscoder import build_crosscoder

    result = build_crosscoder(ctx.store, ctx.catalog, p["a"], p["b"], p["prompt_set"], p["layer"], training_options(p),
                              experiment=ctx.experiment, position=p.get("position", "response[:]"),
                              checkpoint=p.get("checkpoint"), revision=p.get("revision"), top_k=p.get("top_k", 10),
                              activation_batch_size=activation_batch(p, "activation_batch_size"),
                              generation=generation(p), **ctx.common)
    return [(result.manifest, result.built)]


def run_sae(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.sae import build_sae

    result = build_sae(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], p["layer"], training_options(p),
                       experiment=ctx.experiment, position=p.get("position", "response[:]"),
                       checkpoint=p.get("checkpoint"), subfolder=p.get("subfolder"), revision=p.get("revision"),
                       norm_scaling_factor=p.get("norm_scaling_factor"), top_k=p.get("top_k", 10),
                       activation_batch_size=activation_batch(p, "activation_batch_size"), **ctx.common)
    return [(result.manifest, result.built)]


def chosen_latents(ctx: Any, p: dict[str, Any]) -> tuple[list[int], int | None]:
    """``(latents, top_b_only)`` for :func:`clamp_run`: explicit ``latents``, the stage's own
    ``top_b_only`` rule, or ``most_b_specific`` (chosen here from the crosscoder's latent table,
    as the demo does, and passed on as explicit latents)."""
    from builders.shared.common import BuildError

    given = [k for k in ("latents", "top_b_only", "most_b_specific") if p.get(k) is not None]
    if len(given) != 1:
        raise BuildError(f"a clamping stage takes exactly one of latents, top_b_only and most_b_specific, got "
                         f"{', '.join(given) or 'none'}")
    if given[0] == "latents":
        return list(p["latents"]), None
    if given[0] == "top_b_only":
        return [], p["top_b_only"]
    from analyses.organism_latents import most_b_specific

    chosen, _ = most_b_specific(ctx.store.read_table(ctx.store.resolve(p["dictionary"])).to_dicts(),
                                p["most_b_specific"])
    return chosen, None


def run_clamping(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.clamping import DEFAULT_TRAIT_SET, ClampingOptions, clamp_run

    latents, top_b_only = chosen_latents(ctx, p)
    options = ClampingOptions(mode=p.get("mode", "zero"), values=tuple(p.get("values", ())),
                              positions=p.get("positions", "all"), seed=p.get("seed", 0))
    judges = None  # clamp_run's default, as the CLI's: the trait set's sentiment judge, else local
    if "judges" in p or p.get("allow_uncalibrated"):
        from builders.stages.clamping import default_judges

        base = ctx.judges(p["judges"]) if "judges" in p else default_judges(
            ctx.catalog, ctx.store, p.get("trait_set", DEFAULT_TRAIT_SET))
        judges = replace(base, allow_uncalibrated=p.get("allow_uncalibrated", False))
    result = clamp_run(ctx.store, ctx.catalog, p["dictionary"], p["variant"], p["prompt_set"], latents=latents,
                       top_b_only_n=top_b_only, options=options, experiment=ctx.experiment,
                       model_index=p.get("model_index"), layer=p.get("layer"),
                       trait_set=p.get("trait_set", DEFAULT_TRAIT_SET), subset=p.get("subset", 0),
                       generation=generation(p), judges=judges, max_batch=p.get("max_batch", "auto"), **ctx.common)
    return [(result.manifest, result.built)]


def run_organism_latents(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from analyses.organism_latents import organism_latents

    result = organism_latents(ctx.store, p["crosscoder"], p["vectors"], method=p.get("method", "mean_diff"),
                              top=p.get("top", 8), clamping=p.get("clamping"), n_random=p.get("n_random", 1000),
                              force=ctx.force)
    return [(result.manifest, result.built)]


def run_decompose(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.decomposition import decompose_vectors

    methods = [m.strip() for m in p.get("method", "mean_diff").split(",") if m.strip()]
    result = decompose_vectors(ctx.store, p["dictionary"], p["vectors"], methods=methods,
                               model_index=p.get("model_index"), top_n=p.get("top_n", 10), scale=p.get("scale"),
                               force=ctx.force)
    return [(result.manifest, result.built)]


def run_user_features(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.user_features import UserFeatureOptions, find_user_features

    renamed = {"permutations": "n_permutations", "q": "q_threshold"}
    fields = ("position", "split_seed", "permutations", "seed", "q", "min_consistency", "top", "max_new_tokens")
    options = UserFeatureOptions(**{renamed.get(k, k): p[k] for k in fields if k in p})
    result = find_user_features(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], p["layer"],
                                experiment=ctx.experiment, dictionary=p.get("dictionary"), options=options,
                                batch_size=activation_batch(p), **ctx.common)
    return [(result.manifest, result.built)]


def run_detector(ctx: Any, p: dict[str, Any]) -> list[Output]:
    from builders.stages.detector import DetectorOptions, build_detector

    fields = ("position", "category", "folds", "l1_c", "bootstrap", "top", "seed")
    options = DetectorOptions(**{("n_bootstrap" if k == "bootstrap" else k): p[k] for k in fields if k in p})
    result = build_detector(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], p["layer"],
                            experiment=ctx.experiment, dictionary=p.get("dictionary"), options=options,
                            max_new_tokens=p.get("max_new_tokens"), batch_size=activation_batch(p), **ctx.common)
    return [(result.manifest, result.built)]


# ---- cost estimates: answers generated on the way, then one read per model ----

def _answers_read(cc: CostContext, prompt_set: str, p: dict[str, Any], models: int) -> Cost:
    overrides = {"max_new_tokens": p["max_new_tokens"]} if p.get("max_new_tokens") else None
    return costs.generate(cc, prompt_set, overrides) + costs.read(cc, prompt_set, overrides, models=models)


def cost_compare(cc: CostContext, p: dict[str, Any]) -> Cost:
    total = _answers_read(cc, p["prompt_set"], p, 2)
    if p.get("judge_responses") or "judges" in p:  # B's own answers, and both variants' judged
        total = total + _answers_read(cc, p["prompt_set"], p, 2)
    return total


def cost_pair(cc: CostContext, p: dict[str, Any]) -> Cost:
    return _answers_read(cc, p["prompt_set"], p, 2)


def cost_one(cc: CostContext, p: dict[str, Any]) -> Cost:
    return _answers_read(cc, p["prompt_set"], p, 1)


def cost_user_features(cc: CostContext, p: dict[str, Any]) -> Cost:
    from builders.stages.user_features import UserFeatureOptions

    short = {"max_new_tokens": p.get("max_new_tokens", UserFeatureOptions().max_new_tokens)}
    return _answers_read(cc, p["prompt_set"], short, 2 if "dictionary" in p else 1)


def cost_no_passes(cc: CostContext, p: dict[str, Any]) -> Cost:
    return NO_PASSES


def cost_clamping(cc: CostContext, p: dict[str, Any]) -> Cost:
    """Baseline + (chosen, random) per clamp value, each answering the questions, then judged."""
    n = cc.prompts(p["prompt_set"])
    n = min(n, p["subset"]) if p.get("subset") else n
    configs = 1 + 2 * (len(set(p.get("values", []))) if p.get("mode", "zero") != "zero" else 1)
    settings = {**cc.catalog.stage_defaults("responses"), **cc.catalog.stage_defaults("steering"),
                **({"max_new_tokens": p["max_new_tokens"]} if p.get("max_new_tokens") else {})}
    new = int(settings.get("max_new_tokens", 32))
    tokens = costs.PROMPT_TOKENS + new
    return Cost(n * configs, tokens, new) + Cost(n * configs, tokens, 1)


# ---- the kinds ----

def _int(help: str = "") -> Param:
    return Param("int", help=help)


VARIANT_A = Param("variant", required=True, help="reference variant (--a)")
VARIANT_B = Param("variant", required=True, help="compared variant (--b)")
PROMPTS = Param("prompt_set", required=True)
VARIANT = Param("variant", required=True)
LAYER = Param("int", required=True, help="layer k = output of decoder block k")
DICTIONARY = Param("stage", help="a crosscoder or sae stage whose latents are read too")
MAX_NEW = _int("new tokens of responses built on the way (default: the catalog's)")
BATCH = _int("sequences per forward (default: auto)")


def _kinds() -> list[Kind]:
    clamp_modes, clamp_positions = ("zero", "set", "scale"), ("all", "prompt", "generated", "response")
    dictionary_common = {"position": Param("str"), "checkpoint": Param("str", help="import instead of training"),
                         "revision": Param("str"), "top_k": _int("top activating contexts kept per latent"),
                         "activation_batch_size": BATCH}
    return [
        _kind("compare", "two variants' activations against trait vectors on the same tokens (builders.compare)",
              {"a": VARIANT_A, "b": VARIANT_B, "prompt_set": PROMPTS,
               "vectors": Param("stages", required=True, help="vectors stages"),
               "controls": Param("stages", help="other traits' vectors stages"), "method": Param("str"),
               "position": Param("str"), "random": _int("random unit directions for specificity"),
               "seed": _int(), "judge_responses": Param("bool"), "judges": Param("judges"),
               "max_new_tokens": MAX_NEW, "batch_size": BATCH},
              run_compare, cost_compare),
        _kind("weights", "weight diff norms, logit lens and trait alignment of two variants (builders.weights)",
              {"a": VARIANT_A, "b": VARIANT_B, "vectors": Param("stages", help="vectors stages to align"),
               "method": Param("str"), "top_k": _int(), "no_token_filter": Param("bool"),
               "singular_k": _int("top singular directions per layer (0: off)")},
              run_weights, cost_no_passes, uses_generation=False),
        _kind("similarity", "per-layer / per-position activation similarity of two variants (builders.similarity)",
              {"a": VARIANT_A, "b": VARIANT_B, "prompt_set": PROMPTS, "layers": Param("layers"),
               "min_share": Param("float"), "batch_size": BATCH, "max_new_tokens": MAX_NEW},
              run_similarity, cost_pair),
        _kind("crosscoder", "a crosscoder of two variants at one layer, trained or imported (builders.crosscoder)",
              {"a": VARIANT_A, "b": VARIANT_B, "prompt_set": PROMPTS, "layer": LAYER, **dictionary_common,
               **training_params(), "max_new_tokens": MAX_NEW},
              run_crosscoder, cost_pair),
        _kind("sae", "a sparse autoencoder of one variant at one layer, trained or imported (builders.sae)",
              {"variant": VARIANT, "prompt_set": PROMPTS, "layer": LAYER, **dictionary_common,
               "subfolder": Param("str"), "norm_scaling_factor": Param("float"), **training_params()},
              run_sae, cost_one),
        _kind("clamping", "dictionary latents clamped while a variant answers, beside random latents "
              "(builders.clamping)",
              {"variant": VARIANT, "dictionary": Param("stage", required=True, help="a crosscoder stage"),
               "prompt_set": PROMPTS, "latents": Param("ints"),
               "top_b_only": _int("the N b_only latents with the lowest dec_norm_diff"),
               "most_b_specific": _int("the N most B-specific latents (analyses.organism_latents, as the demo)"),
               "model_index": _int(), "layer": _int("a check: must equal the dictionary's"),
               "mode": Param("str", choices=clamp_modes), "values": Param("floats"),
               "positions": Param("str", choices=clamp_positions), "seed": _int("seed of the random control"),
               "trait_set": Param("prompt_set"), "subset": _int("first N questions only"),
               "max_new_tokens": MAX_NEW, "max_batch": _int(), "judges": Param("judges"),
               "allow_uncalibrated": Param("bool")},
              run_clamping, cost_clamping),
        _kind("organism_latents", "a crosscoder's B-specific latents against a trait vector, with clamping "
              "deltas (python -m analyses.organism_latents)",
              {"crosscoder": Param("stage", required=True), "vectors": Param("stage", required=True),
               "method": Param("str"), "top": _int(), "clamping": Param("stage"), "n_random": _int()},
              run_organism_latents, cost_no_passes, uses_generation=False),
        _kind("decompose", "trait vectors decomposed into a dictionary's features (builders.decompose)",
              {"dictionary": Param("stage", required=True), "vectors": Param("stage", required=True),
               "method": Param("str", help="vector method(s), comma-separated"), "model_index": _int(),
               "top_n": _int(), "scale": Param("float")},
              run_decompose, cost_no_passes, uses_generation=False),
        _kind("user_features", "directions and latents separating minimal pairs, per category "
              "(builders.user_features)",
              {"variant": VARIANT, "prompt_set": PROMPTS, "layer": LAYER, "position": Param("str"),
               "dictionary": DICTIONARY, "split_seed": _int(), "permutations": _int(), "seed": _int(),
               "q": Param("float"), "min_consistency": Param("float"), "top": _int(), "max_new_tokens": MAX_NEW,
               "batch_size": BATCH},
              run_user_features, cost_user_features),
        _kind("detector", "internal and observable sycophancy detectors on minimal pairs; reads the latest "
              "user_features of the same dictionary, so name that stage in after (builders.detector)",
              {"variant": VARIANT, "prompt_set": PROMPTS, "layer": LAYER, "category": Param("str"),
               "position": Param("str"), "dictionary": DICTIONARY, "folds": _int(), "l1_c": Param("float"),
               "bootstrap": _int(), "top": _int(), "seed": _int(), "max_new_tokens": MAX_NEW, "batch_size": BATCH},
              run_detector, cost_one),
    ]


KINDS: list[Kind] = _kinds()
