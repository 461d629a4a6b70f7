"""Steer the application model with trait vectors and judge what changes (seed 001 phase 1).

    python -m builders.steering --vectors vectors-demo-instruct-sycophancy_instruction-response_all-residual \\
        --method mean_diff --layers 30%-60% --steps 8                       # adaptive search
    python -m builders.steering --vectors <ref> --method probe --layers 12 --coefficients 3,3.5,4,4.5
    python -m builders.steering --vectors <ref> --mode ablate --layers all
    python -m builders.steering --matrix --methods mean_diff,probe          # the whole extraction matrix

Modes: ``baseline`` (no edit), ``adaptive`` (per layer, start at ``0.7·‖h_L‖/‖v_L‖``; x1.3
when mean coherence ≥ threshold, else x0.85, with momentum; every layer of a step in one
batched generate call), ``grid`` (every layer × ``--coefficients``), ``ablate`` (project the
direction out, per layer and at all chosen layers together). Every run also evaluates the
baseline. Vectors are applied to the experiment's ``application`` variant (or
``--variant``) on the steering questions of the vectors' prompt set (or ``--questions``).
``--positions``: ``response`` (default) steers the last prompt position, whose state
produces the first response token, and every generated position; ``generated`` only the
generated positions (what ``response`` meant before code version 3); ``prompt``; ``all``.

Tables: ``data`` — one row per configuration (trait mean/std, coherence mean, delta vs
baseline, perturbation ratio ``|coef|·‖v‖/‖h‖``, full config); ``responses`` — every
steered response with its scores. Generations and scores are cached in the store, so
finished configurations are skipped on rerun. ``--max-batch`` (rows per batched call,
default ``auto``: 64 on the CPU, from the free memory on CUDA) is halved for a call that
runs out of memory and for the rest of the run; the summary's ``batch_sizes`` lists the
sizes used.
Output dataset: ``steering-<experiment>-<application>-<vectors name>-<method>-<mode>``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store
from transforms.steering import POSITIONS

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.shared.judges import JudgeChoice
from builders.stages.steering_eval import (Planned, SteeringSetup, add_deltas, baseline_plan, calibration_parent, dedupe_responses,
                            evaluate, make_setup)
from builders.stages.vectors import load_vectors

log = logging.getLogger(__name__)

BUILDER = "builders.steering"
CODE_VERSION = "3"  # 3: positions "response" includes the last prompt position (old meaning: "generated")
MODES = ("adaptive", "grid", "baseline", "ablate")


@dataclass(frozen=True)
class SteeringSearchOptions:
    """How one steering run searches: the mode and its knobs. ``params()`` is what enters
    the manifest (and so the version id); fields a mode does not use are blanked there
    (``coefficients`` outside ``grid``, ``steps`` outside ``adaptive``) so they do not split
    versions."""

    mode: str
    layers: tuple[int, ...]
    positions: str = "response"
    coefficients: tuple[float, ...] = ()
    steps: int = 8
    threshold: float = 70.0
    start_scale: float = 0.7
    momentum: float = 0.5
    direction: int = 1

    def params(self) -> dict[str, Any]:
        # key order and list types as the dict these options replaced, so version ids stay the same
        return {"mode": self.mode, "layers": list(self.layers),
                "coefficients": [float(c) for c in self.coefficients] if self.mode == "grid" else [],
                "positions": self.positions, "steps": self.steps if self.mode == "adaptive" else None,
                "threshold": self.threshold, "start_scale": self.start_scale, "momentum": self.momentum,
                "direction": self.direction}


def vector_columns(store: Store, vectors: Manifest, method: str) -> dict[str, Any]:
    """Columns naming a vector set in run tables: where it came from, for group-bys."""
    p = vectors.params
    if "activations" in vectors.parents:
        prompts = store.resolve(store.resolve(store.resolve(vectors.parents["activations"]).parents["responses"]).parents["prompts"])
    else:  # vectors read straight off prompts (persona probes: builders/stages/persona_probe.py)
        prompts = store.resolve(vectors.parents["prompts"])
    trait = json.loads(store.read_bytes(prompts, "prompt_set.json")).get("trait")
    return {"vectors": vectors.ref, "vectors_dataset": vectors.name, "method": method, "trait": trait,
            "source_set": p["prompt_set"], "extraction_variant": p["variant"], "position": p["position"],
            "component": p["component"], "vector_config": f"{p['prompt_set']}/{p['variant']}/{p['position']}/{method}"}


def layer_vectors(store: Store, vectors: Manifest, method: str, d_model: int, n_layers: int,
                  application: str) -> dict[int, Any]:
    """``{layer: vector}`` of a vector set, checked against the application model's width."""
    vecs_LD, meta = load_vectors(store, vectors, method)
    layers = json.loads(meta.get("layers", "null")) or list(range(vecs_LD.shape[0]))
    if vecs_LD.shape[1] != d_model:
        raise BuildError(f"{vectors.ref} ({method}) has width {vecs_LD.shape[1]}, the {application!r} model's "
                         f"d_model is {d_model}: vectors from {meta.get('model_id')} cannot steer it")
    out = {int(k): vecs_LD[i] for i, k in enumerate(layers) if int(k) < n_layers}
    if not out:
        raise BuildError(f"{vectors.ref}: none of its layers {layers} exist in the {application!r} model")
    return out


