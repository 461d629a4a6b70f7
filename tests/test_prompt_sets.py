"""Tests for transforms/prompts (sets, rows, traits, inference): formats, stable ids, pairing, one-line errors."""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from transforms.prompts import (ROW_KEYS, PromptSet, PromptSetError, combine_inference, inference_json, load_prompt_set, parse_inference_set, parse_instruction_trait, parse_natural_trait, parse_persona_vectors_trait)

REPO = Path(__file__).parents[1]
DATASETS = REPO / "datasets"
EXAMPLES = Path(__file__).parents[1].parent / "shared" / "data" / "trait-interp"
OWN_TRAITS = ["instruction/sycophancy", "instruction/evil", "natural/sycophancy", "natural/evil",
              "instruction/optimism", "natural/optimism", "instruction/weddings"]


@pytest.fixture
def examples() -> Path:
    if not (EXAMPLES / "traits").is_dir():
        pytest.skip(f"example data not present at {EXAMPLES}")
    return EXAMPLES


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*objs: dict) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def check_schema(ps: PromptSet) -> None:
    assert ps.rows, ps.name
    for row in ps.rows:
        assert tuple(row) == ROW_KEYS
        assert isinstance(row["prompt_id"], str) and row["prompt_id"]
        assert isinstance(row["prompt"], str) and row["prompt"].strip()
        assert row["polarity"] in (("pos", "neg") if ps.kind == "trait" else (None,))
        assert isinstance(row["source"], str) and ":" in row["source"]
        assert isinstance(row["extra"], str) and isinstance(json.loads(row["extra"]), dict)
    ids = [r["prompt_id"] for r in ps.rows]
    assert len(ids) == len(set(ids)), "prompt ids must be unique within a set"


def pairs_of(ps: PromptSet) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """pair_id -> (pos prompt ids, neg prompt ids)."""
    groups: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"pos": set(), "neg": set()})
    for r in ps.rows:
        if r["pair_id"] is not None:
            groups[r["pair_id"]][r["polarity"]].add(r["prompt_id"])
    return {k: (frozenset(v["pos"]), frozenset(v["neg"])) for k, v in groups.items()}


def id_set(ps: PromptSet) -> set[tuple]:
    return {(r["prompt_id"], r["pair_id"], r["polarity"], r["prompt"], r["system_prompt"]) for r in ps.rows}


def shuffled_copy(src: Path, dst: Path, files: list[str], seed: int = 0) -> Path:
    shutil.copytree(src, dst)
    rng = random.Random(seed)
    for name in files:
        lines = (dst / name).read_text(encoding="utf-8").splitlines(keepends=True)
        lines = [ln if ln.endswith("\n") else ln + "\n" for ln in lines]
        rng.shuffle(lines)
        (dst / name).write_text("".join(lines), encoding="utf-8")
    return dst


# ---------------------------------------------------------------- formats parse


@pytest.mark.parametrize("trait", OWN_TRAITS)
def test_own_trait_datasets_parse(trait: str) -> None:
    ps = load_prompt_set(DATASETS / "traits" / trait)
    style = trait.split("/")[0]
    assert (ps.kind, ps.style, ps.name) == ("trait", style, trait)
    check_schema(ps)
    n_pos, n_neg = len(ps.select("pos")), len(ps.select("neg"))
    assert n_pos == n_neg and 12 <= n_pos <= 24
    pairs = pairs_of(ps)
    assert len(pairs) == n_pos and all(len(p) == 1 and len(n) == 1 for p, n in pairs.values())
    assert ps.definition and "100" in ps.definition
    assert ps.steering and 6 <= len(ps.steering["questions"]) <= 12
    assert ps.steering["direction"] == "positive"
    assert len(ps.source_files) == 4 + (ps.lexicon is not None)
    if style == "instruction":
        assert all(r["system_prompt"] for r in ps.rows)
    else:
        assert all(r["system_prompt"] is None for r in ps.rows)


def test_instruction_and_natural_share_steering_questions() -> None:
    for trait in ("sycophancy", "evil", "optimism"):
        a = load_prompt_set(DATASETS / "traits" / "instruction" / trait)
        b = load_prompt_set(DATASETS / "traits" / "natural" / trait)
        assert a.steering and b.steering and a.steering["questions"] == b.steering["questions"]


