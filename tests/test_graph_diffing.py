"""The diffing / dictionary stage kinds (builders.graph.kinds.diffing) run as an experiment.

A tiny experiment (SmolLM2 as A, SmolLM2 + a random LoRA as B; four questions, a small trait
set, a small minimal-pair set) is planned and executed through builders.graph.execute. Each
stage's first output must be the very version its command line builds: the CLI, run afterwards
with the flags a researcher would type, finds it up to date and publishes nothing new. A rerun
plans every stage up to date. The fast tests check the parameter mapping and the estimates
without loading a model.
"""
from __future__ import annotations

import copy
import json

import pytest
import yaml

from builders.graph.execute import BUILT, UP_TO_DATE, RunContext, execute, make_plan
from builders.graph.kinds import registry
from builders.graph.kinds.diffing import cli_values
from builders.graph.params import layers_text
from builders.shared.catalog import load_catalog
from store import Store
from tests.test_user_features import write_pairs
from tests.trait_set import write_trait_set

LAYER = 3
QUESTIONS = ["Name a fruit.", "What is the capital of Italy?", "Say something about the sea.", "Count to three."]
CC = {"kind": "crosscoder", "a": "a", "b": "b", "prompt_set": "general", "layer": LAYER, "dict_size": 64, "epochs": 2,
      "batch_size": 16, "resample_every": 0, "top_k": 2, "l1": 2}  # l1: 2 must mean the CLI's --l1 2 (2.0)
STAGES = {
    "cc": CC,
    "vec": {"kind": "vectors", "prompt_set": "syco", "variant": "a", "position": "response[:]", "methods": ["mean_diff"]},
    "clamp": {"kind": "clamping", "dictionary": "$cc", "variant": "b", "prompt_set": "general", "most_b_specific": 4,
              "subset": 2, "trait_set": "syco", "judges": "cheap", "allow_uncalibrated": True, "max_new_tokens": 4},
    "org": {"kind": "organism_latents", "crosscoder": "$cc", "vectors": "$vec", "clamping": "$clamp", "top": 4,
            "n_random": 20},
    "dec": {"kind": "decompose", "dictionary": "$cc", "vectors": "$vec", "top_n": 3},
    "uf": {"kind": "user_features", "variant": "a", "prompt_set": "pairs", "layer": LAYER, "dictionary": "$cc",
           "permutations": 50},
    "det": {"kind": "detector", "variant": "a", "prompt_set": "pairs", "layer": LAYER, "dictionary": "$cc",
            "category": "quiz", "folds": 2, "bootstrap": 20, "after": ["$uf"]},
    "sae": {"kind": "sae", "variant": "a", "prompt_set": "general", "layer": LAYER, "dict_size": 32, "epochs": 1,
            "batch_size": 16, "resample_every": 0, "dict_kind": "batch_topk", "k": 4},
    "sim": {"kind": "similarity", "a": "a", "b": "b", "prompt_set": "general", "layers": [LAYER, LAYER + 1]},
    "wts": {"kind": "weights", "a": "a", "b": "b", "vectors": ["$vec"], "top_k": 5, "singular_k": 0},
    "cmp": {"kind": "compare", "a": "a", "b": "b", "prompt_set": "general", "vectors": ["$vec"], "random": 20},
}


def write_catalog(root, stages: dict) -> object:
    (root / "general.json").write_text(json.dumps({"prompts": [{"id": f"g{i}", "text": t}
                                                               for i, t in enumerate(QUESTIONS)]}))
    (root / "syco").mkdir(exist_ok=True)
    trait = write_trait_set(root / "syco")
    write_pairs(root / "pairs")
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "traits": {"syco": {"definition": str(trait / "definition.txt")}},
        "prompt_sets": {"general": {"path": str(root / "general.json")},
                        "syco": {"path": str(trait), "trait": "syco"}, "pairs": {"path": str(root / "pairs")}},
        "experiments": {"g": {"variants": {"a": {"model": "smol"},
                                           "b": {"model": "smol", "adapter": str(root / "adapter")}},
                              "prompt_sets": ["general", "syco", "pairs"],
                              "judges": {"cheap": {"trait": "sentiment", "coherence": "local"}},
                              "stages": stages}},
        # responses of 4 tokens: user_features' own default. With another catalog default, its crosscoder
        # read (paired_activations) publishes newer responses of the set, and a rerun of the same
        # user_features call pools activations of those: another version (a stage issue, reported)
        "defaults": {"experiment": "g", "responses": {"max_new_tokens": 4}, "steering": {"max_new_tokens": 4}},
    }))
    return path


