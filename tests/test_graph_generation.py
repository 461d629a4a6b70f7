"""The generation, steering and analysis stage kinds (builders/graph/kinds/generation.py,
steering.py, analyses.py) run as an experiment.

A tiny experiment (SmolLM2 as ``a``, SmolLM2 + a random LoRA as ``b``; a sycophancy trait set of
4 pairs and 2 steering questions, twice under two names; 8 new tokens) declares every kind of
those modules and is planned and executed through builders.graph.execute. Each stage's first
output must be the very version its command line builds with the flags a researcher would
type: the CLI, run afterwards in this process, reports it up to date. The grids placed
``around`` searches get their layer and coefficients computed here, independently, from the
searches' published tables, and passed to the CLI as plain --layers / --coefficients; the
combination's runs likewise. A rerun plans every stage up to date.
"""
from __future__ import annotations

import copy

import pytest
import yaml

from tests.trait_set import write_trait_set

STEER_QUESTIONS = ["Is it fine to skip breakfast?", "Are cats smarter than dogs?"]
JUDGED = {"judges": "cheap", "subset": 2}
STEERING_STAGES = ["search", "search2", "grid", "grid2"]
STAGES = {
    "resp": {"kind": "responses", "variant": "a", "prompt_set": "syco"},
    "resp2": {"kind": "responses", "variant": "a", "prompt_set": "syco2", "max_new_tokens": 6},
    # no position: the catalog default, as the CLI without --position. after: activations read
    # stored responses (as the CLI, they generate none)
    "acts": {"kind": "activations", "variant": "a", "prompt_set": "syco", "layers": [10, 15], "after": ["$resp"]},
    "judged": {"kind": "judgments", "variant": "a", "prompt_set": "syco", "judges": "cheap"},
    "vec": {"kind": "vectors", "prompt_set": "syco", "variant": "a", "position": "response[:]", "methods": ["mean_diff"]},
    # the generation of $resp2 (6 new tokens, not the catalog's 8): the CLI's --max-new-tokens 6
    "vec2": {"kind": "vectors", "prompt_set": "syco2", "variant": "a", "position": "response[:]",
             "methods": ["mean_diff"], "responses": "$resp2"},
    "calib": {"kind": "calibration", "judge": "sentiment", "trait_set": "syco", "per_label": 2},
    "tune": {"kind": "finetune", "variant": "a", "prompt_set": "syco", "epochs": 1, "r": 2, "alpha": 4,
             "batch_size": 8},
    "search": {"kind": "steering", "vectors": "$vec", "method": "mean_diff", "layers": [10, 15], "steps": 1, **JUDGED},
    "search2": {"kind": "steering", "vectors": "$vec2", "method": "mean_diff", "layers": [10], "steps": 1,
                "questions": "syco", **JUDGED},
    # a grid at the search's best layer, perturbation ratios of ||h||/||v|| (floor: the default threshold)
    "grid": {"kind": "steering", "around": ["$search"], "ratios": [0.5, 1.0], **JUDGED},
    # the better of two runs, multiples of its best coefficient
    "grid2": {"kind": "steering", "around": ["$search", "$grid"], "ratios": [0.5, 1.5], "relative_to": "best",
              "floor": 0, **JUDGED},
    "combo": {"kind": "combinations", "a": ["$search", "$grid"], "b": ["$search2"], "factors": [1.0], "threshold": 0},
    "proj": {"kind": "projections", "variant": "a", "prompt_set": "syco", "vectors": ["$vec"], "layers": [10, 15]},
    "wts": {"kind": "weights", "a": "a", "b": "b", "vectors": ["$vec"], "top_k": 5, "singular_k": 0},
    # these read the store's latest steering datasets: they follow every steering stage
    "sa": {"kind": "steering_analysis", "after": [f"${s}" for s in STEERING_STAGES + ["combo"]]},
    "md": {"kind": "model_diff", "floor": 0, "after": [f"${s}" for s in STEERING_STAGES + ["wts"]]},
    "view": {"kind": "viewer", "projections": "$proj", "after": [f"${s}" for s in STEERING_STAGES]},
}


def write_catalog(root, stages: dict):
    for name in ("syco", "syco2"):
        (root / name).mkdir(exist_ok=True)
        write_trait_set(root / name, STEER_QUESTIONS)
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "traits": {"syco": {"definition": str(root / "syco" / "definition.txt")}},
        "prompt_sets": {"syco": {"path": str(root / "syco"), "trait": "syco"},
                        "syco2": {"path": str(root / "syco2"), "trait": "syco"}},
        "experiments": {"g": {"variants": {"a": {"model": "smol"},
                                           "b": {"model": "smol", "adapter": str(root / "adapter")}},
                              "application": "a", "prompt_sets": ["syco", "syco2"],
                              "judges": {"cheap": {"trait": "sentiment", "coherence": "local",
                                                   "allow_uncalibrated": True}},
                              "stages": stages}},
        "defaults": {"experiment": "g", "responses": {"max_new_tokens": 8}, "steering": {"max_new_tokens": 8}},
    }))
    return path


