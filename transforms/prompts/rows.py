"""The prompt-set data model shared by every format: :class:`PromptSet`, its rows
(:class:`PromptRow`, :data:`ROW_KEYS`), their stored schema and content-hash ids.

The formats themselves are parsed in :mod:`transforms.prompts.traits` (trait datasets) and
:mod:`transforms.prompts.inference` (inference sets); :mod:`transforms.prompts.sets` says
what a row holds and picks the parser for a path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypedDict

from transforms.prompts.files import read_text

if TYPE_CHECKING:
    import pyarrow as pa

ROW_KEYS = ("prompt_id", "pair_id", "polarity", "prompt", "system_prompt", "note", "source", "extra")


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
        return read_text(path) if path is not None else None

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.style not in STYLES:
            raise ValueError(f"bad kind/style {self.kind!r}/{self.style!r}")
        if (self.kind == "inference") != (self.style == "inference"):
            raise ValueError(f"kind {self.kind!r} does not go with style {self.style!r}")

    def select(self, polarity: str | None) -> list[PromptRow]:
        """Rows with the given polarity ("pos", "neg", or None for inference rows)."""
        return [r for r in self.rows if r["polarity"] == polarity]


def content_id(*parts: str | None) -> str:
    """12 hex of sha256 over ``parts`` (None distinct from ""): stable ids from content."""
    joined = "\x1f".join("\x00" if p is None else p for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:12]


def make_row(prompt_id: str, pair_id: str | None, polarity: str | None, prompt: str | None, system: str | None,
             note: str | None, source: str, extra: Mapping[str, Any] | None = None) -> PromptRow:
    """A row with every :data:`ROW_KEYS` key; ``extra`` as a JSON object string."""
    extra_json = json.dumps(dict(extra or {}), sort_keys=True, ensure_ascii=False)
    return PromptRow(prompt_id=prompt_id, pair_id=pair_id, polarity=polarity, prompt=prompt,  # type: ignore[typeddict-item]
                     system_prompt=system, note=note, source=source, extra=extra_json)
