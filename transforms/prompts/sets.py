"""Prompt-set parsing and validation: trait datasets and inference sets -> rows.

Pure functions over files (no store, no model). Every format becomes a :class:`PromptSet`
whose ``rows`` all have the :data:`ROW_KEYS` (``None`` where absent): ``prompt_id`` (stable:
an explicit id from the file, ``"pos-3"``/``"neg-3"`` in trait sets, else 12 hex of
sha256(polarity, system prompt, prompt); never a line position), ``pair_id`` (shared by the
pos and neg rows of one contrast), ``polarity`` ("pos"/"neg"/None), ``prompt`` (user text or
natural prefix), ``system_prompt``, ``note``, ``source`` (``positive.jsonl:12``), ``extra``
(the item's other fields as a JSON object string, ``"{}"`` when none: always a string, so
every stored table has the same schema, see :func:`arrow_schema`). Instruction rows pair by
an explicit ``pair_id``/``id`` field, else by the shared prompt text: a question asked under
several system prompts (persona_vectors style) is one pair group, since which pos system
prompt goes with which neg one is not recoverable from content. Natural rows pair by an exactly
shared leading sentence, else ``pair_id`` None.

Every problem raises :class:`PromptSetError` with a one-line message ``file:line: field:
message`` (``file:line:col: json: ...`` for JSON syntax, ``file: field: ...`` with no line);
reading files and those checks live in :mod:`transforms.prompts.files`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypedDict

if TYPE_CHECKING:
    import pyarrow as pa

from .files import (
    PromptSetError,
    err as _err,
    short as _short,
    typed as _typed,
    read_text as _read_text,
    unique as _unique,
    check_str as _check_str,
    check_id as _check_id,
    load_json as _load_json,
    line_of as _line_of,
    read_lines as _read_lines,
    read_jsonl as _read_jsonl,
)

log = logging.getLogger(__name__)

ROW_KEYS = ("prompt_id", "pair_id", "polarity", "prompt", "system_prompt", "note", "source", "extra")
# top-level keys of an inference-set object; others are kept in ``meta`` with a warning
INFERENCE_KEYS = ("name", "description", "system_prompt", "prompts")


class PromptRow(TypedDict):
    """One prompt, the same keys in every format (:data:`ROW_KEYS`)."""

    prompt_id: str
    pair_id: str | None
    polarity: str | None
    prompt: str
    system_prompt: str | None
    note: str | None
    source: str
    extra: str  # JSON object of the item's other fields, "{}" when none


def arrow_schema(more: Sequence[str] = ()) -> "pa.Schema":
    """The stored schema of prompt rows (plus string columns ``more``): every column a string,
    so a set with no notes or extras does not store null-typed columns another set lacks."""
    import pyarrow as pa

    return pa.schema([(key, pa.string()) for key in (*ROW_KEYS, *more)])


KINDS = ("trait", "inference")
STYLES = ("instruction", "natural", "inference")
DIRECTIONS = ("positive", "negative")
_SIDES = {"pos": "positive", "neg": "negative"}
_SENTENCE_RE = re.compile(r"(.+?[.!?][\"'\u201d\u2019)\]]*)(?=\s|$)")


@dataclass
class PromptSet:
    """A parsed prompt set: uniform ``rows`` plus trait definition / steering metadata.

    ``steering`` (trait sets): ``{"questions": [...], "direction": "positive"|"negative"
    (default "positive"), "eval_prompt": str|None, "source": file name, ...other keys}``.
    ``meta``: top-level extras of an inference file (its ``name``, ``description``, ...).
    """

    name: str
    kind: str
    style: str
    rows: list[PromptRow]
    definition: str | None = None
    steering: dict[str, Any] | None = None
    source_files: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def lexicon(self) -> str | None:
        """The trait dir's ``lexicon.txt`` text (for the lexicon judge), if it has one."""
        path = next((Path(f) for f in self.source_files if Path(f).name == "lexicon.txt"), None)
        return _read_text(path) if path is not None else None

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.style not in STYLES:
            raise ValueError(f"bad kind/style {self.kind!r}/{self.style!r}")
        if (self.kind == "inference") != (self.style == "inference"):
            raise ValueError(f"kind {self.kind!r} does not go with style {self.style!r}")

    def select(self, polarity: str | None) -> list[PromptRow]:
        """Rows with the given polarity ("pos", "neg", or None for inference rows)."""
        return [r for r in self.rows if r["polarity"] == polarity]


# ---------------------------------------------------------------- helpers


def _hash(*parts: str | None) -> str:
    joined = "\x1f".join("\x00" if p is None else p for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:12]


