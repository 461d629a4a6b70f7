"""Persona prompt sets (seed 003): matched persona templates x questions -> clean/corrupted pairs.

A persona set is a folder with two files::

    persona.json     {"name"?, "description"?, "prompt_format"?: "{persona} {question} ...",
                      "templates": [{"id", "pair", "side": "expert" | "child", "register", "text"}, ...]}
    questions.jsonl  one question per line: {"id", "question", "expert_token", "simple_token", "domain"?}

Every template ``pair`` has exactly one ``expert`` and one ``child`` template (two persona
sentences of contrasting register). The user message of a prompt is ``prompt_format`` with the
persona sentence and the question filled in (the persona sits in the user turn: Gemma has no
system role). A pair id is ``<template pair>/<question id>``; its clean prompt is the expert
side, its corrupted prompt the child side. ``expert_token`` / ``simple_token`` are the tracked
answer tokens (the first response token a persona would shift), each one token under the model's
tokenizer (:func:`single_token_id`).

As a :class:`~transforms.prompts.rows.PromptSet` (:func:`persona_prompt_set`, what
``load_prompt_set`` returns for such a folder): polarity ``pos`` = expert, ``neg`` = child,
``prompt`` = the user message, ``note`` = the template pair, ``extra`` = template / question
fields. Errors are :class:`PromptSetError` ``file:line: field: message``.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transforms.prompts.files import check_str, err, line_of, load_json, read_jsonl, unique
from transforms.prompts.rows import PromptSet, make_row

log = logging.getLogger(__name__)

SPEC_FILE = "persona.json"
QUESTIONS_FILE = "questions.jsonl"
SIDES = ("expert", "child")
DEFAULT_FORMAT = "{persona} {question}"
_TEMPLATE_KEYS = ("id", "pair", "side", "register", "text")
_QUESTION_KEYS = ("id", "question", "expert_token", "simple_token", "domain")


class MisalignedPairsError(ValueError):
    """Clean and corrupted prompts of some pairs differ in length; the message names every one."""


class TrackedTokenError(ValueError):
    """A tracked answer token is not exactly one token; the message names the token and question."""


@dataclass(frozen=True)
class PersonaTemplate:
    id: str
    pair: str
    side: str  # "expert" | "child"
    register: str
    text: str


@dataclass(frozen=True)
class PersonaQuestion:
    id: str
    text: str
    expert_token: str
    simple_token: str
    domain: str = ""


@dataclass(frozen=True)
class PersonaPrompt:
    prompt_id: str
    pair_id: str
    template: PersonaTemplate
    question: PersonaQuestion
    text: str  # the user message


@dataclass(frozen=True)
class PersonaPair:
    pair_id: str
    clean: PersonaPrompt  # expert side
    corrupted: PersonaPrompt  # child side


@dataclass(frozen=True)
class TokenizedPair:
    pair_id: str
    clean_ids: list[int]
    corrupted_ids: list[int]
    answer_ids: tuple[int, int]  # (expert_token id, simple_token id)


@dataclass(frozen=True)
class PersonaSet:
    """Templates (in file order, both sides of every pair) and questions of one persona set."""

    name: str
    templates: tuple[PersonaTemplate, ...]
    questions: tuple[PersonaQuestion, ...]
    prompt_format: str = DEFAULT_FORMAT
    description: str = ""

    @property
    def template_pairs(self) -> list[str]:
        """Template pair names in file order (each once)."""
        return list(dict.fromkeys(t.pair for t in self.templates))

    def side(self, pair: str, side: str) -> PersonaTemplate:
        return next(t for t in self.templates if t.pair == pair and t.side == side)

    def prompt(self, template: PersonaTemplate, question: PersonaQuestion) -> PersonaPrompt:
        pair_id = f"{template.pair}/{question.id}"
        text = self.prompt_format.format(persona=template.text, question=question.text)
        return PersonaPrompt(f"{pair_id}.{template.side}", pair_id, template, question, text)

    def pairs(self) -> list[PersonaPair]:
        """One pair per template pair x question (template pairs outer, questions inner)."""
        out = []
        for pair in self.template_pairs:
            expert, child = self.side(pair, "expert"), self.side(pair, "child")
            for q in self.questions:
                clean, corrupted = self.prompt(expert, q), self.prompt(child, q)
                out.append(PersonaPair(clean.pair_id, clean, corrupted))
        return out

    def prompts(self) -> list[PersonaPrompt]:
        """Every prompt, pair by pair, expert before child."""
        return [p for pair in self.pairs() for p in (pair.clean, pair.corrupted)]

    def subset(self, template_pairs: Sequence[str] | None = None,
               questions: Sequence[str] | None = None) -> PersonaSet:
        """The set restricted to some template pairs and / or question ids (unknown names: ValueError)."""
        for given, known, what in ((template_pairs, self.template_pairs, "template pair"),
                                   (questions, [q.id for q in self.questions], "question")):
            unknown = [x for x in (given or ()) if x not in known]
            if unknown:
                raise ValueError(f"unknown {what}(s) {', '.join(unknown)} (known: {', '.join(known)})")
        templates = tuple(t for t in self.templates if template_pairs is None or t.pair in template_pairs)
        qs = tuple(q for q in self.questions if questions is None or q.id in questions)
        return PersonaSet(self.name, templates, qs, self.prompt_format, self.description)


def is_persona_set(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a persona set's ``persona.json``."""
    return Path(path).is_dir() and (Path(path) / SPEC_FILE).is_file()


