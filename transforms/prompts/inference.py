"""Inference prompt sets -> :class:`~transforms.prompts.rows.PromptSet`: trait-interp's
inference and persona-detection JSON files (or a bare list), one set combined from several
trait sets' steering questions, and the JSON that writes a set back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from transforms.prompts.files import PromptSetError, check_id, check_str, err, line_of, load_json, typed, unique
from transforms.prompts.rows import PromptRow, PromptSet, content_id, make_row

log = logging.getLogger(__name__)

# top-level keys of an inference-set object; others are kept in ``meta`` with a warning
INFERENCE_KEYS = ("name", "description", "system_prompt", "prompts")


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
    obj = load_json(path)
    meta: dict[str, Any] = {}
    set_system: str | None = None
    items, prefix = obj, "item"
    if isinstance(obj, dict):
        items, prefix = obj.get("prompts"), "prompts"
        if not isinstance(items, list):
            problem = "missing field" if items is None else f"expected a list, got {type(items).__name__}"
            raise err(path, line_of(obj, "prompts"), "prompts", problem)
        for key in ("name", "description"):
            check_str(obj.get(key), path, line_of(obj, key), key, required=False)
        set_system = check_str(obj.get("system_prompt"), path, line_of(obj, "system_prompt"), "system_prompt",
                                required=False)
        unknown = [k for k in obj if k not in INFERENCE_KEYS]
        if unknown:
            log.warning("%s: unknown top-level key(s) %s: kept in the set's metadata, not applied to rows "
                        "(known: %s)", path, ", ".join(map(repr, unknown)), ", ".join(INFERENCE_KEYS))
        meta = {k: v for k, v in obj.items() if k != "prompts"}
    elif not isinstance(obj, list):
        raise err(path, 1, "json", f"expected an object with 'prompts' or a list, got {type(obj).__name__}")
    if not items:
        raise err(path, line_of(items, None), "prompts", "no prompts")
    rows: list[PromptRow] = []
    seen: dict[Any, int | None] = {}
    for k, item in enumerate(items):
        line, fld = line_of(items, k), f"{prefix}[{k}]"
        if isinstance(item, str):
            item = {"text": item}
        elif not isinstance(item, dict):
            raise err(path, line, fld, f"expected a string or an object, got {typed(item)}")
        text = check_str(item.get("text"), path, line_of(item, "text") or line, f"{fld}.text")
        system = (check_str(item["system_prompt"], path, line, f"{fld}.system_prompt", required=False)
                  if "system_prompt" in item else set_system)
        note = check_str(item.get("note"), path, line, f"{fld}.note", required=False)
        given_id = check_id(item.get("id"), path, line_of(item, "id") or line, f"{fld}.id")
        prompt_id = given_id if given_id is not None else content_id(None, system, text)
        if given_id is not None:
            unique(seen, prompt_id, path, line, f"{fld}.id", f"id {given_id!r}")
        else:
            unique(seen, prompt_id, path, line, f"{fld}.text", "text")
        extra = {f: v for f, v in item.items() if f not in ("id", "text", "note", "system_prompt")}
        rows.append(make_row(prompt_id, None, None, text, system, note, f"{path.name}:{line}", extra))
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
            prompt_id = content_id("inference", trait, question)
            if prompt_id in seen:
                raise PromptSetError(f"{source}: questions[{j}]: duplicate question for note {trait!r} "
                                     f"(also {seen[prompt_id]})")
            seen[prompt_id] = source
            rows.append(make_row(prompt_id, None, None, question, None, trait, source))
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