def _row(prompt_id: str, pair_id: str | None, polarity: str | None, prompt: str | None, system: str | None,
         note: str | None, source: str, extra: Mapping[str, Any] | None = None) -> PromptRow:
    extra_json = json.dumps(dict(extra or {}), sort_keys=True, ensure_ascii=False)
    return PromptRow(prompt_id=prompt_id, pair_id=pair_id, polarity=polarity, prompt=prompt,  # type: ignore[typeddict-item]
                     system_prompt=system, note=note, source=source, extra=extra_json)


def _parse_steering(obj: Any, path: Path) -> dict[str, Any]:
    """Validate a steering spec: non-empty unique ``questions``, optional direction / eval_prompt."""
    if not isinstance(obj, dict):
        raise _err(path, _line_of(obj, None), "json", f"expected a JSON object, got {type(obj).__name__}")
    questions = obj.get("questions")
    if not isinstance(questions, list) or not questions:
        problem = "missing field" if questions is None else "expected a non-empty list of strings"
        raise _err(path, _line_of(obj, "questions"), "questions", problem)
    seen: dict[Any, int | None] = {}
    for j, q in enumerate(questions):
        _check_str(q, path, _line_of(questions, j), f"questions[{j}]")
        _unique(seen, q, path, _line_of(questions, j), f"questions[{j}]", "question")
    direction = obj.get("direction", "positive")
    if direction not in DIRECTIONS:
        raise _err(path, _line_of(obj, "direction"), "direction",
                   f"expected 'positive' or 'negative', got {_short(direction)}")
    eval_prompt = _check_str(obj.get("eval_prompt"), path, _line_of(obj, "eval_prompt"), "eval_prompt",
                             required=False)
    rest = {k: v for k, v in obj.items() if k not in ("questions", "direction", "eval_prompt", "instruction")}
    return {**rest, "questions": list(questions), "direction": direction, "eval_prompt": eval_prompt,
            "source": path.name}


def _trait_extras(folder: Path, ext: str) -> tuple[str | None, dict[str, Any] | None, list[str]]:
    """(definition.txt text, parsed steering.json, files present) of a trait dir; both optional."""
    definition = steering = None
    if (folder / "definition.txt").exists():
        definition = _read_text(folder / "definition.txt").strip()
    if (folder / "steering.json").exists():
        steering = _parse_steering(_load_json(folder / "steering.json"), folder / "steering.json")
    names = [f"positive{ext}", f"negative{ext}", "definition.txt", "steering.json", "lexicon.txt"]
    return definition, steering, [str(folder / n) for n in names if (folder / n).exists()]


def _trait_name(folder: Path, name: str | None) -> str:
    """Default trait name: ``<style dir>/<trait dir>``, e.g. ``pv_instruction/sycophancy``."""
    return name or (f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name)


