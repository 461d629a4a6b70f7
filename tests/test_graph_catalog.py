"""The experiments declared in the repository's catalog: they load, plan, and run on other
checkpoints by changing model ids only."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from builders.graph.facts import stage_facts
from builders.graph.kinds import registry
from builders.graph.plan import stage_keys
from builders.shared.catalog import DEFAULT_CATALOG, load_catalog, parse_catalog

SEEDS = ("demo", "seed000", "seed001", "seed001_offline", "seed003", "seed004")


def keys(catalog, name):
    exp = catalog.experiment(name)
    kinds = registry()
    return stage_keys(exp.stages, {k: v.version for k, v in kinds.items()}, stage_facts(catalog, exp, exp.stages, kinds))


@pytest.mark.parametrize("name", SEEDS)
def test_seed_experiments_declare_stages_that_plan(name):
    catalog = load_catalog()
    exp = catalog.experiment(name)
    assert exp.stages, name
    assert len(set(keys(catalog, name).values())) == len(exp.stages)  # no two stages do the same work


def test_seed001_runs_phases_0_to_4_for_three_traits():
    stages = load_catalog().experiment("seed001").stages
    by_kind = {}
    for name, spec in stages.items():
        by_kind.setdefault(spec.kind, []).append(name)
    assert len(by_kind["vectors"]) == 3 * 4  # phase 0: instruction + 3 natural positions, per trait
    searches = [n for n in by_kind["steering"] if n.startswith("search")]
    assert len(searches) == 3 * 8  # phase 1a: 8 combinations per trait
    fine = [n for n in by_kind["steering"] if n.startswith("fine")]
    assert len(fine) == 3 * 2 and all(stages[n].params["around"] for n in fine)  # phase 1b: from 1a's results
    assert len(by_kind["combinations"]) == 3  # phase 2, from each source's best run
    assert by_kind["weights"] and by_kind["similarity"]  # phases 3 and 4
    combine = stages["combine.evil"]
    assert set(combine.needs) == {f"search_inst.evil.{m}" for m in ("mean_diff", "probe")} | {
        f"search_nat.evil.{p}.{m}" for p in (5, 10, 15) for m in ("mean_diff", "probe")} | {"fine_inst.evil",
                                                                                             "fine_nat.evil"}


def test_pointing_seed001_at_other_checkpoints_changes_model_ids_only(tmp_path):
    """Gemma 2 2B instead of Llama 3.1 8B: the same stages plan; every stage that runs a model
    gets a new key (the analyses too: they follow those stages), and no layer is hard-coded (every layer choice is a share of depth)."""
    data = yaml.safe_load(Path(DEFAULT_CATALOG).read_text())
    data["models"]["llama-3.1-8b"]["id"] = "google/gemma-2-2b"
    data["models"]["llama-3.1-8b-instruct"]["id"] = "google/gemma-2-2b-it"
    for entry in data["prompt_sets"].values():  # the copy lives elsewhere: absolute paths
        entry["path"] = str(Path(DEFAULT_CATALOG).parent / entry["path"])
    for entry in data["traits"].values():
        entry["definition"] = str(Path(DEFAULT_CATALOG).parent / entry["definition"])
    other = parse_catalog(data, tmp_path / "catalog.yaml")
    before, after = keys(load_catalog(), "seed001"), keys(other, "seed001")
    stages = other.experiment("seed001").stages
    # every stage runs a model or follows stages that do: all rebuild, and nothing else changed
    assert set(before) == set(after) and all(before[n] != after[n] for n in stages)
    assert [s.params for s in stages.values()] == [s.params for s in load_catalog().experiment("seed001").stages.values()]
    for spec in stages.values():
        for key in ("layers", "layer"):
            value = spec.params.get(key)
            assert value is None or all(re.fullmatch(r"\d+%", part.split("-")[0]) for part in str(value).split(",")), \
                (spec.name, value)


def test_steering_estimates_count_the_questions_of_the_runs_they_read(tmp_path):
    """A fine grid and a combination answer the questions of the searches they read (the twin's
    ``subset: 2``), not a guessed 20: combinations were estimated 6.7x too big before."""
    from builders.graph.execute import make_plan
    from store import Store

    planned = make_plan(Store(str(tmp_path / "store")), load_catalog(), "seed001_offline")
    steer = {name: cost.parts[0] for name, cost in planned.costs.items() if cost and cost.parts[0].what == "steer"}
    assert steer["search_nat.evil.5.probe"].sequences == 2 * (2 * 2 + 1)  # 2 layers x 2 steps + baseline
    assert steer["fine_inst.evil"].sequences == 2 * (4 + 1)  # 4 ratios + baseline
    assert steer["combine.evil"].sequences == 2 * (4 * 3 + 1)  # 4 strategies x 3 factors + baseline
