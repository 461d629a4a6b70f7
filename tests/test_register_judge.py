"""The ``register`` judge: expert-vs-child register of an answer from text features (no model).

Every computation is checked against one written here: syllables against hand labels,
Flesch-Kincaid against hand counts, the score rule and the fitted constants against numpy,
AUROC against the pairwise definition; planted edits (jargon in place of simple words) must
raise the score.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from transforms.judge import (
    DEFAULT_REGISTER_CONSTANTS,
    REGISTER_FEATURES,
    FeatureScale,
    InMemoryScoreCache,
    RegisterConstants,
    RegisterJudge,
    ResponseScorer,
    count_syllables,
    generated_register,
    identity_hash,
    load_common_words,
    load_register_set,
    rank_auroc,
    register_features,
    score_cached,
    validate_register,
)

log = logging.getLogger(__name__)

# Hand-labelled (dictionary) syllable counts, common and technical words alike.
SYLLABLES = {
    "dog": 1, "tree": 1, "house": 1, "make": 1, "makes": 1, "time": 1, "whole": 1, "jumped": 1, "played": 1,
    "strength": 1, "through": 1, "water": 2, "table": 2, "little": 2, "apple": 2, "happy": 2, "rocket": 2,
    "wanted": 2, "boxes": 2, "changes": 2, "places": 2, "lovely": 2, "statement": 2, "nation": 2,
    "special": 2, "movie": 2, "function": 2, "because": 2, "before": 2, "ocean": 2, "sister": 2,
    "vaccine": 2, "computer": 3, "dinosaur": 3, "banana": 3, "animal": 3, "family": 3, "beautiful": 3,
    "radio": 3, "media": 3, "video": 3, "recursion": 3, "together": 3, "hemisphere": 3, "chlorophyll": 3,
    "atmosphere": 3, "different": 3, "biology": 4, "evolution": 4, "population": 4, "antibody": 4,
    "consequently": 4, "interesting": 4, "photosynthesis": 5, "relativity": 5, "electricity": 5,
    "gravitational": 5, "approximately": 5, "precipitation": 5, "anthropogenic": 5, "deoxyribonucleic": 7,
    # words the counter is known to miss (kept: the accuracy below is an honest one)
    "science": 2, "quiet": 2, "idea": 3, "area": 3, "people": 2, "business": 2, "created": 3,
    # labelled before running the counter on them
    "answer": 2, "question": 2, "energy": 3, "molecule": 3, "universe": 3, "temperature": 4, "probably": 3,
    "circle": 2, "orange": 2, "garden": 2, "elephant": 3, "yesterday": 3, "mountain": 2, "equation": 3,
    "hydrogen": 3, "capacity": 4, "experiment": 4, "bicycle": 3, "friendly": 2, "smiled": 1, "careful": 2,
}
# Unambiguous words the counter must get exactly (plain vowel groups, silent e, -es/-ed, -le).
MUST_BE_EXACT = ("dog", "make", "makes", "jumped", "wanted", "boxes", "table", "water", "computer",
                 "relativity", "photosynthesis", "banana", "nation", "biology")


def test_syllable_counter_against_hand_labels() -> None:
    got = {w: count_syllables(w) for w in SYLLABLES}
    wrong = {w: (SYLLABLES[w], g) for w, g in got.items() if g != SYLLABLES[w]}
    log.info("syllable counter: %d/%d exact; wrong (label, got): %s", len(SYLLABLES) - len(wrong),
             len(SYLLABLES), wrong)
    assert len(wrong) <= 0.15 * len(SYLLABLES), wrong
    assert all(abs(label - g) <= 1 for label, g in wrong.values()), wrong
    assert {w: got[w] for w in MUST_BE_EXACT} == {w: SYLLABLES[w] for w in MUST_BE_EXACT}
    assert count_syllables("Table!") == 2 and count_syllables("") == 0 and count_syllables("123") == 0


def test_features_against_hand_counts() -> None:
    words = load_common_words()
    text = "The cat sat. The dog ran far away!\nphotosynthesis"
    # words: the cat sat | the dog ran far away | photosynthesis -> 9 words, 3 sentences
    # syllables: 1 1 1 | 1 1 1 1 2 | 5 -> 14; long (>= 3): photosynthesis; rare: photosynthesis
    feats = register_features(text, words)
    assert feats is not None
    assert (feats.words, feats.sentences, feats.syllables) == (9, 3, 14)
    assert feats.fk_grade == pytest.approx(0.39 * 9 / 3 + 11.8 * 14 / 9 - 15.59)
    letters = len("thecatsatthedogranfarawayphotosynthesis")
    assert feats.mean_word_length == pytest.approx(letters / 9)
    assert feats.long_word_share == pytest.approx(1 / 9)
    assert feats.rare_word_share == pytest.approx(1 / 9)
    # inflections of common words are common; a missing terminator still ends a sentence
    feats = register_features("Dogs jumped running happily", words)
    assert feats is not None and feats.sentences == 1 and feats.rare_word_share == 0.0


def _numpy_score(vector: tuple[float, ...], constants: RegisterConstants) -> float:
    centers = np.array([s.center for s in constants.scales])
    spreads = np.array([s.spread for s in constants.scales])
    z = np.clip((np.array(vector) - centers) / spreads, -3, 3)
    return float(100 * (z.mean() + 3) / 6)


def test_score_rule_against_numpy() -> None:
    judge = RegisterJudge()
    texts = ["Plants eat sunshine! They grow big.",
             "Chlorophyll absorbs photons, driving electron transport across the thylakoid membrane.",
             "ok", "the the the the the the the the the the the the the the the the the the the the",
             "Antidisestablishmentarianism " * 30]
    for text in texts:
        feats = judge.features(text)
        assert feats is not None
        score = judge.score_one(text)
        assert score == pytest.approx(_numpy_score(feats.vector(), DEFAULT_REGISTER_CONSTANTS), abs=1e-9)
        assert 0.0 <= score <= 100.0
    assert judge.score_one("Antidisestablishmentarianism " * 30) == pytest.approx(100.0)  # every z clipped at +3


def _main_rows() -> list:
    return [r for r in load_register_set() if r.kind == "main"]


def test_default_constants_are_the_main_set_fit() -> None:
    """The shipped constants are what the documented fit gives on the shipped data (numpy)."""
    judge = RegisterJudge()
    rows = _main_rows()
    x = np.array([judge.features(r.response).vector() for r in rows])
    expert = np.array([r.label == "expert" for r in rows])
    centers = (x[expert].mean(0) + x[~expert].mean(0)) / 2
    spreads = np.sqrt((x[expert].var(0, ddof=1) + x[~expert].var(0, ddof=1)) / 2)
    shipped = DEFAULT_REGISTER_CONSTANTS.scales
    assert [s.center for s in shipped] == pytest.approx(centers.tolist(), rel=2e-3)
    assert [s.spread for s in shipped] == pytest.approx(spreads.tolist(), rel=2e-3)


def _pairwise_auroc(scores: list[float], positive: list[bool]) -> float:
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_rank_auroc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=40).astype(float).tolist()  # many ties
    labels = (rng.random(40) < 0.4).tolist()
    assert rank_auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels))
    with pytest.raises(ValueError):
        rank_auroc([1.0, 2.0], [True, True])


def test_calibration_set_separates_expert_from_child() -> None:
    rows = load_register_set()
    main = [r for r in rows if r.kind == "main"]
    hard = [r for r in rows if r.kind != "main"]
    experts = [r for r in main if r.label == "expert"]
    assert len(experts) >= 20 and len(main) - len(experts) >= 20 and len(hard) >= 10
    assert {r.question for r in experts} == {r.question for r in main if r.label == "child"}  # same questions
    judge = RegisterJudge()
    scores = [judge.score_one(r.response) for r in main]
    auc_main = _pairwise_auroc(scores, [r.label == "expert" for r in main])
    hard_scores = [judge.score_one(r.response) for r in hard]
    auc_hard = _pairwise_auroc(hard_scores, [r.label == "expert" for r in hard])
    log.info("register AUROC: main %.3f, hard cases %.3f", auc_main, auc_hard)
    assert auc_main >= 0.9
    report = validate_register(judge)
    assert report.auroc_main == pytest.approx(auc_main) and report.auroc_hard == pytest.approx(auc_hard)
    assert report.passed and (report.n_main, report.n_hard) == (len(main), len(hard))
    # What the hard cases show (no threshold on their AUROC, 0.5 today): one long word or a
    # run-on sentence does not lift a child's answer, terse jargon reads as expert, and
    # expert content in plain words reads as simple -- the judge scores language, not content.
    by_kind: dict[str, list[float]] = {}
    for r, s in zip(hard, hard_scores):
        by_kind.setdefault(r.kind, []).append(s)
    assert max(by_kind["hard_child_long_word"] + by_kind["hard_child_runon"]) < 35
    assert min(by_kind["hard_terse_expert"]) > 65
    assert max(by_kind["hard_plain_expert"]) < 35


def test_jargon_in_place_of_simple_words_raises_the_score() -> None:
    judge = RegisterJudge()
    edits = [("eat", "metabolize"), ("sunshine", "electromagnetic radiation"), ("make", "synthesize"),
             ("food", "carbohydrates"), ("air", "atmospheric carbon dioxide")]
    text = "Plants eat sunshine. They make food from air and water."
    scores = [judge.score_one(text)]
    for simple, jargon in edits:
        text = text.replace(simple, jargon)
        scores.append(judge.score_one(text))
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
    assert scores[0] < 25 and scores[-1] > 75, scores
    # splitting one long sentence into short ones lowers it (FK grade falls, the rest stays)
    long = "The heart pumps blood through the body and the lungs and then back to the heart again."
    short = "The heart pumps blood. It goes through the body. It goes to the lungs. Then it comes back."
    assert judge.score_one(short) < judge.score_one(long)


def test_deterministic_and_identity() -> None:
    text = "Rayleigh scattering redirects shorter wavelengths preferentially toward the observer."
    a, b = RegisterJudge(), RegisterJudge()
    assert a.score_one(text) == b.score_one(text) == a.score_one(text)
    assert identity_hash(a) == identity_hash(b)
    assert isinstance(a, ResponseScorer)
    other = RegisterConstants(tuple(FeatureScale(s.center + 1, s.spread) for s in DEFAULT_REGISTER_CONSTANTS.scales))
    assert identity_hash(RegisterJudge(constants=other)) != identity_hash(a)
    assert identity_hash(RegisterJudge(common_words=frozenset({"the"}))) != identity_hash(a)
    assert json.loads(json.dumps(a.identity()))["features"] == list(REGISTER_FEATURES)


def test_wordless_text_scores_none_and_nan() -> None:
    judge = RegisterJudge()
    for text in ("", "   \n", "123 456 !!!", "..."):
        assert judge.features(text) is None and judge.score_one(text) is None
    got = generated_register(["", "The sun is hot.", "42"])
    assert math.isnan(got[0]) and math.isnan(got[2]) and got[1] == judge.score_one("The sun is hot.")
    seen: dict[int, object] = {}
    items = [("q", "The sun is hot."), ("q", ""), ("q", "The sun is hot.")]
    scores = score_cached(judge, items, InMemoryScoreCache(), on_result=lambda i, s: seen.__setitem__(i, s))
    assert scores[1] is None and scores[0] == scores[2] and seen == dict(enumerate(scores))


def test_bad_calibration_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "register.jsonl"
    good = {"id": "a", "question": "q", "response": "r", "label": "expert", "kind": "main"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": "adult"}) + "\n")
    with pytest.raises(ValueError, match=r"register.jsonl:2: label 'adult'"):
        load_register_set(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "kind"}) + "\n")
    with pytest.raises(ValueError, match=r"register.jsonl:1: bad row"):
        load_register_set(path)