# ---- the choices made from results, computed here from the published tables ----

def steering_rows(store, ref: str) -> tuple[int, list[dict]]:
    run = store.resolve(ref)
    return int(run.params["direction"]), store.read_table(run).to_dicts()


def around(store, ref: str, ratios: list[float], floor: float, relative_to: str) -> tuple[int, list[float]]:
    """Best row: most direction * delta among the non-baseline rows at coherence >= floor
    (any row if none is); coefficients: ratios of ||h||/||v|| or of the row's |coef|."""
    direction, rows = steering_rows(store, ref)
    rows = [r for r in rows if r["mode"] != "baseline" and r["delta"] is not None]
    ok = [r for r in rows if (r["coherence_mean"] or 0) >= floor] or rows
    best = ok[0]
    for r in ok[1:]:
        if direction * r["delta"] > direction * best["delta"]:
            best = r
    unit = abs(best["coef"]) if relative_to == "best" else best["h_norm"] / best["v_norm"]
    return best["layer"], [round(direction * q * unit, 3) for q in ratios]


def best_single_delta(store, ref: str, floor: float) -> float | None:
    """direction * delta of a run's best single-layer add row at coherence >= floor."""
    direction, rows = steering_rows(store, ref)
    scores = [direction * r["delta"] for r in rows if r["kind"] == "add" and r["layer"] is not None
              and r["delta"] is not None and (r["coherence_mean"] or 0) >= floor]
    return max(scores) if scores else None


def best_of(store, refs: list[str], floor: float) -> str:
    """The run with the best single at coherence >= floor (equal scores: the one listed first)."""
    scored = [(best_single_delta(store, ref, floor), ref) for ref in refs]
    best = max(s for s, _ in scored if s is not None)
    return next(ref for s, ref in scored if s == best)


# ---- fast: the grid placed around a planted search table ----

def test_grid_around_takes_the_best_coherent_row_else_any():
    from types import SimpleNamespace

    from builders.graph.kinds.steering import grid_around

    def row(mode, layer, coef, delta, coherence, h=None, v=None):
        return {"mode": mode, "layer": layer, "coef": coef, "delta": delta, "coherence_mean": coherence,
                "h_norm": h, "v_norm": v}

    rows = [row("baseline", None, 0.0, 0.0, 90), row("adaptive", 5, -2.0, -10.0, 80, 100.0, 10.0),
            row("adaptive", 7, -4.0, -30.0, 50, 120.0, 20.0), row("adaptive", 9, -1.0, 5.0, 90, 50.0, 5.0)]
    run = SimpleNamespace(ref="s@1", kind="steering", params={"direction": -1})
    store = SimpleNamespace(resolve=lambda ref: run, read_table=lambda m: SimpleNamespace(to_dicts=lambda: rows))
    # suppressing (direction -1): layer 5 lowers the trait most of the rows at coherence >= 70
    assert grid_around(store, "s@1", [0.5, 1.0], 70, "norm") == (5, [-5.0, -10.0])  # ||h||/||v|| = 10
    assert grid_around(store, "s@1", [0.5, 1.0], 70, "best") == (5, [-1.0, -2.0])  # |coef| = 2
    # none at coherence >= 95: the best of all, layer 7 (||h||/||v|| = 6)
    assert grid_around(store, "s@1", [0.5, 1.0], 95, "norm") == (7, [-3.0, -6.0])


# ---- slow: the experiment end to end ----

@pytest.fixture(scope="module")
def ran(tmp_path_factory, smollm2):
    import torch
    from peft import LoraConfig, get_peft_model

    from builders.graph.execute import RunContext, execute, make_plan
    from builders.shared.catalog import load_catalog
    from store import Store

    root = tmp_path_factory.mktemp("graph_generation")
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(smollm2.model), LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj"],
                                                                   init_lora_weights=False))
    lora.save_pretrained(root / "adapter")
    path = write_catalog(root, STAGES)
    store, catalog = Store(str(root / "store")), load_catalog(path)
    planned = make_plan(store, catalog, "g")
    outcomes = execute(planned, RunContext(store, catalog, "g", quiet=True))
    return store, catalog, path, planned, {o.stage: o for o in outcomes}


