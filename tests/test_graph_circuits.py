"""The circuits stage kinds (builders/graph/kinds/circuits.py): a small seed 003 experiment
declared in a catalog, planned and run through builders.graph.execute, gives each stage the
dataset its command line builds with the same flags (same version id: the CLI, run afterwards,
finds it up to date), with the heads and the direction layer chosen from results computed here
independently; a rerun plans nothing. Plus the cost estimates against hand counts and the
one-line refusals. SmolLM2 (30 layers x 9 query heads), 2 persona pairs."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from builders.graph.params import Param

REPO = Path(__file__).resolve().parents[1]
EXP, N_PAIRS = "g003", 2
QUESTIONS = ["sun_shine"]
ON = {"variant": "instruct", "prompt_set": "persona"}
STAGES = {
    "probe": {"kind": "persona_probe", **ON, "layers": [29], "template_holdout": "2", "questions": QUESTIONS,
              "n_bootstrap": 20},
    "lens": {"kind": "logit_lens", **ON, "layers": 29, "limit_pairs": N_PAIRS, "top_k": 3},
    "residual": {"kind": "patching", **ON, "layers": [27, 29], "positions": "-2:", "limit_pairs": N_PAIRS},
    "heads": {"kind": "patching", **ON, "patch_kind": "heads", "layers": "29", "limit_pairs": N_PAIRS},
    "by_position": {"kind": "patching", **ON, "patch_kind": "heads_by_position", "from_patching": "$heads",
                    "top_k": 2, "positions": "-1", "limit_pairs": N_PAIRS},
    "ablation": {"kind": "head_ablation", **ON, "from_patching": "$heads", "top_k": 2, "modes": ["zero"],
                 "random_draws": 1, "limit_pairs": N_PAIRS},
    # no variant: the probe's; no layer: the probe's best
    "direction": {"kind": "direction_patching", "vectors": "$probe", "prompt_set": "persona", "alphas": [0, 4],
                  "limit_pairs": N_PAIRS},
    "report": {"kind": "circuits_report", "inputs": ["$residual", "$heads", "$by_position", "$probe", "$lens",
                                                     "$ablation", "$direction"], "top": 2},
}


def write_catalog(folder: Path, stages: dict) -> Path:
    """The repository's models and persona set, one experiment with ``stages``."""
    import yaml

    repo = yaml.safe_load((REPO / "catalog.yaml").read_text())
    persona = dict(repo["prompt_sets"]["persona"], path=str(REPO / repo["prompt_sets"]["persona"]["path"]))
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smollm2-135m-instruct": repo["models"]["smollm2-135m-instruct"]},
        "prompt_sets": {"persona": persona},
        "experiments": {EXP: {"variants": {"instruct": {"model": "smollm2-135m-instruct"}},
                              "prompt_sets": ["persona"], "stages": stages}},
        "defaults": {"experiment": EXP},
    }))
    return path


