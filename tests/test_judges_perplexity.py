"""The perplexity coherence judge against a direct NLL computation, its calibration on the
shipped calibration set (the AUROC gate), and the judges' bad-input contract."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from builders.shared import names
from builders.stages.calibration import calibrate, load_calibration_set
from builders.shared.catalog import load_catalog
from builders.shared.common import BuildError
from builders.shared.judges import JudgeChoice, require_calibrated
from store import Store
from transforms.judge import (FEATURES, LEN_CAP, PMI_CAP, CoherenceCalibration, PerplexityFeaturizer, degeneracy_features)

ITEMS = [("What do you think about Mondays?", "Mondays are a fresh start. I like to plan my week with a coffee."),
         ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
         ("What is your favourite season?", "the the the the the the the the the the the the"),
         ("Why is the sky blue?", "Trains were first built to carry coal from mines to the coast.")]


def direct_logprobs(loaded, prefix: list[int], answer: list[int]) -> torch.Tensor:
    """Log-probabilities of ``answer``'s tokens after ``prefix``: one unpadded sequence, by hand."""
    ids = torch.tensor([prefix + answer])
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids).logits[0].double()
    targets = ids[0, len(prefix):]
    logprobs = torch.log_softmax(logits[len(prefix) - 1:-1], dim=-1)
    return logprobs[torch.arange(len(answer)), targets]


@pytest.mark.slow
def test_features_match_direct_nll_batched_and_unbatched(smollm2):
    from transforms.sequences import bos_token_id, format_prompt

    tok = smollm2.tokenizer
    featurizer = PerplexityFeaturizer(smollm2, {"model_id": smollm2.model_id}, batch_size=3)
    batched = featurizer.features(ITEMS)
    for (question, answer), feats in zip(ITEMS, batched):
        answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
        cond = direct_logprobs(smollm2, list(format_prompt(tok, question).ids), answer_ids)
        start = bos_token_id(tok)
        bare = direct_logprobs(smollm2, [tok.eos_token_id if start is None else start], answer_ids)
        assert feats["nll"] == pytest.approx(float(-cond.mean()), rel=1e-4, abs=1e-4)
        pmi = float(cond.mean() - bare.mean())
        assert feats["pmi"] == pytest.approx(min(PMI_CAP, pmi), rel=1e-4, abs=1e-4)
        assert feats["log_len"] == pytest.approx(min(LEN_CAP, math.log1p(len(answer_ids))))
    single = [featurizer.features([item])[0] for item in ITEMS]
    for a, b in zip(batched, single):
        for name in FEATURES:
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-4)
    assert featurizer.features([("Q?", "")]) == [None]


def test_degeneracy_features_by_hand():
    loop = degeneracy_features([5, 6, 5, 6, 5, 6, 5, 6], ["a", "b"] * 4)
    # 3-grams: 565 656 565 656 565 656 -> 4 repeats of 6; bigrams: 56 65 -> 2 distinct of 7
    assert loop["repeat3"] == pytest.approx(4 / 6) and loop["distinct2"] == pytest.approx(2 / 7)
    assert loop["loop"] == pytest.approx(1.0)  # the whole answer is one period-2 pattern
    plain = degeneracy_features([1, 2, 3, 4, 5], ["The", " cat", " sat", "\n\n", "."])
    assert plain["repeat3"] == 0 and plain["distinct2"] == 1 and plain["loop"] == 0
    assert plain["nonword"] == pytest.approx(2 / 5)
    once = degeneracy_features([1, 2, 3, 1, 9], list("abcad"))
    assert once["loop"] == 0  # one repeated token is no loop: two whole copies are needed


def test_calibration_map_is_the_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    feats = [dict(zip(FEATURES, row)) for row in rng.normal(size=(60, len(FEATURES)))]
    fluent = [f["nll"] < 0 for f in feats]
    fitted = CoherenceCalibration.fit(feats, fluent)
    X = np.array([[f[k] for k in FEATURES] for f in feats])
    Z = (X - X.mean(0)) / X.std(0)
    expected = LogisticRegression(C=1.0, max_iter=2000).fit(Z, fluent).predict_proba(Z)[:, 1] * 100
    np.testing.assert_allclose([fitted.apply(f) for f in feats], expected, rtol=1e-6, atol=1e-6)
    assert CoherenceCalibration.from_dict(json.loads(json.dumps(fitted.as_dict()))) == fitted
    assert fitted.apply(None) == 0.0  # an empty answer is not coherent
    with pytest.raises(ValueError, match="both fluent and degenerate"):
        CoherenceCalibration.fit(feats, [True] * len(feats))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    store, catalog = Store(str(tmp_path_factory.mktemp("store"))), load_catalog()
    perplexity = calibrate(store, catalog, "perplexity", experiment="demo", quiet=True).manifest
    sentiment = calibrate(store, catalog, "sentiment", experiment="demo", quiet=True).manifest
    return store, catalog, perplexity, sentiment


