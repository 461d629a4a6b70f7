"""Paired (minimal-pair) prompt sets -> :class:`~transforms.prompts.rows.PromptSet`.

A paired set is a folder with ``categories.json`` and one JSONL file per category::

    categories.json   {"name"?, "description"?, "categories": {
                         "<category>": {"file": "<x>.jsonl", "pos": "<side>", "neg": "<side>",
                                        "answers"?: bool, "description"?: str}, ...}}
    <x>.jsonl         one pair per line: {"pair_id", "<pos side>": text, "<neg side>": text,
                                         "correct_answer"?, "user_answer"?, ...}

Each line becomes two rows sharing ``pair_id``: ``prompt_id`` = ``<pair_id>.<side>``,
``polarity`` "pos"/"neg" from the category's mapping, ``note`` = the category, ``extra`` =
``{"category", "side", ...the line's other fields}`` (so ``correct_answer`` /
``user_answer`` reach the prompts table, which responses join by ``prompt_id``). A category
with ``"answers": true`` needs both answers on every line, distinct after case folding.

The set is ``kind="trait"``, ``style="instruction"`` (user turns under the chat template, no
system prompt): the responses / activations / vectors builders run it like any contrast set.
Errors are :class:`PromptSetError` ``file:line: field: message``; a pair with one side
missing names the pair id and the side.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transforms.prompts.files import (
    check_id,
    check_str,
    err,
    line_of,
    load_json,
    read_jsonl,
    short,
    unique,
)
from transforms.prompts.rows import PromptRow, PromptSet, make_row

log = logging.getLogger(__name__)

SPEC_FILE = "categories.json"
ANSWER_FIELDS = ("correct_answer", "user_answer")
_CATEGORY_KEYS = ("file", "pos", "neg", "answers", "description")


def is_paired_set(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a paired set's ``categories.json``."""
    return Path(path).is_dir() and (Path(path) / SPEC_FILE).is_file()


def _categories(spec_path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Validated category specs and the set-level metadata of ``categories.json``."""
    obj = load_json(spec_path)
    if not isinstance(obj, dict):
        raise err(spec_path, 1, "json", f"expected a JSON object, got {type(obj).__name__}")
    for key in ("name", "description"):
        check_str(obj.get(key), spec_path, line_of(obj, key), key, required=False)
    cats = obj.get("categories")
    if not isinstance(cats, dict) or not cats:
        problem = "missing field" if cats is None else "expected a non-empty object of categories"
        raise err(spec_path, line_of(obj, "categories"), "categories", problem)
    out: dict[str, dict[str, Any]] = {}
    files: dict[Any, int | None] = {}
    for cat, entry in cats.items():
        line, fld = line_of(cats, cat), f"categories.{cat}"
        if not isinstance(entry, dict):
            raise err(spec_path, line, fld, f"expected an object, got {type(entry).__name__}")
        unknown = [k for k in entry if k not in _CATEGORY_KEYS]
        if unknown:
            raise err(spec_path, line, fld, f"unknown key(s) {', '.join(map(repr, unknown))} "
                                             f"(known: {', '.join(_CATEGORY_KEYS)})")
        file, pos, neg = (check_str(entry.get(k), spec_path, line_of(entry, k) or line, f"{fld}.{k}")
                          for k in ("file", "pos", "neg"))
        if pos == neg:
            raise err(spec_path, line, fld, f"pos and neg are the same side {pos!r}")
        reserved = {"pair_id", "category", "side", *ANSWER_FIELDS}
        if {pos, neg} & reserved:
            raise err(spec_path, line, fld, f"a side may not be named {sorted({pos, neg} & reserved)[0]!r}")
        answers = entry.get("answers", False)
        if not isinstance(answers, bool):
            raise err(spec_path, line_of(entry, "answers") or line, f"{fld}.answers", f"expected true or false, "
                                                                                       f"got {short(answers)}")
        unique(files, file, spec_path, line, f"{fld}.file", "file")
        out[cat] = {"file": file, "pos": pos, "neg": neg, "answers": answers,
                    "description": entry.get("description")}
    meta = {k: v for k, v in obj.items() if k != "categories"}
    meta["categories"] = {c: {"pos": e["pos"], "neg": e["neg"], "answers": e["answers"],
                              **({"description": e["description"]} if e["description"] else {})}
                          for c, e in out.items()}
    return out, meta


def load_paired_set(path: str | Path, name: str | None = None) -> PromptSet:
    """Parse and validate a paired set folder (format in the module docstring).

    Checks: every line has a unique ``pair_id`` (across the whole set) and both of its
    category's sides as non-empty text; a side's text is not repeated within a category;
    answer categories carry ``correct_answer`` and ``user_answer`` that differ. Rows come in
    category order (as in ``categories.json``), then line order, pos before neg.
    """
    folder = Path(path)
    spec_path = folder / SPEC_FILE
    if not folder.is_dir():
        raise err(folder, None, "folder", "missing folder" if not folder.exists() else "not a folder")
    cats, meta = _categories(spec_path)
    rows: list[PromptRow] = []
    pair_seen: dict[Any, int | None] = {}
    side_of = {side: c for c, e in cats.items() for side in (e["pos"], e["neg"])}
    for cat, spec in cats.items():
        file = folder / spec["file"]
        text_seen: dict[Any, int | None] = {}
        for line, obj in read_jsonl(file):
            for key in obj:
                if key in ("category", "side"):
                    raise err(file, line, key, "reserved: the loader sets it from categories.json")
                if side_of.get(key, cat) != cat:
                    raise err(file, line, key, f"side {key!r} belongs to category {side_of[key]!r}, not {cat!r}")
            pair_id = check_id(obj.get("pair_id"), file, line, "pair_id")
            if pair_id is None:
                raise err(file, line, "pair_id", "missing field (or null)")
            unique(pair_seen, pair_id, file, line, "pair_id", f"pair id {pair_id!r}")
            for side in (spec["pos"], spec["neg"]):
                if obj.get(side) is None:
                    raise err(file, line, side, f"pair {pair_id!r} has no {side!r} side "
                                                f"(category {cat!r} needs {spec['pos']!r} and {spec['neg']!r})")
            if spec["answers"]:
                answers = [check_str(obj.get(f), file, line, f) for f in ANSWER_FIELDS]
                if answers[0].strip().casefold() == answers[1].strip().casefold():  # type: ignore[union-attr]
                    raise err(file, line, "user_answer", f"pair {pair_id!r}: the user's answer is the correct one")
            extra_fields = {k: v for k, v in obj.items() if k not in ("pair_id", spec["pos"], spec["neg"])}
            for pol, side in (("pos", spec["pos"]), ("neg", spec["neg"])):
                text = check_str(obj[side], file, line, side)
                unique(text_seen, (side, text), file, line, side, f"{side!r} text")
                extra = {"category": cat, "side": side, **extra_fields}
                rows.append(make_row(f"{pair_id}.{side}", pair_id, pol, text, None, cat, f"{file.name}:{line}",
                                     extra))
    ps = PromptSet(name or meta.get("name") or folder.name, "trait", "instruction", rows,
                   source_files=[str(spec_path)] + [str(folder / c["file"]) for c in cats.values()], meta=meta)
    log.info("paired set %s: %d pairs in %d categories", ps.name, len(pair_seen), len(cats))
    return ps
