"""Persona prompt sets (seed 003): the shipped data, the loader's one-line errors, and tokenized pairs
(aligned token for token under both packaged tokenizers, tracked tokens one token each)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from transforms.prompts import PromptSetError, load_prompt_set
from transforms.prompts.persona import (MisalignedPairsError, TrackedTokenError, is_persona_set, load_persona_set,
                                        single_token_id, tokenize_pairs)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "persona"

TEMPLATES = [
    {"id": "prof.expert", "pair": "prof", "side": "expert", "register": "academic", "text": "You are a professor."},
    {"id": "prof.child", "pair": "prof", "side": "child", "register": "childlike", "text": "You are a toddler."},
    {"id": "eng.expert", "pair": "eng", "side": "expert", "register": "technical", "text": "You are an engineer."},
    {"id": "eng.child", "pair": "eng", "side": "child", "register": "playful", "text": "You are a kid."},
]
QUESTIONS = [
    {"id": "sun", "question": "What makes the sun shine?", "expert_token": "Nuclear", "simple_token": "Fire"},
    {"id": "money", "question": "Why does a bank pay you?", "expert_token": "Interest", "simple_token": "Because"},
]


def write_set(folder: Path, templates=TEMPLATES, questions=QUESTIONS, **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "mini", **top, "templates": templates}
    # one template per line, so the loader's line numbers are checkable
    body = ",\n".join("    " + json.dumps(t) for t in templates)
    head = json.dumps({k: v for k, v in spec.items() if k != "templates"})[:-1]
    (folder / "persona.json").write_text(head + (", " if len(spec) > 1 else "") + '"templates": [\n' + body + "\n]}\n")
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return folder


@pytest.fixture(scope="module")
def tokenizers():
    from transforms.models import load_tokenizer

    return {"smollm2": load_tokenizer("pkg:smollm2-135m-instruct"), "gemma3": load_tokenizer("pkg:gemma3-270m")}


def test_shipped_set_shape_and_pairs():
    ps = load_persona_set(DATA)
    assert is_persona_set(DATA) and ps.name == "persona"
    assert len(ps.template_pairs) >= 6 and len(ps.questions) >= 20
    for pair in ps.template_pairs:  # exactly one template per side
        assert sorted(t.side for t in ps.templates if t.pair == pair) == ["child", "expert"]
    assert len({q.domain for q in ps.questions}) >= 4
    pairs = ps.pairs()
    assert len(pairs) == len(ps.template_pairs) * len(ps.questions)
    assert len({p.pair_id for p in pairs}) == len(pairs)
    for p in pairs:
        assert p.pair_id == f"{p.clean.template.pair}/{p.clean.question.id}"
        assert (p.clean.template.side, p.corrupted.template.side) == ("expert", "child")
        assert p.clean.question == p.corrupted.question
        # the persona sentence comes first in the user message, the question after it
        for prompt in (p.clean, p.corrupted):
            assert prompt.text.startswith(prompt.template.text + " ")
            assert prompt.question.text in prompt.text[len(prompt.template.text):]
    assert [p.prompt_id for p in ps.prompts()][:2] == [pairs[0].clean.prompt_id, pairs[0].corrupted.prompt_id]


def test_load_prompt_set_rows_and_catalog():
    from builders.shared.catalog import load_catalog

    ps = load_persona_set(DATA)
    rows = load_prompt_set(DATA).rows
    assert len(rows) == 2 * len(ps.pairs())
    by_id = {r["prompt_id"]: r for r in rows}
    for pair in ps.pairs():
        pos, neg = by_id[pair.clean.prompt_id], by_id[pair.corrupted.prompt_id]
        assert (pos["polarity"], neg["polarity"]) == ("pos", "neg")
        assert pos["pair_id"] == neg["pair_id"] == pair.pair_id
        assert (pos["prompt"], neg["prompt"]) == (pair.clean.text, pair.corrupted.text)
        assert pos["system_prompt"] is None
        assert json.loads(pos["extra"])["expert_token"] == pair.clean.question.expert_token
    assert Path(load_catalog().prompt_set("persona").path).resolve() == DATA.resolve()


def test_subset_and_unknown_names():
    ps = load_persona_set(DATA)
    sub = ps.subset([ps.template_pairs[0]], [ps.questions[0].id])
    assert len(sub.pairs()) == 1
    with pytest.raises(ValueError, match="nope"):
        ps.subset(["nope"])


@pytest.mark.parametrize("mutate, where, needle", [
    (lambda t, q: t[1].pop("side"), "persona.json:3", "side: missing field"),
    (lambda t, q: t[1].update(side="teen"), "persona.json:3", "expected one of expert, child"),
    (lambda t, q: t.pop(1), "persona.json:2", "template pair 'prof' has no child template"),
    (lambda t, q: t[3].update(id="prof.expert"), "persona.json:5", "duplicate template id"),
    (lambda t, q: t[2].update(side="child"), "persona.json:5", "duplicate child template of pair 'eng'"),
    (lambda t, q: q[1].pop("simple_token"), "questions.jsonl:2", "simple_token: missing field"),
    (lambda t, q: q[1].update(id="sun"), "questions.jsonl:2", "duplicate question id"),
    (lambda t, q: q[0].update(simple_token="Nuclear"), "questions.jsonl:1", "same token as expert_token"),
    (lambda t, q: q[0].update(colour="red"), "questions.jsonl:1", "colour: unknown key"),
])
def test_bad_files_one_line(tmp_path, mutate, where, needle):
    templates, questions = json.loads(json.dumps(TEMPLATES)), json.loads(json.dumps(QUESTIONS))
    mutate(templates, questions)
    folder = write_set(tmp_path / "bad", templates, questions)
    with pytest.raises(PromptSetError) as info:
        load_persona_set(folder)
    message = str(info.value)
    assert "\n" not in message and where in message and needle in message, message
    with pytest.raises(PromptSetError):  # the generic entry point says the same
        load_prompt_set(folder)


def test_bad_prompt_format(tmp_path):
    with pytest.raises(PromptSetError, match="prompt_format"):
        load_persona_set(write_set(tmp_path / "f", prompt_format="{persona} only"))
    ps = load_persona_set(write_set(tmp_path / "g", prompt_format="{persona} Q: {question} A:"))
    assert ps.pairs()[0].clean.text == "You are a professor. Q: What makes the sun shine? A:"


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_shipped_pairs_align_under_both_tokenizers(tokenizers, name):
    from transforms.sequences import format_prompt

    tok = tokenizers[name]
    ps = load_persona_set(DATA)
    tokenized = tokenize_pairs(ps.pairs(), tok)
    assert len(tokenized) == len(ps.pairs())
    for t, pair in zip(tokenized, ps.pairs()):
        assert len(t.clean_ids) == len(t.corrupted_ids)
        assert t.clean_ids == format_prompt(tok, pair.clean.text).ids  # the one formatting path
        q = pair.clean.question
        assert t.answer_ids == tuple(tok.encode(x, add_special_tokens=False)[0] for x in (q.expert_token, q.simple_token))
        # the two prompts differ only inside the persona sentence: the question tail is shared
        diff = [i for i, (a, b) in enumerate(zip(t.clean_ids, t.corrupted_ids)) if a != b]
        assert diff and diff[-1] < len(t.clean_ids) - len(tok.encode(q.text, add_special_tokens=False))
        bos = tok.bos_token_id
        assert not (bos is not None and t.clean_ids[:2] == [bos, bos])


def test_misaligned_pairs_named_all(tmp_path, tokenizers):
    templates = json.loads(json.dumps(TEMPLATES))
    templates[1]["text"] = "You are a very small toddler who plays all day."  # longer than its expert side
    templates[3]["text"] = "You are a kid who loves to jump and run around."
    ps = load_persona_set(write_set(tmp_path / "m", templates))
    with pytest.raises(MisalignedPairsError) as info:
        tokenize_pairs(ps.pairs(), tokenizers["smollm2"])
    message = str(info.value)
    assert "\n" not in message and message.startswith("4 pair(s)")
    for pair in ps.pairs():
        assert pair.pair_id in message


def test_multi_token_tracked_token(tmp_path, tokenizers):
    questions = json.loads(json.dumps(QUESTIONS))
    questions[1]["expert_token"] = "Photosynthesis"  # two tokens under both tokenizers
    ps = load_persona_set(write_set(tmp_path / "t", questions=questions))
    for tok in tokenizers.values():
        with pytest.raises(TrackedTokenError, match="question 'money' expert_token: tracked token 'Photosynthesis'"):
            tokenize_pairs(ps.pairs(), tok)
    assert single_token_id(tokenizers["smollm2"], "Fire", "x") == tokenizers["smollm2"].encode("Fire")[0]