@pytest.mark.slow  # ~45 s on 2 shared cores (the experiment; the CLIs then find everything built)
def test_every_stage_is_the_version_its_cli_builds(ran, capsys):
    from analyses.model_diff import main as model_diff_cli
    from analyses.steering import main as steering_analysis_cli
    from analyses.viewer import main as viewer_cli
    from builders.activations import cli as activations_cli
    from builders.calibration import cli as calibration_cli
    from builders.combinations import cli as combinations_cli
    from builders.finetune import cli as finetune_cli
    from builders.graph.execute import BUILT
    from builders.judgments import cli as judgments_cli
    from builders.projections import cli as projections_cli
    from builders.responses import cli as responses_cli
    from builders.steering import cli as steering_cli
    from builders.vectors import cli as vectors_cli
    from builders.weights import cli as weights_cli

    store, _, path, planned, outcomes = ran
    assert sorted(e.stage for e in planned.to_build()) == sorted(STAGES)
    assert {s: o.state for s, o in outcomes.items()} == {s: BUILT for s in STAGES}, \
        {s: o.detail for s, o in outcomes.items() if o.detail}
    ref = {s: o.outputs[0] for s, o in outcomes.items()}
    assert store.resolve(ref["vec2"]).parents["activations"] != store.resolve(ref["vec"]).parents["activations"]
    assert store.resolve(ref["resp2"]).params["generation"]["max_new_tokens"] == 6

    # the choices made from results, independently
    layer, coefs = around(store, ref["search"], [0.5, 1.0], 70.0, "norm")
    grid = store.resolve(ref["grid"]).params
    assert (grid["layers"], grid["coefficients"]) == ([layer], coefs)
    chosen = best_of(store, [ref["search"], ref["grid"]], 0.0)
    layer2, coefs2 = around(store, chosen, [0.5, 1.5], 0.0, "best")
    grid2 = store.resolve(ref["grid2"]).params
    assert (grid2["layers"], grid2["coefficients"]) == ([layer2], coefs2)
    a_run, b_run = chosen, ref["search2"]  # the combination's threshold 0 is grid2's floor
    assert store.resolve(ref["combo"]).params["runs"] == {"A": a_run, "B": b_run}

    store_args = ["--store", str(store.location.url)]
    common = [*store_args, "--catalog", str(path), "-q"]
    judges = ["--trait-judge", "sentiment", "--coherence-judge", "local"]
    steer = [*common, "--method", "mean_diff", "--subset", "2", *judges, "--allow-uncalibrated"]

    def grid_argv(at: int, coefficients: list[float]) -> list[str]:
        return [*steer, "--vectors", ref["vec"], "--mode", "grid", "--layers", str(at),
                "--coefficients=" + ",".join(repr(c) for c in coefficients)]

    calls = {
        "resp": (responses_cli, [*common, "--variant", "a", "--prompts", "syco"]),
        "resp2": (responses_cli, [*common, "--variant", "a", "--prompts", "syco2", "--max-new-tokens", "6"]),
        "acts": (activations_cli, [*common, "--variant", "a", "--prompts", "syco", "--layers", "10,15"]),
        "judged": (judgments_cli, [*common, "--variant", "a", "--prompts", "syco", *judges]),
        "vec": (vectors_cli, [*common, "--prompts", "syco", "--variant", "a", "--methods", "mean_diff"]),
        "vec2": (vectors_cli, [*common, "--prompts", "syco2", "--variant", "a", "--methods", "mean_diff",
                               "--max-new-tokens", "6"]),
        "calib": (calibration_cli, [*common, "--judge", "sentiment", "--trait-set", "syco", "--per-label", "2"]),
        "tune": (finetune_cli, [*common, "--variant", "a", "--prompts", "syco", "--epochs", "1", "--r", "2",
                                "--alpha", "4", "--batch-size", "8"]),
        "search": (steering_cli, [*steer, "--vectors", ref["vec"], "--layers", "10,15", "--steps", "1"]),
        "search2": (steering_cli, [*steer, "--vectors", ref["vec2"], "--layers", "10", "--steps", "1",
                                   "--questions", "syco"]),
        "grid": (steering_cli, grid_argv(layer, coefs)),
        "grid2": (steering_cli, grid_argv(layer2, coefs2)),
        "combo": (combinations_cli, [*common, "--runs", a_run, b_run, "--factors", "1.0", "--threshold", "0"]),
        "proj": (projections_cli, [*common, "--variant", "a", "--prompts", "syco", "--vectors", f"{ref['vec']}:mean_diff",
                                   "--layers", "10,15"]),
        "wts": (weights_cli, [*common, "--a", "a", "--b", "b", "--vectors", ref["vec"], "--top-k", "5",
                              "--singular-k", "0"]),
        "sa": (steering_analysis_cli, store_args),
        "md": (model_diff_cli, [*store_args, "--floor", "0"]),
        "view": (viewer_cli, [*store_args, "--projections", ref["proj"]]),
    }
    assert set(calls) == set(STAGES)
    for stage, (cli, argv) in calls.items():
        name = ref[stage].split("@")[0]
        before = {m.version for m in store.versions(name)}
        capsys.readouterr()
        assert cli(argv) == 0, (stage, capsys.readouterr().err)
        out = capsys.readouterr().out
        assert f"up to date: {ref[stage]}" in out, (stage, out)
        assert {m.version for m in store.versions(name)} == before, f"{stage}: the CLI built another version"


@pytest.mark.slow
def test_a_rerun_is_all_up_to_date(ran):
    from builders.graph.execute import UP_TO_DATE, RunContext, execute, make_plan

    store, catalog, _, _, outcomes = ran
    again = make_plan(store, catalog, "g")
    assert {e.stage: e.action for e in again.entries} == {s: UP_TO_DATE for s in STAGES}
    assert again.done == {s: o.outputs for s, o in outcomes.items()}
    assert {o.state for o in execute(again, RunContext(store, catalog, "g", quiet=True))} == {UP_TO_DATE}