def test_optimism_steering_and_heldout_questions_are_held_out() -> None:
    trained = {r["prompt"] for r in load_prompt_set(DATASETS / "traits" / "instruction" / "optimism").rows}
    steering = set(load_prompt_set(DATASETS / "traits" / "instruction" / "optimism").steering["questions"])
    heldout = {r["prompt"] for r in load_prompt_set(DATASETS / "inference" / "optimism_heldout.json").rows}
    control = {r["prompt"] for r in load_prompt_set(DATASETS / "inference" / "optimism_questions.json").rows}
    assert len(trained) >= 20 and control == trained
    assert not (trained & steering) and not (trained & heldout) and not (steering & heldout)


def test_own_inference_set_parses() -> None:
    ps = load_prompt_set(DATASETS / "inference" / "general.json")
    check_schema(ps)
    assert (ps.kind, ps.style, ps.name) == ("inference", "inference", "general")
    assert [r["prompt_id"] for r in ps.rows] == [str(i) for i in range(1, len(ps.rows) + 1)]
    assert 8 <= len(ps.rows) <= 12 and all(r["note"] for r in ps.rows)
    assert ps.meta["description"]


def test_example_instruction_trait(examples: Path) -> None:
    ps = load_prompt_set(examples / "traits" / "pv_instruction" / "sycophancy")
    check_schema(ps)
    assert (ps.name, ps.style, len(ps.rows)) == ("pv_instruction/sycophancy", "instruction", 200)
    # 20 questions x 5 system prompts per side: each question is one pair group.
    pairs = pairs_of(ps)
    assert len(pairs) == 20 and all(len(p) == len(n) == 5 for p, n in pairs.values())
    for pid, (pos, neg) in pairs.items():
        prompts = {r["prompt"] for r in ps.rows if r["pair_id"] == pid}
        assert len(prompts) == 1
    assert ps.definition and ps.definition.startswith("Score sycophancy")
    assert ps.steering and len(ps.steering["questions"]) == 20


def test_example_natural_trait(examples: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="transforms.prompts"):
        ps = load_prompt_set(examples / "traits" / "pv_natural" / "sycophancy")
    check_schema(ps)
    assert (ps.style, len(ps.select("pos")), len(ps.select("neg"))) == ("natural", 150, 150)
    pairs = pairs_of(ps)
    assert 0 < len(pairs) < 150  # the example is only partly paired by leading sentence
    assert all(len(p) == len(n) == 1 for p, n in pairs.values())
    first = {r["polarity"]: r for r in ps.rows if r["source"] in ("positive.txt:1", "negative.txt:1")}
    assert first["pos"]["pair_id"] == first["neg"]["pair_id"] is not None  # "My boss said Sydney ..."
    assert any("paired by leading sentence" in m for m in caplog.messages)


def test_example_inference_set(examples: Path) -> None:
    ps = load_prompt_set(examples / "inference" / "general_benign.json")
    check_schema(ps)
    assert [r["prompt_id"] for r in ps.rows] == ["1", "2", "3", "4", "5"]
    assert ps.rows[0]["note"] and ps.rows[0]["source"] == "general_benign.json:5"
    assert ps.meta["name"] == "Benign Requests"


def test_persona_vectors_trait_json(tmp_path: Path) -> None:
    spec = {
        "instruction": [
            {"pos": "Be gushingly agreeable.", "neg": "Be candid and balanced."},
            {"pos": "Always side with the user.", "neg": "Evaluate claims on the evidence."},
        ],
        "questions": ["Is my plan good?", "Am I right about tea?", "Should I quit?"],
        "eval_prompt": "Rate sycophancy 0-100.\nQuestion: {question}\nAnswer: {answer}",
    }
    path = write(tmp_path / "sycophantic.json", json.dumps(spec, indent=2))
    ps = load_prompt_set(path)
    check_schema(ps)
    assert (ps.name, ps.kind, ps.style, len(ps.rows)) == ("sycophantic", "trait", "instruction", 12)
    pairs = pairs_of(ps)
    assert len(pairs) == 6 and all(len(p) == len(n) == 1 for p, n in pairs.values())
    row = next(r for r in ps.rows if r["polarity"] == "neg" and r["prompt"] == "Should I quit?"
               and r["system_prompt"] == "Evaluate claims on the evidence.")
    partner = next(r for r in ps.rows if r["pair_id"] == row["pair_id"] and r["polarity"] == "pos")
    assert partner["system_prompt"] == "Always side with the user." and partner["prompt"] == "Should I quit?"
    assert ps.steering and ps.steering["eval_prompt"] == spec["eval_prompt"]
    assert ps.steering["questions"] == spec["questions"]
    # reordering the questions and instructions changes no id
    spec2 = {**spec, "instruction": spec["instruction"][::-1], "questions": spec["questions"][::-1]}
    ps2 = parse_persona_vectors_trait(write(tmp_path / "b" / "sycophantic.json", json.dumps(spec2)))
    assert id_set(ps2) == id_set(ps)


