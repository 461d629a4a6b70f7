"""Trait datasets -> :class:`~transforms.prompts.rows.PromptSet`: trait-interp instruction
dirs (positive/negative ``.jsonl``), natural dirs (positive/negative ``.txt``) and
persona_vectors ``<trait>.json`` files, each with optional definition and steering
questions. Row contents and pairing rules: :mod:`transforms.prompts.sets`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from transforms.prompts.files import (
    check_id,
    check_str,
    err,
    line_of,
    load_json,
    read_jsonl,
    read_lines,
    read_text,
    short,
    unique,
)
from transforms.prompts.rows import PromptRow, PromptSet, content_id, make_row

log = logging.getLogger(__name__)

DIRECTIONS = ("positive", "negative")
_SIDES = {"pos": "positive", "neg": "negative"}
_SENTENCE_RE = re.compile(r"(.+?[.!?][\"'\u201d\u2019)\]]*)(?=\s|$)")


def _parse_steering(obj: Any, path: Path) -> dict[str, Any]:
    """Validate a steering spec: non-empty unique ``questions``, optional direction / eval_prompt."""
    if not isinstance(obj, dict):
        raise err(path, line_of(obj, None), "json", f"expected a JSON object, got {type(obj).__name__}")
    questions = obj.get("questions")
    if not isinstance(questions, list) or not questions:
        problem = "missing field" if questions is None else "expected a non-empty list of strings"
        raise err(path, line_of(obj, "questions"), "questions", problem)
    seen: dict[Any, int | None] = {}
    for j, q in enumerate(questions):
        check_str(q, path, line_of(questions, j), f"questions[{j}]")
        unique(seen, q, path, line_of(questions, j), f"questions[{j}]", "question")
    direction = obj.get("direction", "positive")
    if direction not in DIRECTIONS:
        raise err(path, line_of(obj, "direction"), "direction",
                   f"expected 'positive' or 'negative', got {short(direction)}")
    eval_prompt = check_str(obj.get("eval_prompt"), path, line_of(obj, "eval_prompt"), "eval_prompt",
                             required=False)
    rest = {k: v for k, v in obj.items() if k not in ("questions", "direction", "eval_prompt", "instruction")}
    return {**rest, "questions": list(questions), "direction": direction, "eval_prompt": eval_prompt,
            "source": path.name}


def _trait_extras(folder: Path, ext: str) -> tuple[str | None, dict[str, Any] | None, list[str]]:
    """(definition.txt text, parsed steering.json, files present) of a trait dir; both optional."""
    definition = steering = None
    if (folder / "definition.txt").exists():
        definition = read_text(folder / "definition.txt").strip()
    if (folder / "steering.json").exists():
        steering = _parse_steering(load_json(folder / "steering.json"), folder / "steering.json")
    names = [f"positive{ext}", f"negative{ext}", "definition.txt", "steering.json", "lexicon.txt"]
    return definition, steering, [str(folder / n) for n in names if (folder / n).exists()]


def _trait_name(folder: Path, name: str | None) -> str:
    """Default trait name: ``<style dir>/<trait dir>``, e.g. ``pv_instruction/sycophancy``."""
    return name or (f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name)


def parse_instruction_trait(folder: str | Path, name: str | None = None) -> PromptSet:
    """Parse a trait-interp instruction trait dir (positive/negative.jsonl, definition, steering).

    Each JSONL line needs ``prompt`` (usually with ``system_prompt``); optional ``id``,
    ``pair_id``, ``note``; other fields go to ``extra``. Pairing key: the ``pair_id``
    field, else the ``id`` field, else the prompt text; every key must occur equally
    often in both files, otherwise the line is "unpaired".
    """
    folder = Path(folder)
    rows: list[PromptRow] = []
    groups: dict[str, dict[tuple[str, str], list[int]]] = {"pos": {}, "neg": {}}
    for pol, side in _SIDES.items():
        path = folder / f"{side}.jsonl"
        seen: dict[Any, int | None] = {}
        for line, obj in read_jsonl(path):
            prompt = check_str(obj.get("prompt"), path, line, "prompt")
            system = check_str(obj.get("system_prompt"), path, line, "system_prompt", required=False)
            note = check_str(obj.get("note"), path, line, "note", required=False)
            given_id = check_id(obj.get("id"), path, line, "id")
            given_pair = check_id(obj.get("pair_id"), path, line, "pair_id")
            prompt_id = f"{pol}-{given_id}" if given_id is not None else content_id(pol, system, prompt)
            if given_id is not None:
                unique(seen, prompt_id, path, line, "id", f"id {given_id!r}")
            else:
                unique(seen, prompt_id, path, line, "prompt", "prompt + system_prompt")
            if given_pair is not None:
                key, pair_id = ("pair_id", given_pair), given_pair
            elif given_id is not None:
                key, pair_id = ("id", given_id), given_id
            else:
                key, pair_id = ("prompt", prompt), content_id("pair", prompt)
            groups[pol].setdefault(key, []).append(line)  # type: ignore[arg-type]
            extra = {k: v for k, v in obj.items() if k not in ("prompt", "system_prompt", "note", "id", "pair_id")}
            rows.append(make_row(prompt_id, pair_id, pol, prompt, system, note, f"{path.name}:{line}", extra))
    for pol, other in (("pos", "neg"), ("neg", "pos")):
        for (by, value), lines in groups[pol].items():
            n_other = len(groups[other].get((by, value), []))
            if n_other != len(lines):
                problem = (f"has no line in {_SIDES[other]}.jsonl with the same {by}" if n_other == 0 else
                           f"occurs {len(lines)} times here but {n_other} times in {_SIDES[other]}.jsonl")
                path = folder / f"{_SIDES[pol]}.jsonl"
                raise err(path, lines[0], by, f"unpaired: {by} {short(value)} {problem}")
    ps = PromptSet(_trait_name(folder, name), "trait", "instruction", rows, *_trait_extras(folder, ".jsonl"))
    log.info("instruction trait %s: %d pos / %d neg rows, %d pair ids", ps.name, len(ps.select("pos")),
             len(ps.select("neg")), len({r["pair_id"] for r in rows}))
    return ps


def _leading_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to . ! or ? plus closing quotes), else all of it."""
    match = _SENTENCE_RE.match(text.strip())
    return match.group(1) if match else text.strip()


