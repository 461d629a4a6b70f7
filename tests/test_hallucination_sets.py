"""The hallucination trait sets of seed 001 (instruction- and natural-elicited) and the
labelled answers its judge is checked on: they parse, are at least as large as evil's, pair
one to one, keep steering questions out of extraction, and format under the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transforms.prompts import PromptSet, load_prompt_set

TRAITS = Path(__file__).parents[1] / "datasets" / "traits"
STYLES = ("instruction", "natural")
CALIBRATION = TRAITS / "instruction" / "hallucination" / "judge_calibration.jsonl"


def hallucination(style: str) -> PromptSet:
    return load_prompt_set(TRAITS / style / "hallucination")


@pytest.mark.parametrize("style", STYLES)
def test_loads_with_evils_sizes_or_larger(style: str) -> None:
    ps, evil = hallucination(style), load_prompt_set(TRAITS / style / "evil")
    assert (ps.name, ps.kind, ps.style) == (f"{style}/hallucination", "trait", style)
    for pol in ("pos", "neg"):
        assert len(ps.select(pol)) >= max(len(evil.select(pol)), 20)
    assert len(ps.steering["questions"]) == 20 and ps.steering["direction"] == "positive"
    assert "hallucinat" in ps.definition.lower() and "0-9" in ps.definition and "90-100" in ps.definition
    if style == "instruction":
        assert all(r["system_prompt"] for r in ps.rows)
    else:
        assert all(r["system_prompt"] is None for r in ps.rows)


@pytest.mark.parametrize("style", STYLES)
def test_ids_unique_and_every_row_paired(style: str) -> None:
    ps = hallucination(style)
    ids = [r["prompt_id"] for r in ps.rows]
    assert len(set(ids)) == len(ids)
    pairs: dict[str, list[str]] = {}
    for row in ps.rows:
        assert row["pair_id"] is not None, row["source"]
        pairs.setdefault(row["pair_id"], []).append(row["polarity"])
    assert all(sorted(p) == ["neg", "pos"] for p in pairs.values())
    texts = {pol: {r["prompt"] for r in ps.select(pol)} for pol in ("pos", "neg")}
    if style == "instruction":
        # a contrast of system prompts only: the same questions on both sides, different instructions
        assert texts["pos"] == texts["neg"]
        by_pair = {r["pair_id"]: {} for r in ps.rows}
        for r in ps.rows:
            by_pair[r["pair_id"]][r["polarity"]] = r
        assert all(p["pos"]["prompt"] == p["neg"]["prompt"] and p["pos"]["system_prompt"] != p["neg"]["system_prompt"]
                   for p in by_pair.values())
    else:
        assert not texts["pos"] & texts["neg"]


def test_steering_questions_are_shared_and_held_out() -> None:
    sets = [hallucination(style) for style in STYLES]
    questions = sets[0].steering["questions"]
    assert sets[1].steering["questions"] == questions and len(set(questions)) == len(questions)
    extraction = {r["prompt"] for ps in sets for r in ps.rows}
    assert not set(questions) & extraction
    # not merely distinct strings: no steering question is a substring of an extraction prompt or the reverse
    lowered = [p.lower() for p in extraction]
    assert not [q for q in questions for p in lowered if q.lower().rstrip("?") in p or p.rstrip("?") in q.lower()]


def test_judge_calibration_set_is_balanced_and_well_formed() -> None:
    rows = [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert all(set(r) == {"id", "question", "response", "label", "kind"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    counts = {label: sum(r["label"] == label for r in rows) for label in ("hallucinated", "honest")}
    assert sum(counts.values()) == len(rows) and min(counts.values()) >= 16
    questions = {r["question"] for r in rows}
    steering = set(hallucination("instruction").steering["questions"])
    assert not questions & steering


def test_smollm2_chat_template_formats_the_instruction_set() -> None:
    from transforms.models import load_tokenizer

    from builders.stages.responses import format_row

    tok = load_tokenizer("pkg:smollm2-135m-instruct")
    ps = hallucination("instruction")
    for row in ps.rows:
        formatted = format_row(tok, row["prompt"], row["system_prompt"], ps.style)
        assert formatted.used_chat_template and formatted.system_mode == "system_role"
        assert row["system_prompt"] in formatted.text and row["prompt"] in formatted.text
        assert formatted.ids == tok(formatted.text, add_special_tokens=False)["input_ids"]
    natural = hallucination("natural")
    row = natural.rows[0]
    plain = format_row(tok, row["prompt"], None, natural.style)
    assert not plain.used_chat_template and plain.text.endswith(row["prompt"])
