"""Lineage of what reads projections, judgments and steering runs: every version read is
resolved once, recorded as a parent (so it is in the version id) and read exactly, so a new
input version rebuilds and an unchanged rebuild is a no-op. SmolLM2 on the small syco set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analyses.projections import analyze
from analyses.viewer import build_viewer
from builders.shared.catalog import load_catalog
from builders.shared.judges import JudgeChoice
from builders.stages.judgments import judge_responses
from builders.stages.projections import build_projections
from store import BuildSpec, Store

from .trait_set import QUESTIONS, write_mini_catalog, write_trait_set

pytestmark = pytest.mark.slow

LLM_JUDGES = JudgeChoice(trait="local", coherence="local")  # no calibration to build: quick


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from safetensors.numpy import save

    folder = write_trait_set(tmp_path_factory.mktemp("trait"))
    catalog = load_catalog(write_mini_catalog(tmp_path_factory.mktemp("catalog") / "catalog.yaml", folder))
    store = Store(str(tmp_path_factory.mktemp("store")))
    vecs = np.random.default_rng(3).standard_normal((30, 576)).astype(np.float32)

    def produce(w):
        w.write_bytes("vectors/mean_diff.safetensors", save({"vectors": vecs}, metadata={"layers": json.dumps(list(range(30)))}))
        w.write_table([{"layer": k, "method": "mean_diff", "center_proj": 0.0} for k in range(30)])

    spec = BuildSpec(name="vectors-mini-instruct-t-response__-residual", kind="vectors", builder="test", code_version="1",
                     params={"prompt_set": "t", "variant": "instruct", "position": "response[:]"}, parents={}, identity={})
    vectors = store.build(spec, produce).manifest
    return store, catalog, vectors, folder


def _steering(store: Store, vectors, delta: float):
    """A steering run of ``vectors`` (one configuration at layer 10), as builders.steering lays it out."""
    rows = [{"run_id": "r0", "label": "L10 c4", "kind": "add", "layer": 10, "perturbation_ratio": 0.5, "delta": delta,
             "direction": 1, "coherence_mean": 90.0, "vector_config": "t:mean_diff", "application": "instruct"}]
    steered = [{"run_id": "r0", "question": "q?", "response": f"steered with delta {delta}", "trait": 70.0, "coherence": 90.0}]

    def produce(w):
        w.write_table(rows)
        w.write_table(steered, table="responses")

    spec = BuildSpec(name="steering-mini-instruct-t-mean_diff-add", kind="steering", builder="test", code_version="1",
                     params={"method": "mean_diff", "vectors": vectors.ref, "application": "instruct", "mode": "add"},
                     parents={"vectors": vectors.ref}, identity={"delta": delta})
    return store.build(spec, produce).manifest


def _prompts_of(store: Store, projections):
    responses = store.resolve(store.resolve(projections.parents["activations"]).parents["responses"])
    return store.resolve(responses.parents["prompts"])


def test_projection_analysis_records_its_judgments_and_rebuilds_on_new_ones(env):
    store, catalog, vectors, _ = env
    proj = build_projections(store, catalog, "instruct", "syco", [f"{vectors.ref}:mean_diff"], layers="10",
                             quiet=True).manifest
    j1 = judge_responses(store, catalog, "instruct", "syco", choice=LLM_JUDGES, quiet=True).manifest
    first, tables = analyze(store, proj.ref, n_boot=50)
    assert first.built
    assert first.manifest.parents == {"projections": proj.ref, "prompts": _prompts_of(store, proj).ref,
                                      "judgments": j1.ref}
    scores = {f"{r['prompt_id']}:{r['rollout']}": r["trait_score"] for r in store.read_table(j1).to_dicts()}
    assert {r["sample"]: r["trait_score"] for r in tables["summary"].to_dicts()} == scores
    assert not analyze(store, proj.ref, n_boot=50)[0].built  # nothing changed: a no-op

    j2 = judge_responses(store, catalog, "instruct", "syco", choice=LLM_JUDGES, pos_threshold=55.0, quiet=True).manifest
    assert j2.ref != j1.ref and j2.parents["responses"] == j1.parents["responses"]
    second, tables = analyze(store, proj.ref, n_boot=50)
    assert second.built and second.manifest.version != first.manifest.version
    assert second.manifest.parents["judgments"] == j2.ref
    passes = {f"{r['prompt_id']}:{r['rollout']}": r["passes"] for r in store.read_table(j2).to_dicts()}
    assert {r["sample"]: r["passes"] for r in tables["summary"].to_dicts()} == passes
    assert not analyze(store, proj.ref, n_boot=50)[0].built

    # judgments of other responses (shorter generations) are not joined to these tokens:
    # the newest judgments of the responses the projections scored are
    other = judge_responses(store, catalog, "instruct", "syco", choice=LLM_JUDGES, generation={"max_new_tokens": 3},
                            quiet=True).manifest
    assert other.parents["responses"] != j2.parents["responses"]
    assert store.latest(other.name).ref == other.ref
    third, _ = analyze(store, proj.ref, n_boot=50)
    assert not third.built and third.manifest.ref == second.manifest.ref


def test_projection_analysis_reads_the_projections_version_it_was_given(env):
    store, catalog, vectors, _ = env
    spec = [f"{vectors.ref}:mean_diff"]
    older = build_projections(store, catalog, "instruct", "syco", spec, layers="10", quiet=True).manifest
    newer = build_projections(store, catalog, "instruct", "syco", spec, layers="10,20", quiet=True).manifest
    assert store.latest(newer.name).ref == newer.ref != older.ref
    result, tables = analyze(store, older.ref, n_boot=50)
    assert result.manifest.parents["projections"] == older.ref
    assert set(tables["summary"]["layer"].to_list()) == {10}
    assert set(store.read_table(result.manifest)["layer"].to_list()) == {10}


def test_compare_records_the_prompts_its_replay_reads(env, tmp_path):
    import copy

    import torch
    import yaml
    from peft import LoraConfig, get_peft_model

    from builders.shared.common import cached_model
    from builders.stages.compare import compare_variants

    store, catalog, vectors, folder = env
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(cached_model("pkg:smollm2-135m-instruct").model),
                          LoraConfig(r=2, lora_alpha=2, target_modules=["o_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    raw = yaml.safe_load(write_mini_catalog(tmp_path / "catalog.yaml", folder).read_text())
    raw["experiments"]["mini"]["variants"]["tuned"] = {"model": "smol", "adapter": str(tmp_path / "adapter")}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(raw))
    catalog = load_catalog(tmp_path / "catalog.yaml")
    result = compare_variants(store, catalog, "instruct", "tuned", "syco", [vectors.ref], n_random=10, quiet=True)
    responses = store.resolve(result.manifest.parents["responses"])
    assert result.manifest.parents["prompts"] == responses.parents["prompts"]
    again = compare_variants(store, catalog, "instruct", "tuned", "syco", [vectors.ref], n_random=10, quiet=True)
    assert not again.built and again.manifest.ref == result.manifest.ref


def test_projections_best_layer_records_the_steering_runs_it_read(env):
    store, catalog, vectors, _ = env
    spec = [f"{vectors.ref}:mean_diff"]
    s1 = _steering(store, vectors, 5.0)
    first = build_projections(store, catalog, "instruct", "syco", spec, layers="best", quiet=True)
    assert first.manifest.params["layers"] == {f"{vectors.ref}:mean_diff": [10]}
    assert s1.ref in first.manifest.parents.values()
    assert not build_projections(store, catalog, "instruct", "syco", spec, layers="best", quiet=True).built
    s2 = _steering(store, vectors, 6.0)  # a new run: same best layer, but a different input
    second = build_projections(store, catalog, "instruct", "syco", spec, layers="best", quiet=True)
    assert second.built and second.manifest.version != first.manifest.version
    assert s2.ref in second.manifest.parents.values() and s1.ref not in second.manifest.parents.values()


def test_viewer_records_and_reads_exactly_its_inputs(env):
    """Last in this module: it publishes a new version of the syco prompt set."""
    from builders.stages.prompts import ensure_prompt_set

    store, catalog, vectors, folder = env
    proj = build_projections(store, catalog, "instruct", "syco", [f"{vectors.ref}:mean_diff"], layers="10",
                             quiet=True).manifest
    prompts = _prompts_of(store, proj)
    s1 = _steering(store, vectors, 5.0)
    first = build_viewer(store, proj.ref)
    assert first.manifest.parents == {"projections": proj.ref, "prompts": prompts.ref, s1.name: s1.ref}
    assert not build_viewer(store, proj.ref).built

    s2 = _steering(store, vectors, 7.5)
    second = build_viewer(store, proj.ref)
    assert second.built and second.manifest.parents[s2.name] == s2.ref
    page = store.read_bytes(second.manifest, "index.html").decode()
    assert "steered with delta 7.5" in page and "steered with delta 5.0" not in page

    # a new prompt set version that these projections were not built from changes nothing
    rows = [{"id": i, "prompt": q.replace("?", " (edited)?"), "system_prompt": "x"} for i, q in enumerate(QUESTIONS)]
    (folder / "positive.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    newer = ensure_prompt_set(store, catalog, "syco")
    assert newer.ref != prompts.ref and store.latest(newer.name).ref == newer.ref
    third = build_viewer(store, proj.ref)
    assert not third.built and third.manifest.ref == second.manifest.ref
    page = store.read_bytes(third.manifest, "index.html").decode()
    assert "(edited)" not in page and QUESTIONS[0] in page


def test_live_projections_join_no_judgments_through_their_vectors(tmp_path):
    """Live projections generate their own text; their vectors' lineage leads to the stored
    responses of the same set, whose ids would match the live samples' ids."""
    from analyses.lineage import ancestor, judgments_of, prompts_of

    store = Store(str(tmp_path / "root"))

    def publish(name, kind, parents=None, params=None):
        spec = BuildSpec(name, kind, "builders.test", "1", params or {}, parents or {}, {})
        return store.build(spec, lambda w: w.write_table([{"i": 0}])).manifest

    prompts = publish("prompts-s", "prompts")
    responses = publish("responses-e-v-s", "responses", {"prompts": prompts.ref})
    publish("judgments-e-v-s", "judgments", {"responses": responses.ref})
    acts = publish("activations-e-v-s-x", "activations", {"responses": responses.ref})
    vectors = publish("vectors-e-v-s-x", "vectors", {"activations": acts.ref})
    params = {"experiment": "e", "variant": "v", "prompt_set": "s"}
    live = publish("projections-e-v-s-live", "projections", {"vectors0": vectors.ref, "prompts": prompts.ref},
                   {**params, "live": True})
    assert ancestor(store, live, "responses-e-v-s") is None
    assert judgments_of(store, live) is None
    assert prompts_of(store, live).ref == prompts.ref
    stored = publish("projections-e-v-s", "projections", {"vectors0": vectors.ref, "activations": acts.ref}, params)
    assert judgments_of(store, stored).parents["responses"] == responses.ref