def parse_natural_trait(folder: str | Path, name: str | None = None) -> PromptSet:
    """Parse a trait-interp natural trait dir (positive/negative.txt: one prefix per line).

    Lines are kept verbatim (line ending removed, blank lines skipped); a duplicate line in
    a file is an error. A pos and a neg line are paired when they share a leading sentence
    that occurs exactly once on each side; other lines get ``pair_id`` None.
    """
    folder = Path(folder)
    sides: dict[str, list[tuple[int, str]]] = {}
    for pol, side in _SIDES.items():
        path = folder / f"{side}.txt"
        sides[pol] = read_lines(path)
        seen: dict[Any, int | None] = {}
        for line, text in sides[pol]:
            unique(seen, text, path, line, "prompt", "line")
        trailing = sum(1 for _, t in sides[pol] if t != t.rstrip())
        if trailing:
            log.warning("%s: %d lines end with whitespace (changes the next token)", path, trailing)
    counts = {pol: Counter(_leading_sentence(t) for _, t in lines) for pol, lines in sides.items()}
    rows: list[PromptRow] = []
    for pol, lines in sides.items():
        for line, text in lines:
            lead = _leading_sentence(text)
            pair_id = content_id("pair", lead) if counts["pos"][lead] == counts["neg"][lead] == 1 else None
            source = f"{_SIDES[pol]}.txt:{line}"
            rows.append(make_row(content_id(pol, None, text), pair_id, pol, text, None, None, source))
    ps = PromptSet(_trait_name(folder, name), "trait", "natural", rows, *_trait_extras(folder, ".txt"))
    n_pairs = sum(1 for r in ps.select("pos") if r["pair_id"] is not None)
    log.info("natural trait %s: %d pos / %d neg lines, %d paired by leading sentence", ps.name,
             len(sides["pos"]), len(sides["neg"]), n_pairs)
    return ps


def parse_persona_vectors_trait(path: str | Path, name: str | None = None) -> PromptSet:
    """Parse a persona_vectors ``data_generation/trait_data_extract/<trait>.json``.

    ``{"instruction": [{"pos", "neg"}, ...], "questions": [...], "eval_prompt": ...}``
    expands to instruction pairs x questions: per (i, j) a pos row (system =
    ``instruction[i].pos``, prompt = ``questions[j]``) and a neg row sharing its pair_id.
    The questions and ``eval_prompt`` (the judge prompt) also form ``steering``.
    """
    path = Path(path)
    obj = load_json(path)
    steering = _parse_steering(obj, path)
    instructions = obj.get("instruction")
    if not isinstance(instructions, list) or not instructions:
        problem = "missing field" if instructions is None else "expected a non-empty list of {pos, neg}"
        raise err(path, line_of(obj, "instruction"), "instruction", problem)
    pairs: list[tuple[str, str]] = []
    seen: dict[Any, int | None] = {}
    for i, inst in enumerate(instructions):
        line = line_of(instructions, i)
        if not isinstance(inst, dict):
            raise err(path, line, f"instruction[{i}]", f"expected an object, got {type(inst).__name__}")
        pos, neg = (check_str(inst.get(k), path, line_of(inst, k), f"instruction[{i}].{k}")
                    for k in ("pos", "neg"))
        unique(seen, (pos, neg), path, line, f"instruction[{i}]", "instruction pair")
        pairs.append((pos, neg))  # type: ignore[arg-type]
    rows: list[PromptRow] = []
    for i, (pos, neg) in enumerate(pairs):
        for j, question in enumerate(steering["questions"]):
            pair_id = content_id("pair", pos, neg, question)
            for pol, system in (("pos", pos), ("neg", neg)):
                rows.append(make_row(content_id(pol, system, question), pair_id, pol, question, system, None,
                                 f"{path.name}:instruction[{i}].{pol}+questions[{j}]"))
    ps = PromptSet(name or path.stem, "trait", "instruction", rows, None, steering, [str(path)])
    log.info("persona_vectors trait %s: %d instruction pairs x %d questions", ps.name, len(pairs),
             len(steering["questions"]))
    return ps