def parse_layer_spec(spec: str, n_layers: int, available: dict[int, Any]) -> list[int]:
    from transforms.capture import parse_layers

    try:
        layers = parse_layers(spec, n_layers)
    except ValueError as err:
        raise BuildError(f"--layers: {err}") from None
    missing = [k for k in layers if k not in available]
    if missing:
        raise BuildError(f"--layers {spec}: the vectors have no layer(s) {missing}")
    return layers


def parse_coefficients(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BuildError(f"--coefficients: expected a comma list of numbers, got {text!r}") from None
    if not values:
        raise BuildError("--coefficients: empty list")
    return values


def _single(layer: int, vector: Any, coef: float, positions: str, kind: str, base: dict[str, Any],
            h_norm: float, step: int | None = None) -> Planned:
    import numpy as np

    from transforms.steering import Edit, SteeringConfig
    from transforms.steering import perturbation_ratio

    v_norm = float(np.linalg.norm(vector))
    config = SteeringConfig((Edit(layer, vector, coef, positions, kind),))
    ratio = perturbation_ratio(coef, v_norm, h_norm) if kind == "add" else None
    return Planned(config, {**base, "step": step, "layer": layer, "layers": str(layer), "coef": float(coef),
                            "kind": kind, "positions": positions, "v_norm": v_norm, "h_norm": h_norm,
                            "perturbation_ratio": ratio})


def run_search(setup: SteeringSetup, vectors: dict[int, Any], opts: SteeringSearchOptions,
               base: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate one run's configurations by mode; returns (run rows, response rows)."""
    import numpy as np

    from transforms.steering import searches_from_norms

    runs, responses = evaluate(setup, [baseline_plan(base)])
    mode, layers, positions = opts.mode, list(opts.layers), opts.positions
    h = setup.h_norms(layers) if mode != "baseline" else {}
    base = {**base, "mode": mode}
    if mode == "grid":
        plans = [_single(k, vectors[k], c, positions, "add", base, h[k]) for k in layers for c in opts.coefficients]
        more = evaluate(setup, plans)
        runs, responses = runs + more[0], responses + more[1]
    elif mode == "ablate":
        from transforms.steering import Edit, SteeringConfig

        plans = [_single(k, vectors[k], 0.0, positions, "ablate", base, h[k]) for k in layers]
        if len(layers) > 1:
            together = SteeringConfig(tuple(Edit(k, vectors[k], 0.0, positions, "ablate") for k in layers))
            plans.append(Planned(together, {**base, "step": None, "layer": None, "layers": ",".join(map(str, layers)),
                                            "coef": 0.0, "kind": "ablate", "positions": positions,
                                            "v_norm": None, "h_norm": None, "perturbation_ratio": None}))
        more = evaluate(setup, plans)
        runs, responses = runs + more[0], responses + more[1]
    elif mode == "adaptive":
        v_norms = {k: float(np.linalg.norm(vectors[k])) for k in layers}
        search = searches_from_norms(layers, h, v_norms, scale=opts.start_scale, direction=opts.direction,
                                     threshold=opts.threshold, steps=opts.steps, momentum=opts.momentum)
        while not search.done:
            coefs = search.current()
            plans = [_single(k, vectors[k], coefs[k], positions, "add", base, h[k], search.step) for k in layers]
            step_runs, step_responses = evaluate(setup, plans)
            search.update({r["layer"]: (r["trait_mean"], r["coherence_mean"]) for r in step_runs})
            runs, responses = runs + step_runs, responses + step_responses
            log.info("adaptive step %d/%d done", search.step, search.steps)
    add_deltas(runs, runs[0]["trait_mean"])
    return runs, dedupe_responses(responses)


def steer_vectors(
    store: Store,
    catalog: Catalog,
    vectors_ref: str,
    method: str,
    *,
    experiment: str | None = None,
    variant: str | None = None,
    mode: str = "adaptive",
    layers: str = "30%-60%",
    coefficients: Sequence[float] = (),
    positions: str = "response",
    steps: int = 8,
    threshold: float = 70.0,
    start_scale: float = 0.7,
    momentum: float = 0.5,
    direction: int | None = None,
    questions: str | None = None,
    subset: int = 0,
    generation: dict[str, Any] | None = None,
    judges: JudgeChoice | None = None,
    max_batch: int | str = "auto",
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    """Build one steering run of one vector set and method (see the module docstring)."""
    exp = catalog.experiment(experiment)
    application = variant or exp.application
    if application is None:
        raise BuildError(f"experiment {exp.name!r} names no application variant: pass --variant")
    if mode not in MODES:
        raise BuildError(f"--mode: unknown mode {mode!r} (known: {', '.join(MODES)})")
    if mode == "grid" and not coefficients:
        raise BuildError("--mode grid needs --coefficients, e.g. --coefficients 2,4,6,8")
    if positions not in POSITIONS:
        raise BuildError(f"--positions: expected one of {', '.join(POSITIONS)}, got {positions!r}")
    if steps < 1:
        raise BuildError(f"--steps must be >= 1, got {steps}")
    vectors = store.resolve(vectors_ref)
    if vectors.kind != "vectors":
        raise BuildError(f"{vectors.ref} is a {vectors.kind} dataset, not vectors")
    base = vector_columns(store, vectors, method)
    setup = make_setup(store, catalog, exp.name, application, questions or vectors.params["prompt_set"],
                       subset=subset, generation=generation, choice=judges,
                       trait_set=vectors.params["prompt_set"], max_batch=max_batch, quiet=quiet)
    loaded = setup.loaded
    by_layer = layer_vectors(store, vectors, method, loaded.d_model, loaded.n_layers, application)
    chosen = parse_layer_spec(layers, loaded.n_layers, by_layer)
    if direction is None:
        direction = -1 if _questions_direction(store, catalog, setup.questions_set) == "negative" else 1
    opts = SteeringSearchOptions(mode=mode, layers=tuple(chosen), positions=positions,
                                 coefficients=tuple(float(c) for c in coefficients), steps=steps, threshold=threshold,
                                 start_scale=start_scale, momentum=momentum, direction=direction)
    params = {"experiment": exp.name, "application": application, "vectors": vectors.ref, "method": method,
              "trait_set": vectors.params["prompt_set"], **opts.params(), **setup.params()}
    base = {**base, "application": application, "direction": direction}
    spec = BuildSpec(name=names.steering(exp.name, application, vectors.name, method, mode), kind="steering",
                     builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents={"vectors": vectors.ref, **calibration_parent(setup)},
                     identity=dict(setup.identity))

    def produce(writer: Any) -> None:
        runs, responses = run_search(setup, by_layer, opts, base)
        writer.write_table(runs)
        writer.write_table(responses, table="responses")
        ok = [r for r in runs if r["mode"] != "baseline" and r["delta"] is not None
              and (r["coherence_mean"] or 0) >= threshold]
        best = max(ok, key=lambda r: direction * r["delta"], default=None)
        writer.summary.update({"configs": len(runs), "responses": len(responses),
                               "allow_uncalibrated": setup.choice.allow_uncalibrated,
                               "batch_sizes": sorted(setup.batch_sizes),
                               "baseline_trait": runs[0]["trait_mean"],
                               "best": None if best is None else {k: best[k] for k in ("layer", "coef", "delta", "coherence_mean")}})

    return store.build(spec, produce, force=force)


def _questions_direction(store: Store, catalog: Catalog, prompt_set: str) -> str | None:
    from builders.stages.prompts import ensure_prompt_set

    meta = json.loads(store.read_bytes(ensure_prompt_set(store, catalog, prompt_set), "prompt_set.json"))
    return (meta.get("steering") or {}).get("direction")


def matrix_vectors(store: Store, catalog: Catalog, experiment: str | None) -> list[Manifest]:
    """The vectors versions of the experiment's extraction matrix (each must be built)."""
    from transforms.sequences import parse_position

    exp = catalog.experiment(experiment)
    if not exp.extraction:
        raise BuildError(f"experiment {exp.name!r} has no extraction matrix in {catalog.path.name}")
    out = []
    for config in exp.extraction:
        name = names.vectors(exp.name, config.variant, config.prompt_set, parse_position(config.position).slug, "residual")
        if name not in store.datasets():
            raise BuildError(f"{name} is not built yet: run python -m builders.vectors --matrix first")
        out.append(store.latest(name))
    return out