# ---------------------------------------------------------------- trait sets


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
        for line, obj in _read_jsonl(path):
            prompt = _check_str(obj.get("prompt"), path, line, "prompt")
            system = _check_str(obj.get("system_prompt"), path, line, "system_prompt", required=False)
            note = _check_str(obj.get("note"), path, line, "note", required=False)
            given_id = _check_id(obj.get("id"), path, line, "id")
            given_pair = _check_id(obj.get("pair_id"), path, line, "pair_id")
            prompt_id = f"{pol}-{given_id}" if given_id is not None else _hash(pol, system, prompt)
            if given_id is not None:
                _unique(seen, prompt_id, path, line, "id", f"id {given_id!r}")
            else:
                _unique(seen, prompt_id, path, line, "prompt", "prompt + system_prompt")
            if given_pair is not None:
                key, pair_id = ("pair_id", given_pair), given_pair
            elif given_id is not None:
                key, pair_id = ("id", given_id), given_id
            else:
                key, pair_id = ("prompt", prompt), _hash("pair", prompt)
            groups[pol].setdefault(key, []).append(line)  # type: ignore[arg-type]
            extra = {k: v for k, v in obj.items() if k not in ("prompt", "system_prompt", "note", "id", "pair_id")}
            rows.append(_row(prompt_id, pair_id, pol, prompt, system, note, f"{path.name}:{line}", extra))
    for pol, other in (("pos", "neg"), ("neg", "pos")):
        for (by, value), lines in groups[pol].items():
            n_other = len(groups[other].get((by, value), []))
            if n_other != len(lines):
                problem = (f"has no line in {_SIDES[other]}.jsonl with the same {by}" if n_other == 0 else
                           f"occurs {len(lines)} times here but {n_other} times in {_SIDES[other]}.jsonl")
                path = folder / f"{_SIDES[pol]}.jsonl"
                raise _err(path, lines[0], by, f"unpaired: {by} {_short(value)} {problem}")
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
        sides[pol] = _read_lines(path)
        seen: dict[Any, int | None] = {}
        for line, text in sides[pol]:
            _unique(seen, text, path, line, "prompt", "line")
        trailing = sum(1 for _, t in sides[pol] if t != t.rstrip())
        if trailing:
            log.warning("%s: %d lines end with whitespace (changes the next token)", path, trailing)
    counts = {pol: Counter(_leading_sentence(t) for _, t in lines) for pol, lines in sides.items()}
    rows: list[PromptRow] = []
    for pol, lines in sides.items():
        for line, text in lines:
            lead = _leading_sentence(text)
            pair_id = _hash("pair", lead) if counts["pos"][lead] == counts["neg"][lead] == 1 else None
            source = f"{_SIDES[pol]}.txt:{line}"
            rows.append(_row(_hash(pol, None, text), pair_id, pol, text, None, None, source))
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
    obj = _load_json(path)
    steering = _parse_steering(obj, path)
    instructions = obj.get("instruction")
    if not isinstance(instructions, list) or not instructions:
        problem = "missing field" if instructions is None else "expected a non-empty list of {pos, neg}"
        raise _err(path, _line_of(obj, "instruction"), "instruction", problem)
    pairs: list[tuple[str, str]] = []
    seen: dict[Any, int | None] = {}
    for i, inst in enumerate(instructions):
        line = _line_of(instructions, i)
        if not isinstance(inst, dict):
            raise _err(path, line, f"instruction[{i}]", f"expected an object, got {type(inst).__name__}")
        pos, neg = (_check_str(inst.get(k), path, _line_of(inst, k), f"instruction[{i}].{k}")
                    for k in ("pos", "neg"))
        _unique(seen, (pos, neg), path, line, f"instruction[{i}]", "instruction pair")
        pairs.append((pos, neg))  # type: ignore[arg-type]
    rows: list[PromptRow] = []
    for i, (pos, neg) in enumerate(pairs):
        for j, question in enumerate(steering["questions"]):
            pair_id = _hash("pair", pos, neg, question)
            for pol, system in (("pos", pos), ("neg", neg)):
                rows.append(_row(_hash(pol, system, question), pair_id, pol, question, system, None,
                                 f"{path.name}:instruction[{i}].{pol}+questions[{j}]"))
    ps = PromptSet(name or path.stem, "trait", "instruction", rows, None, steering, [str(path)])
    log.info("persona_vectors trait %s: %d instruction pairs x %d questions", ps.name, len(pairs),
             len(steering["questions"]))
    return ps


# ---------------------------------------------------------------- inference sets


def parse_inference_set(path: str | Path, name: str | None = None) -> PromptSet:
    """Parse an inference prompt set: ``{name?, description?, system_prompt?, prompts: [...]}``
    (trait-interp's inference and persona-detection files) or a bare list.

    Items are strings or objects ``{id?, text, note?, system_prompt?, ...}`` (other fields go
    to ``extra``). A set-level ``system_prompt`` applies to every item without its own key
    (an item's ``"system_prompt": null`` means none). ``prompt_id`` is ``str(id)`` when given,
    else a hash of the system prompt and text. The set is named ``name`` or the file stem;
    the file's top-level keys other than ``prompts`` go to ``meta``; unknown ones (not in
    :data:`INFERENCE_KEYS`) are kept there too, with a warning: no row carries them.
    """
    path = Path(path)
    obj = _load_json(path)
    meta: dict[str, Any] = {}
    set_system: str | None = None
    items, prefix = obj, "item"
    if isinstance(obj, dict):
        items, prefix = obj.get("prompts"), "prompts"
        if not isinstance(items, list):
            problem = "missing field" if items is None else f"expected a list, got {type(items).__name__}"
            raise _err(path, _line_of(obj, "prompts"), "prompts", problem)
        for key in ("name", "description"):
            _check_str(obj.get(key), path, _line_of(obj, key), key, required=False)
        set_system = _check_str(obj.get("system_prompt"), path, _line_of(obj, "system_prompt"), "system_prompt",
                                required=False)
        unknown = [k for k in obj if k not in INFERENCE_KEYS]
        if unknown:
            log.warning("%s: unknown top-level key(s) %s: kept in the set's metadata, not applied to rows "
                        "(known: %s)", path, ", ".join(map(repr, unknown)), ", ".join(INFERENCE_KEYS))
        meta = {k: v for k, v in obj.items() if k != "prompts"}
    elif not isinstance(obj, list):
        raise _err(path, 1, "json", f"expected an object with 'prompts' or a list, got {type(obj).__name__}")
    if not items:
        raise _err(path, _line_of(items, None), "prompts", "no prompts")
    rows: list[PromptRow] = []
    seen: dict[Any, int | None] = {}
    for k, item in enumerate(items):
        line, fld = _line_of(items, k), f"{prefix}[{k}]"
        if isinstance(item, str):
            item = {"text": item}
        elif not isinstance(item, dict):
            raise _err(path, line, fld, f"expected a string or an object, got {_typed(item)}")
        text = _check_str(item.get("text"), path, _line_of(item, "text") or line, f"{fld}.text")
        system = (_check_str(item["system_prompt"], path, line, f"{fld}.system_prompt", required=False)
                  if "system_prompt" in item else set_system)
        note = _check_str(item.get("note"), path, line, f"{fld}.note", required=False)
        given_id = _check_id(item.get("id"), path, _line_of(item, "id") or line, f"{fld}.id")
        prompt_id = given_id if given_id is not None else _hash(None, system, text)
        if given_id is not None:
            _unique(seen, prompt_id, path, line, f"{fld}.id", f"id {given_id!r}")
        else:
            _unique(seen, prompt_id, path, line, f"{fld}.text", "text")
        extra = {f: v for f, v in item.items() if f not in ("id", "text", "note", "system_prompt")}
        rows.append(_row(prompt_id, None, None, text, system, note, f"{path.name}:{line}", extra))
    ps = PromptSet(name or path.stem, "inference", "inference", rows, source_files=[str(path)], meta=meta)
    log.info("inference set %s: %d prompts", ps.name, len(rows))
    return ps