# ---- fast: no model loads ----

def test_float_params_take_the_cli_type_and_layers_the_cli_text():
    params = registry()["crosscoder"].params
    got = cli_values(params, {"l1": 2, "lr": 1, "dict_size": 64, "values": None})
    assert got["l1"] == 2.0 and isinstance(got["l1"], float) and isinstance(got["lr"], float)
    assert isinstance(got["dict_size"], int)
    assert cli_values(registry()["clamping"].params, {"values": [0, 2]})["values"] == [0.0, 2.0]
    assert [layers_text(v) for v in (12, [6, 8], "6-10", "all")] == ["12", "6,8", "6-10", "all"]


def test_training_options_map_the_renamed_flags():
    from builders.graph.kinds.diffing import training_options
    from builders.stages.crosscoder import CrosscoderOptions

    got = training_options({"dict_kind": "batch_topk", "l1": 0.5, "k": 8, "a": "a", "top_k": 3})
    assert got == CrosscoderOptions(kind="batch_topk", l1_coefficient=0.5, k=8)
    assert training_options({}) == CrosscoderOptions()


def test_plan_costs_count_answers_reads_and_clamp_configurations(tmp_path):
    catalog = load_catalog(write_catalog(tmp_path, STAGES))
    planned = make_plan(Store(str(tmp_path / "store")), catalog, "g")
    assert [e.stage for e in planned.to_build()] == list(catalog.experiment("g").stages)
    costs = planned.costs
    # 4 questions answered by A (4 new tokens), then read by A and B
    assert (costs["cc"].sequences, costs["cc"].tokens) == (4 + 8, 48 + 4)
    assert costs["sae"].sequences == 4 + 4
    # subset 2 x (baseline, chosen, random), each generated (4 new tokens) then judged
    assert (costs["clamp"].sequences, costs["clamp"].tokens) == (6 + 6, 48 + 4)
    assert costs["clamp"].token_passes == pytest.approx(6 * 52 * 4 + 6 * 52, rel=0.25)  # Cost + rounds passes
    assert costs["org"].token_passes == costs["dec"].token_passes == costs["wts"].token_passes == 0


def test_clamping_needs_exactly_one_latent_choice():
    from builders.graph.kinds.diffing import chosen_latents
    from builders.shared.common import BuildError

    with pytest.raises(BuildError, match="exactly one of latents, top_b_only and most_b_specific, got latents, "
                                         "top_b_only"):
        chosen_latents(None, {"latents": [1], "top_b_only": 3})
    with pytest.raises(BuildError, match="got none"):
        chosen_latents(None, {})
    assert chosen_latents(None, {"top_b_only": 3}) == ([], 3)
    assert chosen_latents(None, {"latents": [4, 1]}) == ([4, 1], None)


# ---- slow: the experiment end to end ----

@pytest.fixture(scope="module")
def ran(tmp_path_factory, smollm2):
    import torch
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("graph_diffing")
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(smollm2.model), LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj", "down_proj"],
                                                                   init_lora_weights=False))
    lora.save_pretrained(root / "adapter")
    path = write_catalog(root, STAGES)
    store, catalog = Store(str(root / "store")), load_catalog(path)
    outcomes = execute(make_plan(store, catalog, "g"), RunContext(store, catalog, "g", quiet=True))
    return store, catalog, path, {o.stage: o for o in outcomes}


