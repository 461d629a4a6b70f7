"""Stage kinds that steer: steering searches and grids (including a grid placed from a search's
result), combination strategies, per-token projections."""
from __future__ import annotations

from typing import Any

from builders.graph import costs
from builders.graph.kinds import Kind
from builders.graph.params import Param, layers_text

MAX_RATIO_STEPS = 64


def grid_around(store: Any, search_ref: str, ratios: list[float], floor: float, relative_to: str) -> tuple[int, list[float]]:
    """A choice made from a result: the best layer of a steering run and a coefficient grid there.

    The best row is the one moving the trait most (in the run's direction) with coherence at or
    above ``floor`` (any row if none is). ``relative_to``: ``best`` - multiples of that row's
    coefficient (seed 001 step 1b: a finer grid around where coherence drops off); ``norm`` -
    multiples of ``||h|| / ||v||`` at that layer (perturbation ratios, the demo's cliff grid)."""
    from builders.shared.common import BuildError

    search = store.resolve(search_ref)
    rows = [r for r in store.read_table(search).to_dicts() if r["mode"] != "baseline" and r["delta"] is not None]
    if search.kind != "steering" or not rows:
        raise BuildError(f"{search.ref}: not a steering run with results to place a grid from")
    direction = int(search.params["direction"])
    ok = [r for r in rows if (r["coherence_mean"] or 0) >= floor]
    best = max(ok or rows, key=lambda r: direction * (r["delta"] or 0))
    unit = abs(best["coef"]) if relative_to == "best" else best["h_norm"] / best["v_norm"]
    return int(best["layer"]), [round(direction * q * unit, 3) for q in ratios]


def run_steering(ctx: Any, p: dict[str, Any]) -> list:
    from builders.shared.common import BuildError
    from builders.stages.steering import steer_vectors

    options = {k: p[k] for k in ("mode", "positions", "steps", "threshold", "start_scale", "momentum", "direction",
                                 "questions", "subset", "max_batch") if k in p}
    layers, coefficients = layers_text(p.get("layers", "30%-60%")), p.get("coefficients", [])
    vectors, method = p.get("vectors"), p.get("method")
    if p.get("around"):
        floor = p.get("floor", p.get("threshold", 70.0))
        runs = p["around"]
        chosen = runs[0] if len(runs) == 1 else best_run(ctx.store, runs, floor, fallback=True)
        if vectors is None:  # the chosen run's own vectors and method
            run = ctx.store.resolve(chosen)
            vectors, method = run.params["vectors"], method or run.params["method"]
        layer, coefficients = grid_around(ctx.store, chosen, p.get("ratios", [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]),
                                          floor, p.get("relative_to", "norm"))
        layers, options["mode"] = str(layer), "grid"
    elif coefficients:
        options.setdefault("mode", "grid")
    if vectors is None or method is None:
        raise BuildError("a steering stage needs vectors and method (or around: the runs to take them from)")
    result = steer_vectors(ctx.store, ctx.catalog, vectors, method, experiment=ctx.experiment,
                           variant=p.get("variant"), layers=layers, coefficients=coefficients,
                           generation={"max_new_tokens": p.get("max_new_tokens")}, judges=ctx.judges(p.get("judges")),
                           **options, **ctx.common)
    return [(result.manifest, result.built)]


def best_run(store: Any, refs: list[str], threshold: float, fallback: bool = False) -> str:
    """A choice made from results: of several steering runs of one source (methods, positions,
    coarse and fine), the one whose best single configuration at coherence >= ``threshold``
    moves the trait most (seed 001 phase 2: "best vectors from phase 1 per source"). With
    ``fallback``, when no run reaches the threshold, the one that moves the trait most at any
    coherence (a grid around it still brackets where coherence drops)."""
    from builders.shared.common import BuildError
    from builders.stages.combinations import best_single

    scored = []
    for ref in refs:
        run = store.resolve(ref)
        try:
            best = best_single(store, run, threshold)
        except BuildError:
            continue  # nothing coherent in this run: it cannot be the best
        scored.append((int(run.params.get("direction") or 1) * best["delta"], -len(scored), ref))
    if not scored and fallback:  # a grid around an incoherent search still brackets its cliff
        return best_run(store, refs, float("-inf"))
    if not scored:
        raise BuildError(f"none of {', '.join(refs)} reaches coherence >= {threshold:g}: nothing to combine")
    return max(scored)[2]  # a tie goes to the run listed first