def combine_inference(sets: Sequence[PromptSet] | Mapping[str, PromptSet], name: str) -> PromptSet:
    """One inference set from several trait sets' steering questions (seed 001, step 4a).

    ``note`` is the trait: the mapping key, else the last part of ``PromptSet.name``.
    ``prompt_id`` is a content hash of note + question, so adding or reordering traits never
    renumbers prompts. Rows keep trait order, then question order. Write the result with
    :func:`inference_json`.
    """
    if isinstance(sets, Mapping):
        named = list(sets.items())
    else:
        named = [(s.name.rsplit("/", 1)[-1], s) for s in sets]
    if not named:
        raise PromptSetError(f"{name}: sets: nothing to combine")
    rows: list[PromptRow] = []
    seen: dict[str, str] = {}
    for trait, ps in named:
        if not ps.steering or not ps.steering.get("questions"):
            raise PromptSetError(f"{ps.name}: steering: no steering questions to combine")
        for j, question in enumerate(ps.steering["questions"]):
            source = f"{ps.name}/{ps.steering.get('source', 'steering.json')}:questions[{j}]"
            prompt_id = _hash("inference", trait, question)
            if prompt_id in seen:
                raise PromptSetError(f"{source}: questions[{j}]: duplicate question for note {trait!r} "
                                     f"(also {seen[prompt_id]})")
            seen[prompt_id] = source
            rows.append(_row(prompt_id, None, None, question, None, trait, source))
    files = sorted({f for _, ps in named for f in ps.source_files if f.endswith(".json")})
    meta = {"description": "steering questions of " + ", ".join(t for t, _ in named)}
    return PromptSet(name, "inference", "inference", rows, source_files=files, meta=meta)


def inference_json(ps: PromptSet) -> dict[str, Any]:
    """The inference-set JSON object for ``ps``; it round-trips through :func:`parse_inference_set`."""
    prompts = []
    for row in ps.rows:
        item: dict[str, Any] = {"id": row["prompt_id"], "text": row["prompt"]}
        # explicit per item (null too): a set-level system prompt in meta must not override it
        item.update({"system_prompt": row["system_prompt"]} if row["system_prompt"] is not None or
                    "system_prompt" in ps.meta else {})
        item.update({"note": row["note"]} if row["note"] is not None else {})
        item.update(json.loads(row["extra"]))
        prompts.append(item)
    return {"name": ps.name, **{k: v for k, v in ps.meta.items() if k != "name"}, "prompts": prompts}


# ---------------------------------------------------------------- dispatch


def load_prompt_set(path: str | Path, name: str | None = None) -> PromptSet:
    """Load any supported prompt set, detecting the format from what is at ``path``.

    A folder with positive/negative ``.jsonl`` -> instruction trait; with ``.txt`` ->
    natural trait; a ``.json`` object with ``instruction`` -> persona_vectors trait; any
    other ``.json`` (object with ``prompts``, or a list) -> inference set.
    """
    path = Path(path)
    if path.is_dir():
        present = {p.name for p in path.iterdir()}
        if present & {"positive.jsonl", "negative.jsonl"}:
            return parse_instruction_trait(path, name)
        if present & {"positive.txt", "negative.txt"}:
            return parse_natural_trait(path, name)
        raise _err(path, None, "folder", "no positive/negative .jsonl or .txt files: not a trait dataset")
    if path.suffix != ".json":
        problem = "missing file" if not path.exists() else "unsupported file (expected a trait dir or .json)"
        raise _err(path, None, "file", problem)
    obj = _load_json(path)
    if isinstance(obj, dict) and "instruction" in obj:
        return parse_persona_vectors_trait(path, name)
    return parse_inference_set(path, name)