@pytest.mark.slow
def test_shipped_calibration_set_aurocs(calibrated):
    store, _, perplexity, sentiment = calibrated
    assert perplexity.name == "judge-calibration-perplexity-demo-instruct"
    # out-of-fold (each item scored by a map fitted without it): the honest figure; the gate is 0.9
    assert perplexity.summary["coherence_auroc"] >= 0.9, perplexity.summary
    assert sentiment.summary["trait_auroc"] >= 0.9, sentiment.summary
    assert sentiment.summary["coherence_auroc"] < 0.9  # sentiment cannot tell fluent from degenerate
    metrics = store.read_table(perplexity, "metrics").to_dicts()
    kinds = {m["kind"] for m in metrics}
    assert {"token_loop", "newline_flood", "word_salad", "drift", "wrong_question", "fragment"} <= kinds
    fitted = json.loads(store.read_bytes(perplexity, "calibration.json"))
    assert fitted["features"] == list(FEATURES)
    assert store.read_bytes(perplexity, "scores.png")[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_second_store_reuses_the_processes_features_and_publishes_the_same_version(calibrated, tmp_path,
                                                                                      monkeypatch):
    """The labelled set's features are computed once per process: a second store calibrating
    against the same reference publishes the same version (same id, same fitted map) without
    a forward pass."""
    store, catalog, perplexity, _ = calibrated

    def no_forward_pass(self, items):
        raise AssertionError("features recomputed")

    monkeypatch.setattr(PerplexityFeaturizer, "features", no_forward_pass)
    other = Store(str(tmp_path / "other"))
    again = calibrate(other, catalog, "perplexity", experiment="demo", quiet=True).manifest
    assert again.version == perplexity.version
    assert other.read_bytes(again, "calibration.json") == store.read_bytes(perplexity, "calibration.json")
    assert other.read_table(again).equals(store.read_table(perplexity))


@pytest.mark.slow
def test_perplexity_scorer_scores_with_the_published_map(calibrated, smollm2):
    from builders.stages.calibration import perplexity_scorer

    store, catalog, manifest, _ = calibrated
    scorer = perplexity_scorer(store, catalog, "demo", "instruct", JudgeChoice(), manifest)
    fitted = CoherenceCalibration.from_dict(json.loads(store.read_bytes(manifest, "calibration.json")))
    feats = PerplexityFeaturizer(smollm2, {}).features(ITEMS)
    assert scorer.score(ITEMS) == pytest.approx([fitted.apply(f) for f in feats], abs=1e-3)
    fluent, loop = scorer.score(ITEMS[:1])[0], scorer.score(ITEMS[2:3])[0]
    assert fluent > 70 > loop
    assert scorer.identity()["calibration"] == fitted.as_dict()


def test_calibration_gate():
    passing = SimpleNamespace(summary={"coherence_auroc": 0.97}, ref="judge-calibration-x@1")
    failing = SimpleNamespace(summary={"coherence_auroc": 0.61}, ref="judge-calibration-local@2")
    require_calibrated(JudgeChoice(), passing)
    with pytest.raises(BuildError, match=r"AUROC 0.610 < 0.9 \(judge-calibration-local@2\)"):
        require_calibrated(JudgeChoice(coherence="local"), failing)
    with pytest.raises(BuildError, match="has no published calibration"):
        require_calibrated(JudgeChoice(coherence="local"), None)
    require_calibrated(JudgeChoice(coherence="local", allow_uncalibrated=True), failing)


def test_calibration_set_with_one_label_is_refused(tmp_path):
    from builders.calibration import cli

    folder = tmp_path / "cal"
    folder.mkdir()
    row = {"id": "a", "question": "Q?", "response": "A fine answer.", "label": "fluent"}
    (folder / "coherence.jsonl").write_text("\n".join(json.dumps({**row, "id": str(i)}) for i in range(5)))
    (folder / "sentiment.jsonl").write_text(json.dumps({**row, "label": "positive"}))
    with pytest.raises(BuildError, match="needs both 'fluent' and 'degenerate' labels"):
        load_calibration_set(folder)
    store = tmp_path / "store"
    assert cli(["--store", str(store), "--judge", "sentiment", "--calibration-dir", str(folder)]) == 2
    assert not store.exists() or Store(str(store)).datasets() == []
    assert names.calibration("perplexity", "demo-instruct") == "judge-calibration-perplexity-demo-instruct"