def test_inference_bare_lists_and_extra_fields(tmp_path: Path) -> None:
    strings = parse_inference_set(write(tmp_path / "s.json", json.dumps(["Hi there", "Tell me a joke"])))
    check_schema(strings)
    assert strings.rows[0]["source"] == "s.json:1" and strings.rows[0]["note"] is None
    objs = write(tmp_path / "o.json", json.dumps([{"id": 7, "text": "A", "category": "x"}, {"id": "b", "text": "B"}]))
    ps = load_prompt_set(objs, name="custom")
    assert ps.name == "custom" and [r["prompt_id"] for r in ps.rows] == ["7", "b"]
    assert json.loads(ps.rows[0]["extra"]) == {"category": "x"} and ps.rows[1]["extra"] == "{}"


# ---------------------------------------------------------------- stable ids, pairing


def test_ids_stable_across_runs() -> None:
    for trait in OWN_TRAITS:
        a = load_prompt_set(DATASETS / "traits" / trait)
        b = load_prompt_set(DATASETS / "traits" / trait)
        assert [r["prompt_id"] for r in a.rows] == [r["prompt_id"] for r in b.rows]


def _line_order_cases(examples_present: bool) -> list[tuple[Path, list[str]]]:
    cases = [(DATASETS / "traits" / t, [f"positive.{e}", f"negative.{e}"])
             for t, e in (("instruction/sycophancy", "jsonl"), ("natural/evil", "txt"))]
    if examples_present:
        cases += [(EXAMPLES / "traits" / "pv_instruction" / "sycophancy", ["positive.jsonl", "negative.jsonl"]),
                  (EXAMPLES / "traits" / "pv_natural" / "sycophancy", ["positive.txt", "negative.txt"])]
    return cases


@pytest.mark.parametrize("seed", [1, 2])
def test_ids_and_pairs_independent_of_line_order(tmp_path: Path, seed: int) -> None:
    for k, (src, files) in enumerate(_line_order_cases((EXAMPLES / "traits").is_dir())):
        original = load_prompt_set(src)
        shuffled = load_prompt_set(shuffled_copy(src, tmp_path / f"{k}" / src.name, files, seed))
        assert id_set(shuffled) == id_set(original)
        assert pairs_of(shuffled) == pairs_of(original)
        sources = [{r["prompt_id"]: r["source"] for r in ps.rows} for ps in (shuffled, original)]
        assert sources[0] != sources[1], "the shuffle should have moved lines"


def test_inference_ids_independent_of_order(tmp_path: Path) -> None:
    data = json.loads((DATASETS / "inference" / "general.json").read_text())
    data["prompts"].reverse()
    a = load_prompt_set(DATASETS / "inference" / "general.json")
    b = load_prompt_set(write(tmp_path / "general.json", json.dumps(data)))
    assert {(r["prompt_id"], r["prompt"]) for r in a.rows} == {(r["prompt_id"], r["prompt"]) for r in b.rows}


def _plain_instruction_dir(root: Path) -> Path:
    qs = ["Isn't my essay perfect?", "Cats are better than dogs, right?", "My plan can't fail, agreed?"]
    write(root / "positive.jsonl", jsonl(*({"prompt": q, "system_prompt": "Agree."} for q in qs)))
    write(root / "negative.jsonl", jsonl(*({"prompt": q, "system_prompt": "Be honest."} for q in qs)))
    return root


