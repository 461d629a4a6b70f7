"""Combine two steering vectors (seed 001 phase 2), each strategy with a coefficient sweep.

    python -m builders.combinations --runs <steering run A> <steering run B> --factors 0.5,0.75,1,1.25,1.5

From each phase-1 run: its best single configuration (best trait delta, in the run's
direction, with coherence ≥ ``--threshold``, default 70): layer ``L``, coefficient ``c``,
vector ``v``. Then, on the same questions, model, generation settings and judge:

1. ``combined@A``: ``u = normalize(v̂_A + v̂_B)`` at A's best layer;
2. ``combined@B``: ``u`` at B's best layer;
3. ``combined@best``: ``u`` at the layer of whichever single had the larger delta;
4. ``ensemble``: A's vector at ``L_A`` with ``c_A/2`` and B's at ``L_B`` with ``c_B/2``,
   both hooks in one forward pass.

Sweeps: strategies 1-3 use coefficients ``factor · |c|·‖v‖`` of the source whose layer is
used (``u`` is unit norm, so factor 1 is that single's perturbation size); strategy 4
scales both half coefficients by ``factor``. Tables as in :mod:`builders.stages.steering`, plus
``strategy`` and ``factor``; the two best singles are copied in (``strategy`` =
``single:A`` / ``single:B``) so the phase-2 table is one query.
Output dataset: ``combinations-<experiment>-<application>-<A>-<B>``.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.stages.steering import layer_vectors
from builders.stages.steering_eval import Planned, add_deltas, baseline_plan, dedupe_responses, evaluate, setup_from_run

log = logging.getLogger(__name__)

BUILDER = "builders.combinations"
CODE_VERSION = "2"  # 2: positions read with run_positions (steering v3 changed what "response" means)
DEFAULT_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5)


def best_single(store: Store, run: Manifest, threshold: float) -> dict[str, Any]:
    """The best single-layer ``add`` row of a steering run at coherence ≥ ``threshold``."""
    direction = int(run.params.get("direction") or 1)
    rows = [r for r in store.read_table(run).to_dicts()
            if r["kind"] == "add" and r["layer"] is not None and r["delta"] is not None
            and (r["coherence_mean"] or 0) >= threshold]
    if not rows:
        raise BuildError(f"{run.ref}: no configuration reaches coherence ≥ {threshold:g}: nothing to combine "
                         f"(search lower coefficients or more layers first)")
    return max(rows, key=lambda r: (direction * r["delta"], -abs(r["coef"])))


def run_positions(run: Manifest) -> str:
    """The positions a steering run steered: before steering code version 3, ``response``
    meant generated tokens only, the name ``generated`` now (see :mod:`transforms.steering.apply`)."""
    positions = run.params["positions"]
    if positions == "response" and int(run.code_version) < 3:
        return "generated"
    return positions


def _run_short(run: Manifest) -> str:
    """What a steering run steered with, as its combinations name spells it: ``<vectors short>-<method>``."""
    return names.short_vectors_name(run.params["experiment"], run.params["vectors"]) + "-" + run.params["method"]


def plan_strategies(a: dict[str, Any], b: dict[str, Any], vec_a: dict[int, Any], vec_b: dict[int, Any],
                    h_norms: dict[int, float], factors: Sequence[float], positions: str, direction: int,
                    base: dict[str, Any]) -> list[Planned]:
    """The four strategies' configurations for every factor."""
    import numpy as np

    from transforms.steering import Edit, SteeringConfig, combine_vectors

    la, lb = int(a["layer"]), int(b["layer"])
    winner = a if direction * a["delta"] >= direction * b["delta"] else b
    size = {"A": abs(a["coef"]) * a["v_norm"], "B": abs(b["coef"]) * b["v_norm"]}
    plans = []
    combined_at = [("combined@A", la, size["A"]), ("combined@B", lb, size["B"]),
                   ("combined@best", int(winner["layer"]), size["A" if winner is a else "B"])]
    for strategy, layer, magnitude in combined_at:
        u = combine_vectors([vec_a[layer], vec_b[layer]]).numpy()
        for f in factors:
            coef = direction * f * magnitude
            plans.append(Planned(SteeringConfig((Edit(layer, u, coef, positions),)), {
                **base, "strategy": strategy, "factor": f, "layer": layer, "layers": str(layer), "coef": coef,
                "perturbation_ratio": abs(coef) / h_norms[layer], "h_norm": h_norms[layer], "v_norm": 1.0}))
    for f in factors:
        ca, cb = a["coef"] / 2 * f, b["coef"] / 2 * f
        edits = (Edit(la, vec_a[la], ca, positions), Edit(lb, vec_b[lb], cb, positions))
        ratio = (abs(ca) * float(np.linalg.norm(vec_a[la])) / h_norms[la]
                 + abs(cb) * float(np.linalg.norm(vec_b[lb])) / h_norms[lb])
        plans.append(Planned(SteeringConfig(edits), {
            **base, "strategy": "ensemble", "factor": f, "layer": None, "layers": f"{la}+{lb}", "coef": None,
            "perturbation_ratio": ratio, "h_norm": None, "v_norm": None}))
    return plans