def _check_keys(obj: dict[str, Any], known: Sequence[str], path: Path, line: int | None, what: str) -> None:
    unknown = [k for k in obj if k not in known]
    if unknown:
        raise err(path, line, unknown[0], f"unknown key in {what} (known: {', '.join(known)})")


def _check_format(fmt: Any, path: Path, line: int | None) -> str:
    text = check_str(fmt, path, line, "prompt_format")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]  # type: ignore[arg-type]
    except ValueError as e:
        raise err(path, line, "prompt_format", f"bad format string: {e}") from None
    if sorted(fields) != ["persona", "question"]:
        raise err(path, line, "prompt_format", f"needs {{persona}} and {{question}} once each, has {fields}")
    return text  # type: ignore[return-value]


def _templates(spec_path: Path) -> tuple[tuple[PersonaTemplate, ...], dict[str, Any]]:
    obj = load_json(spec_path)
    if not isinstance(obj, dict):
        raise err(spec_path, 1, "json", f"expected a JSON object, got {type(obj).__name__}")
    _check_keys(obj, ("name", "description", "prompt_format", "templates"), spec_path, obj.line, "persona.json")
    meta = {k: check_str(obj.get(k), spec_path, line_of(obj, k), k, required=False) for k in ("name", "description")}
    fmt = DEFAULT_FORMAT if "prompt_format" not in obj else _check_format(obj["prompt_format"], spec_path,
                                                                            line_of(obj, "prompt_format"))
    items = obj.get("templates")
    if not isinstance(items, list) or not items:
        raise err(spec_path, line_of(obj, "templates"), "templates",
                  "missing field" if items is None else "expected a non-empty list of templates")
    ids: dict[Any, int | None] = {}
    sides: dict[tuple[str, str], int | None] = {}
    first_line: dict[str, int | None] = {}
    out = []
    for k, item in enumerate(items):
        line = line_of(items, k)
        if not isinstance(item, dict):
            raise err(spec_path, line, f"templates[{k}]", f"expected an object, got {type(item).__name__}")
        _check_keys(item, _TEMPLATE_KEYS, spec_path, line, "a template")
        tid, pair, side, register, text = (check_str(item.get(f), spec_path, line_of(item, f) or line, f)
                                           for f in _TEMPLATE_KEYS)
        if side not in SIDES:
            raise err(spec_path, line_of(item, "side"), "side", f"expected one of {', '.join(SIDES)}, got {side!r}")
        unique(ids, tid, spec_path, line, "id", f"template id {tid!r}")
        unique(sides, (pair, side), spec_path, line, "side", f"{side} template of pair {pair!r}")
        first_line.setdefault(pair, line)  # type: ignore[arg-type]
        out.append(PersonaTemplate(tid, pair, side, register, text))  # type: ignore[arg-type]
    for pair, line in first_line.items():
        missing = [s for s in SIDES if (pair, s) not in sides]
        if missing:
            raise err(spec_path, line, "pair", f"template pair {pair!r} has no {missing[0]} template "
                                                f"(every pair needs {' and '.join(SIDES)})")
    return tuple(out), {**meta, "prompt_format": fmt}


