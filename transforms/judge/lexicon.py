"""``lexicon``: a cheap, deterministic trait scorer from weighted word/phrase/regex hits.

Lexicon file (UTF-8), one entry per line; blank lines and lines starting with ``#`` are
ignored. An entry is ``TERM``, ``TERM<TAB>WEIGHT``, or ``TERM WEIGHT`` when the last
whitespace-separated token parses as a number (use a tab for a phrase that ends in a
number). Weights default to 1 and must be finite. TERM is

* a word or phrase, matched case-insensitively as whole words (not inside a longer word:
  ``bride`` does not match ``bridge``); the spaces of a phrase match any whitespace;
* ``re:PATTERN``, a regex compiled case-insensitively as ``\\b(?:PATTERN)\\b``.

A bad regex (or one matching the empty string), a bad weight, a duplicate term or an empty
lexicon raises :class:`LexiconError`, one line: ``file:line: problem``.

Score of an answer (the question is not scored): each entry's non-overlapping matches are
counted independently (overlapping entries both count), ``hits = sum(weight * count)``,
``h = 100 * hits / words`` (hits per 100 words; words are ``\\w+`` tokens; an answer with no
words scores ``None``). Then, with ``scale`` (default 5):

* unipolar lexicon (every weight >= 0, e.g. a topic such as weddings):
  ``score = 100 * tanh(h / scale)`` -- no hits 0, 5 hits per 100 words 76;
* bipolar lexicon (some weight < 0): ``score = 50 + 50 * tanh(h / scale)`` -- no hits 50,
  +5 per 100 words 88, strongly negative near 0.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transforms.judge.base import OnResult, Score
from transforms.judge.scorers import Item, score_answers

logger = logging.getLogger(__name__)

VERSION = "1"
DEFAULT_SCALE = 5.0
_WORD = re.compile(r"\w+")


class LexiconError(ValueError):
    """A lexicon that cannot be used; one-line message ``file:line: problem``."""


@dataclass(frozen=True)
class Entry:
    """One lexicon entry: normalized term (``re:...`` for a regex), weight, matcher."""

    term: str
    weight: float
    pattern: re.Pattern[str]
    line: int


def _parse_weight(text: str, where: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise LexiconError(f"{where}: bad weight {text.strip()!r}: not a number") from None
    if not math.isfinite(weight):
        raise LexiconError(f"{where}: bad weight {text.strip()!r}: not finite")
    return weight


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_line(line: str, where: str, lineno: int) -> Entry:
    term, weight = line, 1.0
    if "\t" in line:
        head, tail = line.rsplit("\t", 1)
        term, weight = head.strip(), _parse_weight(tail, where)
    else:
        head, _, last = line.rpartition(" ")
        if head.strip() and _is_number(last):
            term, weight = head.strip(), _parse_weight(last, where)
    if term.startswith("re:"):
        source = term[3:]
        try:
            bare = re.compile(source, re.IGNORECASE)
            pattern = re.compile(rf"\b(?:{source})\b", re.IGNORECASE)
        except re.error as exc:
            raise LexiconError(f"{where}: bad regex {term!r}: {exc.msg}") from None
        if not source or bare.fullmatch("") is not None:
            raise LexiconError(f"{where}: bad regex {term!r}: matches the empty string")
        return Entry(term, weight, pattern, lineno)
    words = term.lower().split()
    if not words:
        raise LexiconError(f"{where}: empty term")
    body = r"\s+".join(re.escape(w) for w in words)
    return Entry(" ".join(words), weight, re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE), lineno)


@dataclass(frozen=True)
class Lexicon:
    """Parsed lexicon entries and where they came from."""

    entries: tuple[Entry, ...]
    source: str = "<text>"

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> Lexicon:
        """Parse lexicon text (format in the module docstring); :class:`LexiconError` if bad."""
        entries: list[Entry] = []
        seen: dict[str, int] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            entry = _parse_line(line, f"{source}:{lineno}", lineno)
            if entry.term in seen:
                raise LexiconError(f"{source}:{lineno}: duplicate term {entry.term!r} (first on line {seen[entry.term]})")
            seen[entry.term] = lineno
            entries.append(entry)
        if not entries:
            raise LexiconError(f"{source}: empty lexicon (no entries)")
        return cls(tuple(entries), source)

    @classmethod
    def from_file(cls, path: str | Path) -> Lexicon:
        """Parse a lexicon file; errors name the file as given and the line."""
        return cls.from_text(Path(path).read_text(encoding="utf-8-sig"), source=str(path))

    @property
    def bipolar(self) -> bool:
        """True when some weight is negative (score map centred on 50)."""
        return any(e.weight < 0 for e in self.entries)

    def sha256(self) -> str:
        """sha256 of the sorted normalized ``(term, weight)`` list (order, comments, case ignored)."""
        items = sorted([e.term, e.weight] for e in self.entries)
        return hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).hexdigest()

    def hits(self, text: str) -> float:
        """Sum of ``weight * number of non-overlapping matches`` over the entries."""
        return sum(e.weight * sum(1 for _ in e.pattern.finditer(text)) for e in self.entries)


class LexiconScorer:
    """Weighted lexicon hits per 100 words of the answer as a 0-100 score."""

    name = "lexicon"

    def __init__(self, lexicon: Lexicon, scale: float = DEFAULT_SCALE) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"LexiconScorer scale must be a positive number, got {scale!r}")
        self.lexicon, self.scale = lexicon, float(scale)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": VERSION, "lexicon_sha256": self.lexicon.sha256(),
                "scale": self.scale, "map": "bipolar" if self.lexicon.bipolar else "unipolar"}

    def score_one(self, answer: str) -> Score:
        """Score one answer; ``None`` when it has no words."""
        words = len(_WORD.findall(answer))
        if words == 0:
            return None
        density = math.tanh(100.0 * self.lexicon.hits(answer) / words / self.scale)
        return 50.0 + 50.0 * density if self.lexicon.bipolar else 100.0 * density

    def score(self, items: Sequence[Item], on_result: OnResult | None = None) -> list[Score]:
        scores = score_answers(self.score_one, items, on_result)
        logger.debug("lexicon: scored %d items (%d None)", len(scores), scores.count(None))
        return scores