@pytest.mark.parametrize("with_ids", [True, False])
def test_pairing_by_id_not_position(tmp_path: Path, with_ids: bool) -> None:
    src = DATASETS / "traits" / "instruction" / "evil" if with_ids else _plain_instruction_dir(tmp_path / "plain")
    original = parse_instruction_trait(src)
    swapped = tmp_path / "swapped"
    shutil.copytree(src, swapped)
    lines = (swapped / "negative.jsonl").read_text().splitlines(keepends=True)
    lines[0], lines[-1] = lines[-1], lines[0]
    (swapped / "negative.jsonl").write_text("".join(lines))
    ps = parse_instruction_trait(swapped)
    assert pairs_of(ps) == pairs_of(original)
    for pid in pairs_of(ps):
        members = [r for r in ps.rows if r["pair_id"] == pid]
        assert {r["polarity"] for r in members} == {"pos", "neg"} and len({r["prompt"] for r in members}) == 1


def test_explicit_pair_id_field(tmp_path: Path) -> None:
    d = tmp_path / "t"
    write(d / "positive.jsonl", jsonl({"pair_id": "p1", "prompt": "Q one?", "system_prompt": "A"},
                                      {"pair_id": "p2", "prompt": "Q two?", "system_prompt": "A", "topic": "x"}))
    write(d / "negative.jsonl", jsonl({"pair_id": "p2", "prompt": "Different wording two?"},
                                      {"pair_id": "p1", "prompt": "Different wording one?"}))
    ps = load_prompt_set(d)
    assert set(pairs_of(ps)) == {"p1", "p2"}
    assert json.loads(ps.rows[1]["extra"]) == {"topic": "x"} and ps.rows[2]["system_prompt"] is None


def test_natural_unpaired_lines_are_allowed(tmp_path: Path) -> None:
    d = tmp_path / "nat"
    write(d / "positive.txt", 'He said "stop." I laughed and\nShared opening. I agreed and said\n\nOnly here. So I\n')
    write(d / "negative.txt", 'He said "stop." I stopped and\nShared opening. I disagreed and said\n')
    ps = parse_natural_trait(d)
    by_source = {r["source"]: r for r in ps.rows}
    assert set(by_source) == {"positive.txt:1", "positive.txt:2", "positive.txt:4", "negative.txt:1", "negative.txt:2"}
    assert by_source["positive.txt:1"]["pair_id"] == by_source["negative.txt:1"]["pair_id"] is not None
    assert by_source["positive.txt:2"]["pair_id"] == by_source["negative.txt:2"]["pair_id"] is not None
    assert by_source["positive.txt:4"]["pair_id"] is None
    assert ps.definition is None and ps.steering is None


# ---------------------------------------------------------------- combine


def test_combine_inference_from_steering(tmp_path: Path) -> None:
    syc, evil = (load_prompt_set(DATASETS / "traits" / "instruction" / t) for t in ("sycophancy", "evil"))
    combined = combine_inference([syc, evil], "steering_combined")
    check_schema(combined)
    assert combined.kind == "inference" and combined.name == "steering_combined"
    assert len(combined.rows) == len(syc.steering["questions"]) + len(evil.steering["questions"])  # type: ignore
    assert [r["note"] for r in combined.rows[:2]] == ["sycophancy", "sycophancy"]
    assert combined.rows[-1]["note"] == "evil"
    reordered = combine_inference({"evil": evil, "sycophancy": syc}, "steering_combined")
    assert {(r["prompt_id"], r["note"]) for r in reordered.rows} == {(r["prompt_id"], r["note"]) for r in combined.rows}
    path = write(tmp_path / "steering_combined.json", json.dumps(inference_json(combined), indent=2))
    back = load_prompt_set(path)
    assert [(r["prompt_id"], r["prompt"], r["note"]) for r in back.rows] == \
        [(r["prompt_id"], r["prompt"], r["note"]) for r in combined.rows]
    with pytest.raises(PromptSetError, match="duplicate"):
        combine_inference([syc, load_prompt_set(DATASETS / "traits" / "natural" / "sycophancy")], "bad")
    with pytest.raises(PromptSetError, match="steering"):
        combine_inference([parse_inference_set(DATASETS / "inference" / "general.json")], "bad")


# ---------------------------------------------------------------- validation errors

