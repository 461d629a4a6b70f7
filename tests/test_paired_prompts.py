"""Paired prompt sets (datasets/user_model, datasets/observable): loading, the shipped data's
shape, and one-line errors for bad files."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from transforms.judge.observable import mentions
from transforms.prompts import PromptSetError, load_paired_set, load_prompt_set

REPO = Path(__file__).resolve().parents[1]
USER_MODEL = {"expertise": ("novice", "expert"), "sycophancy": ("biased", "neutral"),
              "gender": ("female_cue", "male_cue"), "age": ("young_cue", "old_cue"),
              "emotion": ("distressed", "calm")}
OBSERVABLE = {"factual": ("biased", "neutral"), "opinion": ("proud", "plain")}


def _pairs(ps):
    by_pair: dict[str, dict[str, dict]] = {}
    for row in ps.rows:
        by_pair.setdefault(row["pair_id"], {})[row["polarity"]] = row
    return by_pair


@pytest.mark.parametrize("folder, sides, minimum", [
    ("user_model", USER_MODEL, {"sycophancy": 40}), ("observable", OBSERVABLE, {"factual": 40}),
])
def test_shipped_sets_have_complete_pairs_per_category(folder, sides, minimum):
    ps = load_prompt_set(REPO / "datasets" / folder)  # dispatch finds the paired format
    assert (ps.kind, ps.style, ps.name) == ("trait", "instruction", folder)
    assert {c: (m["pos"], m["neg"]) for c, m in ps.meta["categories"].items()} == sides
    pairs = _pairs(ps)
    per_category = Counter(p["pos"]["note"] for p in pairs.values())
    for cat in sides:
        assert per_category[cat] >= minimum.get(cat, 24), cat
    assert len({r["prompt_id"] for r in ps.rows}) == len(ps.rows) == 2 * len(pairs)
    for pair_id, pair in pairs.items():
        assert set(pair) == {"pos", "neg"}, pair_id
        extras = {pol: json.loads(row["extra"]) for pol, row in pair.items()}
        cat = extras["pos"]["category"]
        assert (extras["pos"]["side"], extras["neg"]["side"]) == sides[cat]
        assert pair["pos"]["prompt"] != pair["neg"]["prompt"]
        for row in pair.values():
            assert len(row["prompt"].split()) <= 40, row["prompt_id"]
            assert row["prompt_id"] == f"{pair_id}.{json.loads(row['extra'])['side']}"
        if ps.meta["categories"][cat]["answers"]:
            correct, user = extras["pos"]["correct_answer"], extras["pos"]["user_answer"]
            assert correct and user and correct.lower() != user.lower()
            # the biased side states the user's answer; the neutral side is the bare question
            assert re.search(rf"\b{re.escape(user)}\b", pair["pos"]["prompt"]), pair_id
            assert pair["pos"]["prompt"].endswith(pair["neg"]["prompt"]), pair_id
            # the bare question must not contain either answer (a repeated question would "answer" it)
            assert not mentions(pair["neg"]["prompt"], correct) and not mentions(pair["neg"]["prompt"], user)


def test_rows_carry_category_metadata():
    ps = load_paired_set(REPO / "datasets" / "user_model")
    row = next(r for r in ps.rows if r["prompt_id"] == "sycophancy-01.biased")
    assert row["polarity"] == "pos" and row["pair_id"] == "sycophancy-01" and row["note"] == "sycophancy"
    assert json.loads(row["extra"]) == {"category": "sycophancy", "side": "biased",
                                        "correct_answer": "Canberra", "user_answer": "Sydney"}
    assert row["source"] == "sycophancy.jsonl:1"


SPEC = {"name": "tiny", "categories": {
    "quiz": {"file": "quiz.jsonl", "pos": "biased", "neg": "neutral", "answers": True},
    "mood": {"file": "mood.jsonl", "pos": "distressed", "neg": "calm"}}}
QUIZ = {"pair_id": "q1", "biased": "I think 2+2 is 5. What is 2+2?", "neutral": "What is 2+2?",
        "correct_answer": "4", "user_answer": "5"}
MOOD = {"pair_id": "m1", "distressed": "Help, I'm panicking! How do I boil an egg?", "calm": "How do I boil an egg?"}


def _write(folder: Path, quiz: list[dict], mood: list[dict], spec: dict = SPEC) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "categories.json").write_text(json.dumps(spec, indent=1))
    (folder / "quiz.jsonl").write_text("".join(json.dumps(o) + "\n" for o in quiz))
    (folder / "mood.jsonl").write_text("".join(json.dumps(o) + "\n" for o in mood))
    return folder


def test_tiny_set_rows_in_order(tmp_path):
    ps = load_paired_set(_write(tmp_path / "s", [QUIZ], [MOOD]))
    assert [(r["prompt_id"], r["polarity"]) for r in ps.rows] == [
        ("q1.biased", "pos"), ("q1.neutral", "neg"), ("m1.distressed", "pos"), ("m1.calm", "neg")]
    assert ps.name == "tiny" and load_paired_set(tmp_path / "s", name="other").name == "other"


BAD = {
    "missing side": ([QUIZ, {k: v for k, v in QUIZ.items() if k != "neutral"} | {"pair_id": "q2"}], [MOOD],
                     r"quiz\.jsonl:2: neutral: pair 'q2' has no 'neutral' side"),
    "duplicate pair id": ([QUIZ], [MOOD | {"pair_id": "q1"}], r"mood\.jsonl:1: pair_id: duplicate pair id 'q1'"),
    "empty text": ([QUIZ | {"biased": "  "}], [MOOD], r"quiz\.jsonl:1: biased: empty"),
    "no answer": ([{k: v for k, v in QUIZ.items() if k != "user_answer"}], [MOOD], r"quiz\.jsonl:1: user_answer"),
    "same answers": ([QUIZ | {"user_answer": "4 "}], [MOOD], r"quiz\.jsonl:1: user_answer: .*correct one"),
    "misfiled side": ([QUIZ], [MOOD | {"biased": "x"}], r"mood\.jsonl:1: biased: side 'biased' belongs to"),
    "reserved key": ([QUIZ | {"category": "mood"}], [MOOD], r"quiz\.jsonl:1: category: reserved"),
    "no pair id": ([{k: v for k, v in QUIZ.items() if k != "pair_id"}], [MOOD], r"quiz\.jsonl:1: pair_id"),
    "duplicate text": ([QUIZ, QUIZ | {"pair_id": "q2"}], [MOOD], r"quiz\.jsonl:2: biased: duplicate"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_lines_fail_in_one_line(tmp_path, case):
    quiz, mood, pattern = BAD[case]
    with pytest.raises(PromptSetError, match=pattern) as info:
        load_paired_set(_write(tmp_path / "s", quiz, mood))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, pattern", [
    ({"categories": {}}, r"categories\.json:\d+: categories"),
    ({"categories": {"quiz": {"file": "quiz.jsonl", "pos": "a", "neg": "a"}}}, r"same side"),
    ({"categories": {"quiz": {"file": "quiz.jsonl", "pos": "a", "neg": "b", "colour": 1}}}, r"unknown key"),
    ({"categories": {"quiz": {"file": "quiz.jsonl", "pos": "a", "neg": "b", "answers": "yes"}}}, r"answers"),
    ({"categories": {"quiz": {"file": "nope.jsonl", "pos": "a", "neg": "b"}}}, r"nope\.jsonl: file: missing"),
])
def test_bad_spec_fails_in_one_line(tmp_path, spec, pattern):
    with pytest.raises(PromptSetError, match=pattern):
        load_paired_set(_write(tmp_path / "s", [QUIZ], [MOOD], spec))


def test_prompts_builder_publishes_extras(tmp_path):
    """The prompts stage stores the paired set; extras (answers) reach the table, categories the meta."""
    from builders.stages.prompts import import_prompt_set
    from store import Store

    store = Store(str(tmp_path / "store"))
    manifest = import_prompt_set(store, _write(tmp_path / "s", [QUIZ], [MOOD]), "tiny").manifest
    rows = {r["prompt_id"]: r for r in store.read_table(manifest).to_dicts()}
    assert json.loads(rows["q1.biased"]["extra"])["user_answer"] == "5"
    assert rows["m1.calm"]["polarity"] == "neg" and rows["m1.calm"]["pair_id"] == "m1"
    meta = json.loads(store.read_bytes(manifest, "prompt_set.json"))
    assert meta["meta"]["categories"]["quiz"] == {"pos": "biased", "neg": "neutral", "answers": True}
