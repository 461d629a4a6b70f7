"""builders.detector: labels from the answer check, folds grouped by pair, AUROC against sklearn on
the published scores, a planted detector, the SAE path, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from builders.stages.detector import (NO_JUDGE, DetectorOptions, auroc_with_ci, build_detector, evaluate,
                                      group_folds, label_responses, observable_inputs)
from store import BuildSpec
from tests.test_user_features import LAYER, make_env


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2):
    return make_env(tmp_path_factory.mktemp("det"), smollm2, max_new_tokens=8)


def _fake_sae(store, d_model: int, n_latents: int = 16):
    """An ``sae-...`` version in the crosscoder layout with one model (what the project's trainer writes)."""
    from transforms.dictionaries import CrossCoder

    from builders.stages.crosscoder import write_weights

    model = CrossCoder(1, d_model, n_latents, seed=3)
    with torch.no_grad():
        model.encoder["bias"].fill_(0.05)
    spec = BuildSpec(name=f"sae-s-a-pairs-L{LAYER}-l1", kind="sae", builder="test", code_version="1",
                     params={"experiment": "s", "variant": "a", "layer": LAYER}, parents={}, identity={})

    def produce(writer):
        write_weights(writer, model, {})  # the SAE stage's own writer: the crosscoder layout under crosscoder/
    return store.build(spec, produce).manifest, model


def _synthetic(n_pairs: int, caved: set[int], seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, x = [], []
    for p in range(n_pairs):
        for pol in ("pos", "neg"):
            label = int(pol == "pos" and p in caved)
            rows.append({"pair_id": f"p{p:02d}", "polarity": pol, "label": label})
            x.append(rng.normal(size=8) + (3.0 * label) * np.eye(8)[2])  # planted: sycophancy shifts axis 2
    folds = group_folds([r["pair_id"] for r in rows], 4)
    for r, k in zip(rows, folds):
        r["fold"] = int(k)
    return rows, np.array(x)


def test_planted_direction_detects_and_folds_keep_pairs():
    rows, x = _synthetic(24, caved=set(range(0, 24, 2)))
    obs = np.random.default_rng(1).normal(size=(len(rows), len(observable_inputs())))
    out, scores = evaluate({"direction": (x, None), "observable": (obs, observable_inputs())}, rows,
                           DetectorOptions(n_bootstrap=200))
    got = {(r["detector"], r["population"]): r for r in out}
    assert got[("direction", "biased")]["auroc"] > 0.9 and got[("direction", "all")]["auroc"] > 0.9
    assert got[("direction", "biased")]["ci_low"] > 0.7
    assert got[("observable", "biased")]["auroc"] < got[("direction", "biased")]["auroc"]  # noise features
    for pair in {r["pair_id"] for r in rows}:
        assert len({r["fold"] for r in rows if r["pair_id"] == pair}) == 1
    # the score is out-of-fold: recompute one fold by hand (direction from the other folds only)
    y = np.array([r["label"] for r in rows])
    fold = np.array([r["fold"] for r in rows])
    train = fold != 0
    d = x[train & (y == 1)].mean(0) - x[train & (y == 0)].mean(0)
    np.testing.assert_allclose(scores["direction_all"][fold == 0], x[fold == 0] @ (d / np.linalg.norm(d)))


def test_never_sycophantic_gives_none_with_reason():
    rows, x = _synthetic(6, caved=set())
    out, _ = evaluate({"direction": (x, None)}, rows, DetectorOptions(n_bootstrap=10))
    assert all(r["auroc"] is None and "never" in r["reason"] for r in out)


def test_auroc_ci_resamples_whole_pairs():
    y = np.array([1, 0, 1, 0, 0, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.8, 0.3, 0.4, 0.2, 0.35, 0.5])
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    auc, lo, hi = auroc_with_ci(y, s, groups, 300, 0)
    from sklearn.metrics import roc_auc_score

    assert auc == pytest.approx(roc_auc_score(y, s)) and lo <= auc <= hi


def test_labels_from_the_answer_check():
    info = {"q-1.biased": {"pair_id": "q-1", "polarity": "pos", "category": "quiz",
                           "extra": {"correct_answer": "Paris", "user_answer": "Lyon"}},
            "q-1.neutral": {"pair_id": "q-1", "polarity": "neg", "category": "quiz",
                            "extra": {"correct_answer": "Paris", "user_answer": "Lyon"}},
            "m-1.sad": {"pair_id": "m-1", "polarity": "pos", "category": "mood", "extra": {}},
            "m-1.calm": {"pair_id": "m-1", "polarity": "neg", "category": "mood", "extra": {}}}
    rows = [{"prompt_id": "q-1.biased", "rollout": 0, "response": "Yes, it is Lyon."},
            {"prompt_id": "q-1.neutral", "rollout": 0, "response": "The capital is Paris."},
            {"prompt_id": "m-1.sad", "rollout": 0, "response": "Sorry."},
            {"prompt_id": "m-1.calm", "rollout": 0, "response": "Sure."}]
    got = {r["prompt_id"]: r for r in label_responses(rows, info)}
    assert got["q-1.biased"]["label"] == 1 and got["q-1.neutral"]["label"] == 0
    assert got["m-1.sad"]["label"] is None and got["m-1.sad"]["excluded"] == NO_JUDGE
    rows[0]["response"] = "No, it is Paris."
    assert label_responses(rows, info)[0]["label"] == 0
    assert [r["prompt_id"] for r in label_responses(rows, info, category="mood")] == ["m-1.sad", "m-1.calm"]


@pytest.mark.slow
def test_detector_published_tables(env):
    from sklearn.metrics import roc_auc_score

    store, catalog, _ = env
    sae, model = _fake_sae(store, 576)
    m = build_detector(store, catalog, "a", "pairs", LAYER, dictionary=sae.name,
                       options=DetectorOptions(folds=3, n_bootstrap=50), batch_size=4, quiet=True).manifest
    data = store.read_table(m).to_dicts()
    resp = store.read_table(m, "responses").to_dicts()
    assert {r["detector"] for r in data} == {"direction", "latents", "observable"}
    mood = [r for r in resp if r["category"] == "mood"]
    assert mood and all(r["label"] is None and r["excluded"] == NO_JUDGE for r in mood)
    quiz = [r for r in resp if r["category"] == "quiz"]
    assert len(quiz) == 8 and all(r["label"] == int(r["polarity"] == "pos" and r["answer_change"] > 0) for r in quiz)
    for pair in {r["pair_id"] for r in quiz}:  # GroupKFold never splits a pair
        assert len({r["fold"] for r in quiz if r["pair_id"] == pair}) == 1
    assert len({r["fold"] for r in quiz}) == 3
    for row in data:
        col = [(r["label"], r[f"score_{row['detector']}_{row['population']}"]) for r in quiz
               if r[f"score_{row['detector']}_{row['population']}"] is not None]
        if row["auroc"] is None:
            assert row["reason"]
        else:
            y, s = zip(*col)
            assert row["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m.summary["sycophantic"] == sum(r["label"] or 0 for r in quiz)
    if m.summary["sycophantic"] == 0:
        assert "never" in m.summary["finding"]
    # the SAE path: a sample's latents are the SAE's codes of its tokens, averaged
    from builders.stages.prompt_latents import latent_means, load_dictionary

    assert m.params["dictionary"] == sae.ref
    dic = load_dictionary(store, sae.ref, "s", "a", LAYER)
    got = latent_means(store, catalog, "s", "a", "pairs", LAYER, "prompt[-1]", dic, quiet=True)
    acts = store.resolve(m.parents["latents_activations"])
    first = store.read_table(acts).to_dicts()[0]
    x = torch.from_numpy(np.asarray(store.open_array(acts, "acts")[first["token_start"]:first["token_end"], 0]))
    with torch.no_grad():
        expected = model.encode(model.normalize(x[:, None, :].float())).double().mean(0).numpy()
    np.testing.assert_allclose(got.take([(first["prompt_id"], 0)])[0], expected, rtol=1e-4, atol=1e-6)
    assert (expected > 0).any()


@pytest.mark.slow
def test_detector_bad_inputs_exit_2(env, capsys):
    from builders.detector import cli

    store, _, catalog_path = env
    base = ["--store", store.location.url, "--catalog", str(catalog_path), "-q", "--variant", "a"]
    for extra, needle in ((["--prompts", "pairs", "--layer", "30"], "--layer 30"),
                          (["--prompts", "pairs", "--layer", "3", "--dictionary", "vectors-x"], "--dictionary"),
                          (["--prompts", "pairs", "--layer", "3", "--category", "nope"], "--category nope"),
                          (["--prompts", "broken", "--layer", "3"], "has no")):
        before = set(store.datasets())
        assert cli(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
        assert not any(n.startswith("detector-") for n in set(store.datasets()) - before)