@pytest.mark.slow
def test_every_stage_is_the_version_its_cli_builds(ran, capsys):
    from analyses.organism_latents import cli as organism_cli, most_b_specific
    from builders.clamping import cli as clamping_cli
    from builders.compare import cli as compare_cli
    from builders.crosscoder import cli as crosscoder_cli
    from builders.decompose import cli as decompose_cli
    from builders.detector import cli as detector_cli
    from builders.sae import cli as sae_cli
    from builders.similarity import cli as similarity_cli
    from builders.user_features import cli as user_features_cli
    from builders.weights import cli as weights_cli

    store, _, path, outcomes = ran
    assert {s: o.state for s, o in outcomes.items()} == {s: BUILT for s in STAGES}, \
        {s: o.detail for s, o in outcomes.items() if o.detail}
    ref = {s: o.outputs[0] for s, o in outcomes.items()}
    common = ["--store", str(store.location.url), "--catalog", str(path), "-q"]
    layer = ["--layer", str(LAYER)]
    cc_rows = store.read_table(store.resolve(ref["cc"])).to_dicts()
    chosen, _ = most_b_specific(cc_rows, 4)
    assert store.resolve(ref["clamp"]).params["latents"] == chosen
    calls = {
        "cc": (crosscoder_cli, ["--a", "a", "--b", "b", "--prompts", "general", *layer, "--dict-size", "64",
                                "--epochs", "2", "--batch-size", "16", "--resample-every", "0", "--top-k", "2",
                                "--l1", "2"]),
        "clamp": (clamping_cli, ["--variant", "b", "--dictionary", ref["cc"], "--prompts", "general",
                                 "--latents", ",".join(map(str, chosen)), "--subset", "2", "--trait-set", "syco",
                                 "--trait-judge", "sentiment", "--coherence-judge", "local", "--allow-uncalibrated",
                                 "--max-new-tokens", "4"]),
        "dec": (decompose_cli, ["--dictionary", ref["cc"], "--vectors", ref["vec"], "--top-n", "3"]),
        "uf": (user_features_cli, ["--variant", "a", "--prompts", "pairs", *layer, "--dictionary", ref["cc"],
                                   "--permutations", "50"]),
        "det": (detector_cli, ["--variant", "a", "--prompts", "pairs", *layer, "--dictionary", ref["cc"],
                               "--category", "quiz", "--folds", "2", "--bootstrap", "20"]),
        "sae": (sae_cli, ["--variant", "a", "--prompts", "general", *layer, "--dict-size", "32", "--epochs", "1",
                          "--batch-size", "16", "--resample-every", "0", "--kind", "batch_topk", "--k", "4"]),
        "sim": (similarity_cli, ["--a", "a", "--b", "b", "--prompts", "general", "--layers", f"{LAYER},{LAYER + 1}"]),
        "wts": (weights_cli, ["--a", "a", "--b", "b", "--vectors", ref["vec"], "--top-k", "5", "--singular-k", "0"]),
        "cmp": (compare_cli, ["--a", "a", "--b", "b", "--prompts", "general", "--vectors", ref["vec"],
                              "--random", "20"]),
    }
    for stage, (cli, argv) in calls.items():
        name = ref[stage].split("@")[0]
        before = {m.version for m in store.versions(name)}
        assert cli([*common, *argv]) == 0, stage
        assert {m.version for m in store.versions(name)} == before, f"{stage}: the CLI built another version"
    org_name = ref["org"].split("@")[0]
    assert organism_cli(["--store", str(store.location.url), "--crosscoder", ref["cc"], "--vectors", ref["vec"], "--top", "4",
                         "--clamping", ref["clamp"], "--n-random", "20"]) == 0
    assert [m.ref for m in store.versions(org_name)] == [ref["org"]]
    capsys.readouterr()


@pytest.mark.slow
def test_a_rerun_is_all_up_to_date_and_a_changed_parameter_rebuilds_downstream(ran):
    store, catalog, path, outcomes = ran
    planned = make_plan(store, catalog, "g")
    assert {e.stage: e.action for e in planned.entries} == {s: UP_TO_DATE for s in STAGES}
    assert planned.done == {s: o.outputs for s, o in outcomes.items()}
    stages = {**STAGES, "cc": {**CC, "l1": 2.5}}  # the clamping, analyses and detector read the crosscoder
    changed = make_plan(store, load_catalog(write_catalog(path.parent, stages)), "g")
    assert {e.stage for e in changed.to_build()} == {"cc", "clamp", "org", "dec", "uf", "det"}