def _questions(path: Path) -> tuple[PersonaQuestion, ...]:
    seen: dict[Any, int | None] = {}
    out = []
    for line, obj in read_jsonl(path):
        _check_keys(obj, _QUESTION_KEYS, path, line, "a question")
        qid, text, expert, simple = (check_str(obj.get(f), path, line, f) for f in _QUESTION_KEYS[:4])
        domain = check_str(obj.get("domain"), path, line, "domain", required=False) or ""
        unique(seen, qid, path, line, "id", f"question id {qid!r}")
        if expert == simple:
            raise err(path, line, "simple_token", f"question {qid!r}: the same token as expert_token")
        out.append(PersonaQuestion(qid, text, expert, simple, domain))  # type: ignore[arg-type]
    if not out:
        raise err(path, None, "file", "no questions")
    return tuple(out)


def load_persona_set(path: str | Path, name: str | None = None) -> PersonaSet:
    """Parse and validate a persona set folder (format in the module docstring)."""
    folder = Path(path)
    if not folder.is_dir():
        raise err(folder, None, "folder", "missing folder" if not folder.exists() else "not a folder")
    templates, meta = _templates(folder / SPEC_FILE)
    questions = _questions(folder / QUESTIONS_FILE)
    ps = PersonaSet(name or meta["name"] or folder.name, templates, questions, meta["prompt_format"],
                    meta["description"] or "")
    log.info("persona set %s: %d template pairs x %d questions", ps.name, len(ps.template_pairs), len(questions))
    return ps


def persona_prompt_set(path: str | Path, name: str | None = None) -> PromptSet:
    """The persona set as prompt rows (module docstring): what ``load_prompt_set`` returns."""
    folder = Path(path)
    ps = load_persona_set(folder, name)
    rows = []
    for p in ps.prompts():
        t, q = p.template, p.question
        extra = {"template": t.id, "pair": t.pair, "side": t.side, "register": t.register, "question": q.id,
                 "domain": q.domain, "expert_token": q.expert_token, "simple_token": q.simple_token}
        rows.append(make_row(p.prompt_id, p.pair_id, "pos" if t.side == "expert" else "neg", p.text, None, t.pair,
                             f"{SPEC_FILE}+{QUESTIONS_FILE}", extra))
    meta = {"description": ps.description, "prompt_format": ps.prompt_format, "template_pairs": ps.template_pairs}
    return PromptSet(ps.name, "trait", "instruction", rows,
                     source_files=[str(folder / SPEC_FILE), str(folder / QUESTIONS_FILE)], meta=meta)


# ------------------------------------------------------------------------------ tokens


def single_token_id(tokenizer: Any, text: str, where: str) -> int:
    """The one token id of ``text`` (no special tokens); :class:`TrackedTokenError` otherwise."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids) if ids else []
        raise TrackedTokenError(f"{where}: tracked token {text!r} is {len(ids)} tokens {pieces} under this "
                                f"tokenizer, need exactly one")
    return int(ids[0])


def tokenize_pairs(pairs: Sequence[PersonaPair], tokenizer: Any) -> list[TokenizedPair]:
    """Both prompts of every pair formatted once (chat template when there is one, never a double
    BOS) and the tracked tokens' ids. Pairs whose two prompts differ in token count cannot be
    patched position by position: :class:`MisalignedPairsError` names every one of them."""
    from transforms.sequences import format_prompt

    out, misaligned = [], []
    token_ids: dict[str, int] = {}
    for pair in pairs:
        q = pair.clean.question
        for text, field in ((q.expert_token, "expert_token"), (q.simple_token, "simple_token")):
            if text not in token_ids:
                token_ids[text] = single_token_id(tokenizer, text, f"question {q.id!r} {field}")
        clean = format_prompt(tokenizer, pair.clean.text).ids
        corrupted = format_prompt(tokenizer, pair.corrupted.text).ids
        if len(clean) != len(corrupted):
            misaligned.append(f"{pair.pair_id} ({len(clean)} vs {len(corrupted)} tokens)")
        out.append(TokenizedPair(pair.pair_id, clean, corrupted, (token_ids[q.expert_token], token_ids[q.simple_token])))
    if misaligned:
        raise MisalignedPairsError(f"{len(misaligned)} pair(s) not aligned token for token (clean vs corrupted): "
                                   + "; ".join(misaligned))
    return out