def cli_ref(cli, argv: list[str], capsys) -> str:
    """Run a builder's command line in this process; the one reference it reports (up to date)."""
    capsys.readouterr()
    assert cli(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("up to date: "), line  # same version id: nothing rebuilt
    return re.search(r"(\S+@\S+)", line).group(1)


def independent_top_heads(store, ref: str, k: int) -> str:
    """Top-|mean normalised effect| heads of a heads patching table, computed here."""
    rows = store.read_table(store.resolve(ref)).to_dicts()
    sums: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        if r["normalised"] is not None and not math.isnan(r["normalised"]):
            sums.setdefault((r["layer"], r["head"]), []).append(r["normalised"])
    means = {h: sum(v) / len(v) for h, v in sums.items()}
    top = sorted(means, key=lambda h: (-abs(means[h]), h))[:k]
    return ",".join(f"L{layer}H{head}" for layer, head in sorted(top))


@pytest.mark.slow  # ~45 s on 2 idle cores: 8 stages of forwards
def test_seed003_experiment_matches_the_clis(tmp_path, capsys):
    from analyses.circuits import cli as report_cli
    from builders.direction_patching import cli as direction_cli
    from builders.graph.execute import BUILT, UP_TO_DATE, RunContext, execute, make_plan
    from builders.head_ablation import cli as ablation_cli
    from builders.logit_lens import cli as lens_cli
    from builders.patching import cli as patching_cli
    from builders.persona_probe import cli as probe_cli
    from builders.shared.catalog import load_catalog
    from store import Store

    path = write_catalog(tmp_path, STAGES)
    catalog, store = load_catalog(path), Store(str(tmp_path / "store"))
    planned = make_plan(store, catalog, EXP)
    assert [e.action for e in planned.entries] == ["build"] * len(STAGES)
    assert all(planned.costs[s] is not None for s in STAGES if s != "report")
    outcomes = {o.stage: o for o in execute(planned, RunContext(store, catalog, EXP, quiet=True))}
    assert {s: o.state for s, o in outcomes.items()} == {s: BUILT for s in STAGES}, \
        {s: o.detail for s, o in outcomes.items() if o.detail}
    out = {s: o.outputs[0] for s, o in outcomes.items()}

    common = ["--store", str(tmp_path / "store"), "--catalog", str(path), "--experiment", EXP, "-q"]
    on = common + ["--variant", "instruct", "--prompt-set", "persona"]
    pairs = ["--limit-pairs", str(N_PAIRS)]
    assert cli_ref(probe_cli, on + ["--layers", "29", "--template-holdout", "2", "--questions",
                                    ",".join(QUESTIONS), "--n-bootstrap", "20"], capsys) == out["probe"]
    assert cli_ref(lens_cli, on + ["--layers", "29", "--top-k", "3"] + pairs, capsys) == out["lens"]
    assert cli_ref(patching_cli, on + ["--layers", "27,29", "--positions=-2:"] + pairs, capsys) == out["residual"]
    assert cli_ref(patching_cli, on + ["--kind", "heads", "--layers", "29"] + pairs, capsys) == out["heads"]
    top = independent_top_heads(store, out["heads"], 2)
    assert cli_ref(patching_cli, on + ["--kind", "heads_by_position", "--heads", top, "--positions=-1"] + pairs,
                   capsys) == out["by_position"]
    assert store.resolve(out["by_position"]).params["heads"] == top
    assert cli_ref(ablation_cli, on + ["--from-patching", out["heads"], "--top-k", "2", "--modes", "zero",
                                       "--random-draws", "1"] + pairs, capsys) == out["ablation"]
    assert store.resolve(out["ablation"]).params["chosen"] == top  # the same heads as by_position
    probe = store.resolve(out["probe"])
    rows = [r for r in store.read_table(probe).to_dicts() if r["method"] == "probe"]
    best = max(rows, key=lambda r: (r["auroc"], -r["layer"]))["layer"]  # first of equal AUROCs, as max() picks
    assert cli_ref(direction_cli, common + ["--vectors", out["probe"], "--layer", str(best), "--alphas=0,4"]
                   + pairs, capsys) == out["direction"]
    capsys.readouterr()
    assert report_cli(["--store", str(tmp_path / "store"), "--experiment", EXP, "--variant", "instruct",
                       "--top", "2"] + [x for role, s in (("residual", "residual"), ("heads", "heads"),
                                                          ("heads-by-position", "by_position"), ("probe", "probe"),
                                                          ("logit-lens", "lens"), ("ablation", "ablation"),
                                                          ("direction", "direction"))
                                        for x in (f"--{role}", out[s])]) == 0
    assert f"up to date: {out['report']}" in capsys.readouterr().out

    again = make_plan(store, catalog, EXP)
    assert [e.action for e in again.entries] == [UP_TO_DATE] * len(STAGES)
    assert {o.state for o in execute(again, RunContext(store, catalog, EXP, quiet=True))} == {UP_TO_DATE}


def test_cost_estimates_count_rows(tmp_path):
    from builders.graph.costs import PROMPT_TOKENS, CostContext
    from builders.graph.kinds import registry
    from builders.shared.catalog import load_catalog

    catalog = load_catalog(write_catalog(tmp_path, {}))
    kinds, cc = registry(), CostContext(catalog, EXP)

    def rows(kind: str, **p) -> int:
        cost = kinds[kind].cost(cc, {**ON, **p})
        assert (cost.tokens, cost.passes) == (PROMPT_TOKENS, 1)
        return cost.sequences

    # 2 pairs x (targets + the clean and corrupted runs); SmolLM2: 9 query heads per layer
    assert rows("patching", layers=[0, 29], positions="-2:", limit_pairs=2) == 2 * (2 * 2 + 2)
    assert rows("patching", patch_kind="heads", layers="28-29", limit_pairs=2) == 2 * (18 + 2)
    assert rows("patching", patch_kind="heads_by_position", heads="L1H2,L3H4", positions="-3:", limit_pairs=2) \
        == 2 * (6 + 2)
    assert rows("patching", patch_kind="heads_by_position", from_patching="x@1", top_k=3, positions="-1",
                limit_pairs=5) == 5 * (3 + 2)
    assert rows("logit_lens") == 2 * 192  # every pair of the set, both sides
    assert rows("persona_probe", questions=["sun_shine", "rainbow"]) == 16 * 2  # 16 templates x 2 questions
    assert rows("direction_patching", vectors="v@1", alphas=[-4, 0, 4], limit_pairs=2) == 2 * 2 * 5
    # both sides x (base + means + (chosen + 2 random sets + 3 single heads) x 2 modes)
    assert rows("head_ablation", heads="L1H1,L2H2,L3H3", random_draws=2, limit_pairs=2) == 2 * 2 * (2 + 6 * 2)
    gen = kinds["head_ablation"].cost(cc, {**ON, "top_k": 2, "modes": ["zero"], "random_draws": 1, "limit_pairs": 2,
                                           "generate": 2, "max_new_tokens": 8})
    # reads: both sides x (base + 2 sets + 2 single heads); answers: 2 prompts x (unablated + 2 sets)
    assert [(p.sequences, p.tokens, p.passes) for p in gen.parts] == [(2 * 2 * 5, PROMPT_TOKENS, 1),
                                                                    (2 * 3, PROMPT_TOKENS + 8, 8)]


def test_declarations_refused_in_one_line(tmp_path):
    from builders.shared.catalog import CatalogError, load_catalog

    persona_probe = {"kind": "persona_probe", **ON}
    bad = {
        "unknown": ({"p": {"kind": "patching", **ON, "layer": 3}}, "p.layer: unknown parameter"),
        "patch_kind": ({"p": {"kind": "patching", **ON, "patch_kind": "heads_x"}}, "expected one of"),
        "ref": ({"p": {"kind": "direction_patching", **ON, "vectors": "probe-x"}}, "expected a stage reference"),
        "missing": ({"r": {"kind": "circuits_report", "inputs": ["$nope"]}}, "missing stage $nope"),
        "variant": ({"p": {**persona_probe, "variant": "base"}}, "unknown variant"),
        "holdout": ({"p": {**persona_probe, "template_holdout": 2}}, "expected a name"),  # "2": text, as the CLI's
        "set": ({"p": {"kind": "logit_lens", "variant": "instruct"}}, "p.prompt_set: missing"),
    }
    for name, (stages, needle) in bad.items():
        folder = tmp_path / name
        folder.mkdir()
        with pytest.raises(CatalogError, match=re.escape(needle)) as err:
            load_catalog(write_catalog(folder, stages))
        assert "\n" not in str(err.value)


def test_runner_refusals_and_roles(tmp_path):
    from types import SimpleNamespace

    from builders.graph.kinds.circuits import best_layer, input_role, run_patching
    from builders.graph.params import layers_text
    from builders.shared.common import BuildError

    assert (layers_text([6, 8]), layers_text(12), layers_text("9-19")) == ("6,8", "12", "9-19")
    ctx = SimpleNamespace(store=None, catalog=None, experiment=EXP, common={"force": False, "quiet": True})
    for params, needle in (({"patch_kind": "residual", "from_patching": "x@1"}, "patch_kind must be heads"),
                           ({"patch_kind": "heads", "from_patching": "x@1", "heads": "L1H1"}, "not both"),
                           ({"top_k": 2}, "from_patching only")):
        with pytest.raises(BuildError, match=needle):
            run_patching(ctx, {"variant": "instruct", **params})
    probe = SimpleNamespace(ref="p@1", summary={"best_by_heldout_auroc": {"probe": {"layer": 7}}})
    vectors = SimpleNamespace(ref="v@1", summary={"best_by_val_auroc": {"mean_diff": {"layer": 3}}})
    assert (best_layer(probe, "probe"), best_layer(vectors, "mean_diff")) == (7, 3)
    with pytest.raises(BuildError, match="give layer"):
        best_layer(probe, "mean_diff")
    patch = SimpleNamespace(ref="x@1", builder="builders.patching", params={"kind": "heads_by_position"})
    assert input_role(patch) == "heads_by_position"
    with pytest.raises(BuildError, match="not a probe"):
        input_role(SimpleNamespace(ref="r@1", builder="builders.responses", params={}))


def test_params_follow_the_options_dataclasses():
    """Every option field is a parameter (the kinds cannot drift from the builders)."""
    import dataclasses

    from builders.graph.kinds import registry
    from builders.stages.direction_patching import DirectionOptions
    from builders.stages.head_ablation import AblationOptions
    from builders.stages.logit_lens import LensOptions
    from builders.stages.patching import PatchOptions
    from builders.stages.persona_probe import ProbeOptions

    kinds = registry()
    renamed = {"kind": "patch_kind"}
    for kind, cls in (("persona_probe", ProbeOptions), ("logit_lens", LensOptions), ("patching", PatchOptions),
                      ("head_ablation", AblationOptions), ("direction_patching", DirectionOptions)):
        params = kinds[kind].params
        for f in dataclasses.fields(cls):
            assert isinstance(params[renamed.get(f.name, f.name)], Param), (kind, f.name)
