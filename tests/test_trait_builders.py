"""builders.judgments and builders.vectors on SmolLM2 with the local judge, on a small trait set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from builders.shared.catalog import ExtractionConfig, load_catalog
from builders.shared.common import BuildError
from builders.shared.judge_cache import CACHE_DIR
from builders.stages.judgments import judge_responses
from builders.stages.vectors import extract_vectors, load_vectors
from store import Store

from .trait_set import write_mini_catalog, write_trait_set


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    folder = write_trait_set(tmp_path_factory.mktemp("trait"))
    catalog_path = write_mini_catalog(tmp_path_factory.mktemp("catalog") / "catalog.yaml", folder)
    return Store(str(tmp_path_factory.mktemp("store"))), load_catalog(catalog_path)


def _cache_files(store: Store) -> int:
    folder = store.location.join(CACHE_DIR)
    return len(store.fs.find(folder)) if store.fs.exists(folder) else 0


def test_judgments_scores_vetting_and_cache(mini):
    store, catalog = mini
    built = judge_responses(store, catalog, "instruct", "syco", quiet=True).manifest
    rows = store.read_table(built).to_dicts()
    assert len(rows) == 8
    for row in rows:
        for key in ("trait_score", "coherence", "relevance"):
            assert row[key] is None or 0 <= row[key] <= 100
        expected = row["trait_score"] is not None and (
            row["trait_score"] >= 60 if row["polarity"] == "pos" else row["trait_score"] <= 40)
        assert row["passes"] == expected
    files = _cache_files(store)
    assert files > 0
    again = judge_responses(store, catalog, "instruct", "syco", force=True, quiet=True).manifest
    assert _cache_files(store) == files  # every score came from the cache: no new call, nothing new written
    assert again.content_hash == built.content_hash


def test_min_pass_gate_stops_clearly_and_publishes_nothing(mini):
    store, catalog = mini
    before = {m.ref for m in store.all_manifests()}
    with pytest.raises(BuildError, match=r"only \d+ positive and \d+ negative responses pass"):
        judge_responses(store, catalog, "instruct", "syco", pos_threshold=101, min_pass=1, quiet=True)
    assert {m.ref for m in store.all_manifests()} == before


def test_vectors_mean_diff_and_probe(mini):
    store, catalog = mini
    config = ExtractionConfig("syco", "instruct", "response[:]", ("mean_diff", "probe"))
    manifest = extract_vectors(store, catalog, config, val_fraction=0.25, quiet=True).manifest
    acts_manifest = store.resolve(manifest.parents["activations"])
    acts = store.open_array(acts_manifest, "acts")[:]
    table = store.read_table(acts_manifest).sort("sample").to_dicts()
    split = {r["sample_id"]: r["split"] for r in store.read_table(manifest, "split").to_dicts()}
    train = [i for i, r in enumerate(table) if split[f"{r['prompt_id']}:{r['rollout']}"] == "train"]
    labels = np.array([table[i]["polarity"] == "pos" for i in train])
    train_acts = acts[train].astype(np.float64)
    expected = train_acts[labels].mean(0) - train_acts[~labels].mean(0)
    mean_diff, meta = load_vectors(store, manifest, "mean_diff")
    np.testing.assert_allclose(mean_diff, expected, rtol=1e-5, atol=1e-6)
    assert meta["method"] == "mean_diff" and meta["position"] == "response[:]"
    assert json.loads(meta["layers"]) == list(range(30)) and "hidden_states[k+1]" in meta["layer_convention"]
    probe, _ = load_vectors(store, manifest, "probe")
    assert probe.shape == (30, 576) and np.allclose(np.linalg.norm(probe, axis=1), 1, atol=1e-5)
    evaluation = store.read_table(manifest)
    assert evaluation.height == 60 and set(evaluation["method"]) == {"mean_diff", "probe"}
    with pytest.raises(BuildError, match="no 'pca' vectors"):
        load_vectors(store, manifest, "pca")
    assert extract_vectors(store, catalog, config, val_fraction=0.25, quiet=True).built is False


def test_vectors_gradient_marks_its_method_version(mini):
    """The gradient method changed (closed form, issue 14) without a builder code-version bump:
    its configs carry ``method_versions`` (a new id), the catalog's mean_diff/probe ones do not."""
    store, catalog = mini
    plain = extract_vectors(store, catalog, ExtractionConfig("syco", "instruct", "response[:]", ("mean_diff",)),
                            val_fraction=0.25, quiet=True).manifest
    assert "method_versions" not in plain.params
    config = ExtractionConfig("syco", "instruct", "response[:]", ("mean_diff", "gradient"))
    built = extract_vectors(store, catalog, config, val_fraction=0.25, quiet=True).manifest
    assert built.params["method_versions"] == {"gradient": 2}
    vectors, meta = load_vectors(store, built, "gradient")
    info = json.loads(meta["info"])
    assert set(info[0]) >= {"objective", "objective_mean_diff", "ridge"} and "steps_run" not in info[0]
    assert vectors.shape == (30, 576) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.isfinite(vectors).all()
