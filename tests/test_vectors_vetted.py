"""Issue 12.5 (builder): builders.vectors on SmolLM2 with several rollouts of unpaired
prompts: the split keeps a prompt's rollouts together and is stratified by polarity;
``--vetted`` keeps only the responses that pass the judge's filters, joined by id, with the
judgments version a parent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builders.shared import names
from builders.shared.catalog import ExtractionConfig, load_catalog
from builders.shared.common import BuildError
from builders.stages.responses import generate_responses
from builders.vectors import cli
from builders.stages.vectors import extract_vectors
from store import BuildSpec, Store

POS = ["What do you think about tomorrow?", "How will my exam go?", "Is the weather going to improve?",
       "Will my garden grow?", "What is next year going to be like?", "Can I learn to play piano?"]
NEG = ["How was your week?", "What about the traffic today?", "Describe a rainy afternoon.",
       "What happens at the office?", "Tell me about winter.", "How does a long queue feel?"]
ROLLOUTS = 3


def _write(tmp: Path) -> Path:
    folder = tmp / "opt"
    folder.mkdir()
    for name, questions in (("positive", POS), ("negative", NEG)):
        # a natural trait set with different first sentences: nothing pairs, every prompt is its own group
        (folder / f"{name}.txt").write_text("\n".join(questions) + "\n")
    (folder / "definition.txt").write_text("Score optimism 0-100.")
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "traits": {"opt": {"definition": str(folder / "definition.txt")}},
        "prompt_sets": {"opt": {"path": str(folder), "trait": "opt"}},
        "experiments": {"mini": {"variants": {"instruct": {"model": "smol"}}, "prompt_sets": ["opt"]}},
        "defaults": {"experiment": "mini", "responses": {"max_new_tokens": 4, "rollouts": ROLLOUTS}},
    }))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    catalog_path = _write(tmp_path_factory.mktemp("catalog"))
    store = Store(str(tmp_path_factory.mktemp("store")))
    catalog = load_catalog(catalog_path)
    generate_responses(store, catalog, "instruct", "opt", "mini", None, quiet=True)
    return store, catalog, catalog_path


def _split(store: Store, manifest) -> dict[str, str]:
    return {r["sample_id"]: r["split"] for r in store.read_table(manifest, "split").to_dicts()}


def test_split_keeps_rollouts_of_a_prompt_together_and_is_stratified(env):
    store, catalog, _ = env
    config = ExtractionConfig("opt", "instruct", "prompt[-1]", ("mean_diff", "probe"))
    manifest = extract_vectors(store, catalog, config, val_fraction=0.34, quiet=True).manifest
    split = _split(store, manifest)
    assert len(split) == (len(POS) + len(NEG)) * ROLLOUTS
    sides: dict[str, set[str]] = {}
    for sid, side in split.items():
        sides.setdefault(sid.rsplit(":", 1)[0], set()).add(side)
    assert all(len(s) == 1 for s in sides.values()), "rollouts of one prompt on both sides"
    polarity = {r["prompt_id"]: r["polarity"] for r in
                store.read_table(store.resolve(names.responses("mini", "instruct", "opt"))).to_dicts()}
    assert all(polarity[p] is not None for p in sides)
    val_prompts = [p for p, s in sides.items() if s == {"val"}]
    # round(0.34 * 6) = 2 whole prompts of each polarity
    assert sum(polarity[p] == "pos" for p in val_prompts) == 2
    assert sum(polarity[p] == "neg" for p in val_prompts) == 2
    evaluation = store.read_table(manifest).to_dicts()
    assert all(r["small_sample"] == (r["n_val"] < 10) for r in evaluation)
    probe = [r for r in evaluation if r["method"] == "probe"]
    assert all(json.loads(r["info"])["C_selection"] for r in probe)  # how C was chosen, per layer
    again = extract_vectors(store, catalog, config, val_fraction=0.34, quiet=True)
    assert again.built is False and again.manifest.ref == manifest.ref  # seeded: same inputs, same id


def _publish_judgments(store: Store, scores) -> str:
    """A judgments version of the latest responses with the given (trait, coherence) per row."""
    responses = store.resolve(names.responses("mini", "instruct", "opt"))
    rows = store.read_table(responses).select("prompt_id", "pair_id", "polarity", "rollout").to_dicts()
    for row in rows:
        row["trait_score"], row["coherence"] = scores(row)
    spec = BuildSpec(name="judgments-mini-instruct-opt", kind="judgments", builder="tests.vetting",
                     code_version="1", params={"scores": [[r["trait_score"], r["coherence"]] for r in rows]},
                     parents={"responses": responses.ref}, identity={})
    return store.build(spec, lambda writer: writer.write_table(rows)).manifest.ref


def _vetting_scores(first: dict[str, str]):
    """Rollout 0 of every prompt fails the trait filter, rollout 1 the coherence floor except
    for the first prompt of each polarity (coherence exactly at the floor passes), rollout 2
    sits exactly on the threshold and the floor and passes."""
    def scores(row) -> tuple[float, float]:
        if row["rollout"] == 0:
            return (49.0 if row["polarity"] == "pos" else 51.0), 90.0
        if row["rollout"] == 1:
            return (80.0 if row["polarity"] == "pos" else 20.0), (50.0 if row["prompt_id"] == first[row["polarity"]]
                                                                  else 49.0)
        return 50.0, 50.0
    return scores


def test_vetted_keeps_only_responses_that_pass_and_records_the_judgments(env):
    store, catalog, catalog_path = env
    config = ExtractionConfig("opt", "instruct", "prompt[-1]", ("mean_diff",))
    with pytest.raises(BuildError, match="judgments"):
        extract_vectors(store, catalog, config, val_fraction=0.34, vetted=True, quiet=True)
    responses = store.resolve(names.responses("mini", "instruct", "opt"))
    rows = store.read_table(responses).to_dicts()
    first = {pol: min(r["prompt_id"] for r in rows if r["polarity"] == pol) for pol in ("pos", "neg")}
    judgments = _publish_judgments(store, _vetting_scores(first))
    built = extract_vectors(store, catalog, config, val_fraction=0.34, vetted=True, quiet=True).manifest
    assert built.parents["judgments"] == judgments
    assert built.name.endswith("-vetted")
    kept = set(_split(store, built))
    expected = {f"{r['prompt_id']}:{r['rollout']}" for r in rows
                if r["rollout"] == 2 or (r["rollout"] == 1 and r["prompt_id"] == first[r["polarity"]])}
    assert kept == expected
    vetting = built.summary["vetting"]
    assert vetting["kept"] == {"pos": len(POS) + 1, "neg": len(NEG) + 1}
    assert vetting["of"] == {"pos": len(POS) * ROLLOUTS, "neg": len(NEG) * ROLLOUTS}
    # new judgments -> a new vectors version; the threshold is part of the id too
    _publish_judgments(store, lambda row: (80.0 if row["polarity"] == "pos" else 20.0, 90.0))
    rebuilt = extract_vectors(store, catalog, config, val_fraction=0.34, vetted=True, quiet=True)
    assert rebuilt.built and rebuilt.manifest.ref != built.ref
    assert len(_split(store, rebuilt.manifest)) == (len(POS) + len(NEG)) * ROLLOUTS
    # too few left: one line, exit non-zero, nothing published
    before = {m.ref for m in store.all_manifests()}
    code = cli(["--store", store.location.url, "--catalog", str(catalog_path), "--prompts", "opt",
                "--variant", "instruct", "--position", "prompt[-1]", "--methods", "mean_diff", "--vetted",
                "--vet-trait-threshold", "95", "--quiet"])
    assert code != 0
    assert {m.ref for m in store.all_manifests()} == before
    with pytest.raises(BuildError, match=r"kept 0 positive .* and \d+ negative"):
        extract_vectors(store, catalog, config, vetted=True, vet_trait_threshold=95, quiet=True)


def test_bad_vetting_threshold_is_refused_before_any_generation(tmp_path, capsys):
    from builders.vectors import cli

    root = tmp_path / "store"
    assert cli(["--store", str(root), "--matrix", "--vetted", "--vet-trait-threshold", "150", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vet-trait-threshold must be in [0, 100]" in err[0]
    assert not root.exists() or not any(root.iterdir())  # no prompts, responses or activations built
