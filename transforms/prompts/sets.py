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

The row model is in :mod:`transforms.prompts.rows`, trait datasets are parsed in
:mod:`transforms.prompts.traits`, inference sets in :mod:`transforms.prompts.inference`;
this module picks the parser for a path (:func:`load_prompt_set`).
"""

from __future__ import annotations

from pathlib import Path

from transforms.prompts.files import err, load_json
from transforms.prompts.inference import parse_inference_set
from transforms.prompts.paired import is_paired_set, load_paired_set
from transforms.prompts.persona import is_persona_set, persona_prompt_set
from transforms.prompts.rows import PromptSet
from transforms.prompts.traits import parse_instruction_trait, parse_natural_trait, parse_persona_vectors_trait


def load_prompt_set(path: str | Path, name: str | None = None) -> PromptSet:
    """Load any supported prompt set, detecting the format from what is at ``path``.

    A folder with ``categories.json`` -> paired set (:mod:`transforms.prompts.paired`);
    with ``persona.json`` -> persona set (:mod:`transforms.prompts.persona`: pos = expert, neg = child);
    a folder with positive/negative ``.jsonl`` -> instruction trait; with ``.txt`` ->
    natural trait; a ``.json`` object with ``instruction`` -> persona_vectors trait; any
    other ``.json`` (object with ``prompts``, or a list) -> inference set.
    """
    path = Path(path)
    if is_paired_set(path):
        return load_paired_set(path, name)
    if is_persona_set(path):
        return persona_prompt_set(path, name)
    if path.is_dir():
        present = {p.name for p in path.iterdir()}
        if present & {"positive.jsonl", "negative.jsonl"}:
            return parse_instruction_trait(path, name)
        if present & {"positive.txt", "negative.txt"}:
            return parse_natural_trait(path, name)
        raise err(path, None, "folder", "no positive/negative .jsonl or .txt files: not a trait dataset")
    if path.suffix != ".json":
        problem = "missing file" if not path.exists() else "unsupported file (expected a trait dir or .json)"
        raise err(path, None, "file", problem)
    obj = load_json(path)
    if isinstance(obj, dict) and "instruction" in obj:
        return parse_persona_vectors_trait(path, name)
    return parse_inference_set(path, name)