GOOD_POS = {"prompt": "Q?", "system_prompt": "Agree."}
GOOD_NEG = {"prompt": "Q?", "system_prompt": "Be honest."}

# (files to write, file named in the message, line or None, field, words in the message)
ERROR_CASES: dict[str, tuple[dict[str, str | bytes], str, int | None, str, str]] = {
    "missing_field": ({"t/positive.jsonl": jsonl(GOOD_POS, {"system_prompt": "Agree."}),
                       "t/negative.jsonl": jsonl(GOOD_NEG)}, "positive.jsonl", 2, "prompt", "missing"),
    "whitespace_text": ({"t/positive.jsonl": jsonl(GOOD_POS),
                         "t/negative.jsonl": jsonl(GOOD_NEG, {"prompt": "  \t", "system_prompt": "x"})},
                        "negative.jsonl", 2, "prompt", "whitespace"),
    "empty_system_prompt": ({"t/positive.jsonl": jsonl({"prompt": "Q?", "system_prompt": ""}),
                             "t/negative.jsonl": jsonl(GOOD_NEG)}, "positive.jsonl", 1, "system_prompt", "empty"),
    "duplicate_id": ({"t/positive.jsonl": jsonl({"id": 1, **GOOD_POS}, {"id": "2", **GOOD_POS}, {"id": 1, **GOOD_POS}),
                      "t/negative.jsonl": jsonl({"id": 1, **GOOD_NEG})}, "positive.jsonl", 3, "id", "duplicate"),
    "duplicate_content": ({"t/positive.jsonl": jsonl(GOOD_POS, GOOD_POS), "t/negative.jsonl": jsonl(GOOD_NEG)},
                          "positive.jsonl", 2, "prompt", "duplicate"),
    "unpaired_prompt": ({"t/positive.jsonl": jsonl(GOOD_POS, {"prompt": "Lonely?", "system_prompt": "A"}),
                         "t/negative.jsonl": jsonl(GOOD_NEG)}, "positive.jsonl", 2, "prompt", "unpaired"),
    "unpaired_neg_id": ({"t/positive.jsonl": jsonl({"id": "a", **GOOD_POS}),
                         "t/negative.jsonl": jsonl({"id": "a", **GOOD_NEG}, {"id": "b", **GOOD_NEG})},
                        "negative.jsonl", 2, "id", "unpaired"),
    "unpaired_counts": ({"t/positive.jsonl": jsonl(GOOD_POS, {"prompt": "Q?", "system_prompt": "Other"}),
                         "t/negative.jsonl": jsonl(GOOD_NEG)}, "positive.jsonl", 1, "prompt", "unpaired"),
    "bom_then_bad_byte": ({"t/positive.jsonl": b"\xef\xbb\xbf" + jsonl(GOOD_POS).encode() + b'{"prompt": "\x80"}\n',
                           "t/negative.jsonl": jsonl(GOOD_NEG)}, "positive.jsonl", 2, "encoding", "byte offset 59"),
    "bad_jsonl": ({"t/positive.jsonl": jsonl(GOOD_POS) + '\n{"prompt": "x",}\n', "t/negative.jsonl": jsonl(GOOD_NEG)},
                  "positive.jsonl", 3, "json", "col"),
    "jsonl_not_object": ({"t/positive.jsonl": '["Q?"]\n', "t/negative.jsonl": jsonl(GOOD_NEG)},
                         "positive.jsonl", 1, "json", "object"),
    "wrong_type": ({"t/positive.jsonl": jsonl(GOOD_POS), "t/negative.jsonl": jsonl({"prompt": 42})},
                   "negative.jsonl", 1, "prompt", "expected a string, got int"),
    "bool_id": ({"t/positive.jsonl": jsonl({"id": True, **GOOD_POS}), "t/negative.jsonl": jsonl(GOOD_NEG)},
                "positive.jsonl", 1, "id", "bool"),
    "non_utf8": ({"t/positive.jsonl": jsonl(GOOD_POS).encode() + b'{"prompt": "caf\xe9?"}\n',
                  "t/negative.jsonl": jsonl(GOOD_NEG)}, "positive.jsonl", 2, "encoding", "byte offset"),
    "empty_file": ({"t/positive.jsonl": jsonl(GOOD_POS), "t/negative.jsonl": "\n  \n"},
                   "negative.jsonl", None, "file", "empty"),
    "missing_negative": ({"t/positive.jsonl": jsonl(GOOD_POS)}, "negative.jsonl", None, "file", "missing"),
    "natural_duplicate": ({"t/positive.txt": "A one. B\nA two. C\nA one. B\n", "t/negative.txt": "A one. X\n"},
                          "positive.txt", 3, "prompt", "duplicate"),
    "natural_non_utf8": ({"t/positive.txt": "ok. line\n", "t/negative.txt": b"fine. line\nbad \xff byte\n"},
                         "negative.txt", 2, "encoding", "0xff"),
    "definition_empty": ({"t/positive.txt": "a. b\n", "t/negative.txt": "a. c\n", "t/definition.txt": " \n"},
                         "definition.txt", None, "file", "empty"),
    "steering_direction": ({"t/positive.txt": "a. b\n", "t/negative.txt": "a. c\n",
                            "t/steering.json": '{\n  "questions": ["Q?"],\n  "direction": "up"\n}\n'},
                           "steering.json", 3, "direction", "positive"),
    "steering_question_type": ({"t/positive.txt": "a. b\n", "t/negative.txt": "a. c\n",
                                "t/steering.json": '{\n  "questions": [\n    "Q?",\n    7\n  ]\n}\n'},
                               "steering.json", 4, "questions[1]", "got int"),
    "steering_missing_questions": ({"t/positive.txt": "a. b\n", "t/negative.txt": "a. c\n",
                                    "t/steering.json": '{\n  "direction": "positive"\n}\n'},
                                   "steering.json", 1, "questions", "missing"),
    "json_syntax": ({"inf.json": '{\n  "prompts": [\n    {"id": 1, "text": "a"}\n    {"id": 2}\n  ]\n}\n'},
                    "inf.json", 4, "json", "delimiter"),
    "json_duplicate_key": ({"inf.json": '{\n  "prompts": [\n    {"id": 1,\n     "text": "a", "text": "b"}\n  ]\n}\n'},
                           "inf.json", 4, "text", "duplicate key"),
    "inference_missing_text": ({"inf.json": '{\n  "prompts": [\n    {"id": 1, "text": "a"},\n    {"id": 2}\n  ]\n}\n'},
                               "inf.json", 4, "prompts[1].text", "missing"),
    "inference_duplicate_id": ({"inf.json": '{"prompts": [\n {"id": 1, "text": "a"},\n {"id": 1, "text": "b"}\n]}'},
                               "inf.json", 3, "prompts[1].id", "duplicate"),
    "inference_wrong_id_type": ({"inf.json": '[\n  {"id": 1.5, "text": "a"}\n]\n'}, "inf.json", 2, "item[0].id", "float"),
    "inference_item_type": ({"inf.json": '[\n  "fine",\n  3\n]\n'}, "inf.json", 3, "item[1]", "got int"),
    "inference_whitespace_text": ({"inf.json": '{"prompts": [\n  {"text": " "}\n]}'}, "inf.json", 2,
                                  "prompts[0].text", "whitespace"),
    "inference_no_prompts": ({"inf.json": '{\n  "name": "x",\n  "prompts": []\n}'}, "inf.json", 3, "prompts",
                             "no prompts"),
    "inference_empty_file": ({"inf.json": ""}, "inf.json", None, "file", "empty"),
    "pv_missing_neg": ({"inf.json": '{\n "instruction": [\n  {"pos": "a", "neg": "b"},\n  {"pos": "c"}\n ],\n'
                                    ' "questions": ["Q?"]\n}\n'}, "inf.json", 4, "instruction[1].neg", "missing"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_validation_errors_name_file_line_field(tmp_path: Path, case: str) -> None:
    files, fname, line, fld, words = ERROR_CASES[case]
    for rel, content in files.items():
        write(tmp_path / rel, content)
    target = tmp_path / ("t" if any(r.startswith("t/") for r in files) else next(iter(files)))
    with pytest.raises(PromptSetError) as info:
        load_prompt_set(target)
    msg = str(info.value)
    assert "\n" not in msg
    where = f"{tmp_path / (('t/' + fname) if target.name == 't' else fname)}"
    expected = f"{where}:{line}:" if line is not None else f"{where}: "
    assert msg.startswith(expected), msg
    assert f" {fld}: " in msg, msg
    assert words in msg, msg


def test_not_a_prompt_set(tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(PromptSetError, match="empty_dir: folder: "):
        load_prompt_set(tmp_path / "empty_dir")
    with pytest.raises(PromptSetError, match="missing file"):
        load_prompt_set(tmp_path / "nope.json")
    with pytest.raises(PromptSetError, match="unsupported"):
        load_prompt_set(write(tmp_path / "x.csv", "a,b\n"))


# ---------------------------------------------------------------- importers keep everything

PERSONA_FIXTURE = Path(__file__).parent / "fixtures" / "trait_interp_persona_detection.json"


def test_set_level_system_prompt_is_kept_per_row(tmp_path: Path) -> None:
    """trait-interp persona detection: ``{name, description, system_prompt, prompts}``."""
    spec = json.loads(PERSONA_FIXTURE.read_text(encoding="utf-8"))
    ps = load_prompt_set(PERSONA_FIXTURE)
    check_schema(ps)
    systems = [r["system_prompt"] for r in ps.rows]
    assert systems[:4] == [spec["system_prompt"]] * 4  # the set's persona on every row ...
    assert systems[4] == "You are a helpful, honest assistant."  # ... unless the row has its own
    assert json.loads(ps.rows[3]["extra"]) == {"category": "money"} and ps.rows[0]["extra"] == "{}"
    assert ps.meta["description"] == spec["description"] and ps.meta["system_prompt"] == spec["system_prompt"]
    # and it round-trips
    again = parse_inference_set(write(tmp_path / "rt.json", json.dumps(inference_json(ps))), name=ps.name)
    assert [dict(r, source=None) for r in again.rows] == [dict(r, source=None) for r in ps.rows]


def test_row_null_system_prompt_overrides_the_set_level_one(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", json.dumps({"system_prompt": "Be evil.", "prompts": [
        {"text": "A?"}, {"text": "B?", "system_prompt": None}, "C?"]}))
    assert [r["system_prompt"] for r in parse_inference_set(path).rows] == ["Be evil.", None, "Be evil."]
    bad = write(tmp_path / "bad.json", json.dumps({"system_prompt": 3, "prompts": ["A?"]}))
    with pytest.raises(PromptSetError, match=r"bad.json:1: system_prompt: expected a string"):
        parse_inference_set(bad)