def run_combinations(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.combinations import combine_runs

    options = {k: p[k] for k in ("factors", "threshold", "max_batch") if k in p}
    threshold = p.get("threshold", 70.0)
    a, b = best_run(ctx.store, p["a"], threshold), best_run(ctx.store, p["b"], threshold)
    result = combine_runs(ctx.store, ctx.catalog, a, b, **options, **ctx.common)
    return [(result.manifest, result.built)]


def run_projections(ctx: Any, p: dict[str, Any]) -> list:
    from builders.stages.projections import build_projections

    specs = [f"{ref}:{p.get('method', 'mean_diff')}" for ref in p["vectors"]]
    result = build_projections(ctx.store, ctx.catalog, p["variant"], p["prompt_set"], specs, experiment=ctx.experiment,
                               layers=layers_text(p.get("layers", "best")), floor=p.get("floor", 70.0), live=p.get("live", False),
                               generation={"max_new_tokens": p.get("max_new_tokens")}, **ctx.common)
    return [(result.manifest, result.built)]


def _questions(cc: costs.CostContext, p: dict[str, Any]) -> int:
    """Questions a steering stage answers: its ``subset``; a grid around a search, or a
    combination of runs, answers the questions of the run it reads (guessed at 20 if unset)."""
    for _ in range(4):  # combinations -> fine grid -> search
        if p.get("subset"):
            return int(p["subset"])
        source = (p.get("a") or p.get("around") or [None])[0]
        p = cc.params_of(source)
    return 20


def _steering_cost(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    """Questions x configurations x new tokens: configurations are steps x layers for a
    search, layers x coefficients for a grid (a layer list is counted, a range guessed at 4)."""
    layers = p.get("layers", "")
    n_layers = 1 if p.get("around") else (len(str(layers).split(",")) if "," in str(layers) else 4)
    configs = len(p.get("ratios", [0] * 6)) if p.get("around") else (
        n_layers * len(p["coefficients"]) if p.get("coefficients") else n_layers * p.get("steps", 8))
    new = p.get("max_new_tokens") or cc.generation()[0]
    return costs.Cost((costs.Part("steer", _questions(cc, p) * (configs + 1), costs.PROMPT_TOKENS + new, new),))


def _combinations_cost(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    """Four strategies x factors, and the baseline, on the combined runs' questions."""
    new = cc.generation()[0]
    configs = 4 * len(p.get("factors", [0.5, 0.75, 1.0, 1.25, 1.5])) + 1
    return costs.Cost((costs.Part("steer", _questions(cc, p) * configs, costs.PROMPT_TOKENS + new, new),))


def _projection_cost(cc: costs.CostContext, p: dict[str, Any]) -> costs.Cost:
    overrides = {"max_new_tokens": p.get("max_new_tokens")} if p.get("max_new_tokens") else None
    if p.get("live"):
        return costs.generate(cc, p["prompt_set"], overrides)
    return costs.generate(cc, p["prompt_set"], overrides, variant=p["variant"]) + costs.read(cc, p["prompt_set"], overrides)


JUDGES = Param("judges", help="a judge choice named in the experiment's judges")
KINDS = [
    Kind("steering", "a steering search or grid of one vector set and method (builders.steering)",
         {"vectors": Param("stage", help="a vectors stage (with around: default the chosen run's)"),
          "method": Param("str", help="mean_diff, probe, ... (with around: default the chosen run's)"),
          "variant": Param("variant", help="the model steered (default: the experiment's application)"),
          "mode": Param("str", choices=("adaptive", "grid", "ablate")), "layers": Param("layers"),
          "coefficients": Param("floats"), "positions": Param("str"), "steps": Param("int"),
          "threshold": Param("float"), "start_scale": Param("float"), "momentum": Param("float"),
          "direction": Param("int"), "questions": Param("prompt_set"), "subset": Param("int"),
          "max_new_tokens": Param("int"), "judges": JUDGES, "max_batch": Param("int"),
          "around": Param("stages", help="steering runs: a grid at the best layer of the best of them "
                                         "(a choice made from their results)"),
          "ratios": Param("floats", help="with around: the grid, as multiples of the unit"),
          "relative_to": Param("str", choices=("norm", "best"),
                               help="with around: norm = ||h||/||v|| (perturbation ratio), best = its best coefficient"),
          "floor": Param("float", help="with around: coherence floor of the best row (default threshold)")},
         run_steering, _steering_cost, uses_application=True),
    Kind("combinations", "seed 001 phase 2: strategies combining two steering runs' best singles (builders.combinations)",
         {"a": Param("stages", required=True, help="steering runs of source A: the best one is combined"),
          "b": Param("stages", required=True, help="steering runs of source B: the best one is combined"),
          "factors": Param("floats"),
          "threshold": Param("float"), "max_batch": Param("int")},
         run_combinations, _combinations_cost, uses_application=True),
    Kind("projections", "per-token projections of responses onto trait vectors (builders.projections)",
         {"variant": Param("variant", required=True), "prompt_set": Param("prompt_set", required=True),
          "vectors": Param("stages", required=True), "method": Param("str"), "layers": Param("layers"),
          "floor": Param("float"), "live": Param("bool"), "max_new_tokens": Param("int")},
         run_projections, _projection_cost),
]