def combine_runs(
    store: Store,
    catalog: Catalog,
    run_a: str,
    run_b: str,
    *,
    factors: Sequence[float] = DEFAULT_FACTORS,
    threshold: float = 70.0,
    max_batch: int | str = "auto",
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    a_run, b_run = store.resolve(run_a), store.resolve(run_b)
    for run_ in (a_run, b_run):
        if run_.kind != "steering":
            raise BuildError(f"{run_.ref} is a {run_.kind} dataset, not a steering run")
    for run_ in (a_run, b_run):
        if "judges" not in run_.params:
            raise BuildError(f"{run_.ref} predates judges chosen per metric: rebuild it with python -m builders.steering")
    keys = ("experiment", "application", "questions", "generation", "judges", "judge_identity")
    differ = [k for k in keys if a_run.params.get(k) != b_run.params.get(k)]
    differ += ["positions"] if run_positions(a_run) != run_positions(b_run) else []
    if differ:
        raise BuildError(f"{a_run.ref} and {b_run.ref} differ in {', '.join(differ)}: combine runs on the same setup")
    if not factors or any(f <= 0 for f in factors):
        raise BuildError(f"--factors must be positive numbers, got {list(factors)}")
    a, b = best_single(store, a_run, threshold), best_single(store, b_run, threshold)
    direction = int(a_run.params.get("direction") or 1)
    positions = run_positions(a_run)
    params = {"runs": {"A": a_run.ref, "B": b_run.ref}, "factors": [float(f) for f in factors],
              "threshold": threshold, "best": {"A": a["run_id"], "B": b["run_id"]}}
    exp, application = a_run.params["experiment"], a_run.params["application"]
    spec = BuildSpec(name=names.combinations(exp, application, _run_short(a_run), _run_short(b_run)), kind="combinations",
                     builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents={"A": a_run.ref, "B": b_run.ref}, identity=dict(a_run.identity))

    def produce(writer: Any) -> None:
        setup = setup_from_run(store, catalog, a_run, max_batch=max_batch, quiet=quiet)
        if setup.params()["judge_identity"] != a_run.params["judge_identity"]:
            raise BuildError(f"the judges of {a_run.ref} changed since it was scored (calibration, trait definition "
                             f"or judge version): rebuild the steering runs, then combine them")
        d, n = setup.loaded.d_model, setup.loaded.n_layers
        vec_a = layer_vectors(store, store.resolve(a_run.params["vectors"]), a_run.params["method"], d, n, application)
        vec_b = layer_vectors(store, store.resolve(b_run.params["vectors"]), b_run.params["method"], d, n, application)
        layers = sorted({int(a["layer"]), int(b["layer"])})
        base = {"application": application, "trait": a.get("trait"), "run_a": a_run.name, "run_b": b_run.name,
                "vector_a": a["vector_config"], "vector_b": b["vector_config"], "mode": "combination", "step": None,
                "kind": "add", "positions": positions, "direction": direction}
        plans = [baseline_plan({**base, "strategy": "baseline", "factor": None})]
        plans += plan_strategies(a, b, vec_a, vec_b, setup.h_norms(layers), factors, positions, direction, base)
        runs, responses = evaluate(setup, plans)
        add_deltas(runs, runs[0]["trait_mean"])
        for label, row in (("single:A", a), ("single:B", b)):  # phase-1 winners, as measured there
            runs.append({**base, **{k: row.get(k) for k in ("layer", "layers", "coef", "trait_mean", "trait_std",
                                                             "coherence_mean", "relevance_mean", "n", "n_scored",
                                                             "config", "run_id", "label", "perturbation_ratio",
                                                             "h_norm", "v_norm")},
                         "strategy": label, "factor": 1.0, "baseline_trait": row["baseline_trait"], "delta": row["delta"]})
        writer.write_table(runs)
        writer.write_table(dedupe_responses(responses), table="responses")
        writer.summary.update({"best_A": {"layer": a["layer"], "coef": a["coef"], "delta": a["delta"]},
                               "best_B": {"layer": b["layer"], "coef": b["coef"], "delta": b["delta"]},
                               "batch_sizes": sorted(setup.batch_sizes)})

    return store.build(spec, produce, force=force)