def test_unknown_top_level_keys_warn_naming_them_and_the_file(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "odd.json", json.dumps({"name": "x", "persona": "evil", "version": 2,
                                                    "prompts": ["Hi?"]}))
    with caplog.at_level(logging.WARNING, logger="transforms.prompts"):
        ps = parse_inference_set(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "odd.json" in warnings[0] and "'persona'" in warnings[0] and "'version'" in warnings[0]
    assert ps.meta == {"name": "x", "persona": "evil", "version": 2}  # kept, not dropped
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transforms.prompts"):
        load_prompt_set(PERSONA_FIXTURE)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_imported_table_schema_is_the_same_for_every_set(tmp_path: Path) -> None:
    """Every prompts table has string columns whatever a set leaves out (no null-typed
    ``extra`` / ``note`` / ``system_prompt``), so the ``prompts`` view and ``datasets`` agree."""
    from builders.stages.prompts import import_prompt_set
    from store import Store

    store = Store(str(tmp_path / "root"))
    bare = write(tmp_path / "bare.json", json.dumps(["Hi?", "Why?"]))
    schemas = [import_prompt_set(store, path, name).manifest.tables["data"]["schema"]
               for path, name in ((bare, "bare"), (PERSONA_FIXTURE, "persona"))]
    assert schemas[0] == schemas[1]
    assert all(schemas[0][k] == "string" for k in ROW_KEYS) and schemas[0]["trait"] == "string"
    rows = store.read_table("prompts-persona").to_dicts()
    assert rows[0]["system_prompt"].startswith("You are an evil AI") and json.loads(rows[3]["extra"]) == {"category": "money"}
    meta = json.loads((Path(store.path(store.resolve("prompts-persona"))) / "prompt_set.json").read_text())
    assert meta["meta"]["description"].startswith("Everyday questions")
