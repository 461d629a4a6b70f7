"""``register``: a cheap, deterministic, model-free judge of an answer's register.

Score 0-100, higher = more expert (complex, technical) language, lower = more child-like
(simple) language. Only the answer is scored. Four text features
(:data:`REGISTER_FEATURES`):

* ``fk_grade`` -- Flesch-Kincaid grade level ``0.39 * words/sentences + 11.8 *
  syllables/words - 15.59`` (sentence length enters here only);
* ``mean_word_length`` -- letters per word;
* ``long_word_share`` -- share of words with >= 3 syllables;
* ``rare_word_share`` -- share of words outside a list of very common words
  (``datasets/judge/calibration/register/common_words.txt``, simple inflections allowed).

Words are runs of letters (an apostrophe inside a word keeps it one word); sentences end at
``.``, ``!`` or ``?`` followed by whitespace or the end, or at a line break; text after the
last terminator is a sentence too. Syllables come from :func:`count_syllables` (vowel groups
with English corrections; approximate: 82 of 89 hand-labelled words exact, none off by more than one).

Combination (fixed, never fitted at scoring time): each feature ``x`` becomes
``z = clip((x - center) / spread, -3, 3)`` with per-feature constants
(:data:`DEFAULT_REGISTER_CONSTANTS`), and ``score = 100 * (mean(z) + 3) / 6``. ``center`` is the
midpoint of the expert and child means and ``spread`` the pooled within-class standard
deviation (ddof=1) on the main calibration set (:func:`fit_register_constants`; re-derive them when the
set or the features change -- a test checks they match). 50 = halfway between the registers.

A text with no words (empty, whitespace, only digits or symbols) scores ``None``
(:meth:`RegisterJudge.score_one`); :func:`generated_register` turns that into ``nan``.
Validation: :func:`validate_register` -- AUROC expert-vs-child on the main set and on the
hard cases; the head-ablation readout should report it and refuse below
:data:`MIN_REGISTER_AUROC`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transforms.judge.base import OnResult, Score
from transforms.judge.scorers import Item, score_answers

logger = logging.getLogger(__name__)

VERSION = "1"
MIN_REGISTER_AUROC = 0.9
Z_CLIP = 3.0
REGISTER_FEATURES = ("fk_grade", "mean_word_length", "long_word_share", "rare_word_share")
DEFAULT_REGISTER_DIR = Path(__file__).resolve().parents[2] / "datasets" / "judge" / "calibration" / "register"
REGISTER_LABELS = ("expert", "child")

_WORD = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n+")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")
# Vowel pairs read as two syllables (bi-o-logy, me-di-a, vi-de-o, du-al) unless inside a
# suffix that is one syllable (na-tion, spe-cial, gra-cious).
_SPLIT_PAIR = re.compile(r"(?=(io|ia|eo|ua|uo|iu|ii))")
_ONE_SYLLABLE_SUFFIX = re.compile(r"(tion|sion|cion|cial|tial|cian|tian|cious|tious|xious|geous|ciate)")


# ------------------------------------------------------------------------- syllables


def count_syllables(word: str) -> int:
    """Approximate English syllable count of one word (>= 1 for any word with a letter).

    Vowel groups (``y`` a vowel except first), minus a silent final ``e`` (not after a
    consonant + ``l``: ta-ble), a silent ``-es`` / ``-ed`` (makes, jumped; not boxes,
    wanted), a silent ``e`` before ``-ly`` / ``-ful`` / ``-ment`` / ``-ness`` / ``-less``
    (love-ly); plus one for vowel pairs that split (bi-o, me-di-a) outside ``-tion``-like
    suffixes.
    """
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 0
    if len(w) <= 3:
        return max(1, len(_VOWEL_GROUP.findall(w[0].replace("y", "") + w[1:])))
    body = ("" if w[0] == "y" else w[0]) + w[1:]
    n = len(_VOWEL_GROUP.findall(body))
    if w.endswith("e") and not w.endswith(("ee", "ie", "ye", "oe")) and n > 1:
        if not (w.endswith("le") and len(w) > 2 and w[-3] not in "aeiouy"):
            n -= 1
    elif w.endswith("es") and n > 1 and not re.search(r"(s|x|z|ch|sh|c|g|[aeiouy])es$", w):
        n -= 1
    elif w.endswith("ed") and n > 1 and not re.search(r"([td]|[aeiouy])ed$", w):
        n -= 1
    if re.search(r"[^aeiouy]e(ly|ful|ment|ness|less)$", w) and n > 1:
        n -= 1
    stripped = _ONE_SYLLABLE_SUFFIX.sub("", w).replace("qu", "q")  # the u of qu is no vowel: e-qua-tion
    n += len(_SPLIT_PAIR.findall(stripped))
    return max(1, n)


# ------------------------------------------------------------------------- word list


def load_common_words(path: str | Path | None = None) -> frozenset[str]:
    """The very-common-word list: one lower-case word a line, ``#`` comments."""
    path = Path(path) if path is not None else DEFAULT_REGISTER_DIR / "common_words.txt"
    words = (line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines())
    return frozenset(w for w in words if w and not w.startswith("#"))


def _candidates(word: str) -> list[str]:
    """The word and its plausible base forms after stripping one simple inflection."""
    out = [word]
    for suffix, repl in (("'s", ""), ("ies", "y"), ("ied", "y"), ("ily", "y"), ("ier", "y"), ("iest", "y"),
                         ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"),
                         ("d", ""), ("ing", ""), ("ing", "e"), ("er", ""), ("est", ""), ("ly", ""), ("n't", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            stem = word[: -len(suffix)] + repl
            out.append(stem)
            if len(stem) > 2 and stem[-1] == stem[-2] and not repl:  # runn-ing, bigg-est
                out.append(stem[:-1])
    return out


def is_common_word(word: str, common_words: frozenset[str]) -> bool:
    """Whether ``word`` (any case) or a simple inflection of it is in ``common_words``."""
    return any(c in common_words for c in _candidates(word.lower().replace("\u2019", "'")))


# -------------------------------------------------------------------------- features


@dataclass(frozen=True)
class RegisterFeatures:
    """Counts and the four features of one text (see the module docstring)."""

    words: int
    sentences: int
    syllables: int
    fk_grade: float
    mean_word_length: float
    long_word_share: float
    rare_word_share: float

    def vector(self) -> tuple[float, ...]:
        """The features in :data:`REGISTER_FEATURES` order."""
        return tuple(float(getattr(self, name)) for name in REGISTER_FEATURES)


def register_features(text: str, common_words: frozenset[str]) -> RegisterFeatures | None:
    """The features of ``text``; ``None`` when it has no words."""
    words = _WORD.findall(text or "")
    if not words:
        return None
    sentences = sum(1 for part in _SENTENCE_END.split(text) if _WORD.search(part))
    syllables = [count_syllables(w) for w in words]
    n, total = len(words), sum(syllables)
    letters = sum(sum(ch.isalpha() for ch in w) for w in words)
    return RegisterFeatures(
        words=n, sentences=sentences, syllables=total,
        fk_grade=0.39 * n / sentences + 11.8 * total / n - 15.59,
        mean_word_length=letters / n,
        long_word_share=sum(s >= 3 for s in syllables) / n,
        rare_word_share=sum(not is_common_word(w, common_words) for w in words) / n,
    )


# ------------------------------------------------------------------------- constants


@dataclass(frozen=True)
class FeatureScale:
    """``z = (x - center) / spread`` for one feature."""

    center: float
    spread: float


@dataclass(frozen=True)
class RegisterConstants:
    """One :class:`FeatureScale` per feature, in :data:`REGISTER_FEATURES` order."""

    scales: tuple[FeatureScale, ...]

    def __post_init__(self) -> None:
        if len(self.scales) != len(REGISTER_FEATURES):
            raise ValueError(f"RegisterConstants needs {len(REGISTER_FEATURES)} scales, got {len(self.scales)}")
        if any(not s.spread > 0 for s in self.scales):
            raise ValueError("RegisterConstants: every spread must be > 0")

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {name: asdict(s) for name, s in zip(REGISTER_FEATURES, self.scales)}


# Fitted once with fit_register_constants() on the main set of datasets/judge/calibration/register/
# register.jsonl (44 answers, 22 questions x expert/child) and fixed here.
DEFAULT_REGISTER_CONSTANTS = RegisterConstants((
    FeatureScale(center=12.72, spread=2.082),  # fk_grade
    FeatureScale(center=4.936, spread=0.4685),  # mean_word_length
    FeatureScale(center=0.186, spread=0.06894),  # long_word_share
    FeatureScale(center=0.378, spread=0.08485),  # rare_word_share
))


def fit_register_constants(features: Sequence[RegisterFeatures], expert: Sequence[bool]) -> RegisterConstants:
    """Centers (midpoint of the class means) and spreads (pooled within-class sample
    standard deviation) from labelled features; both classes need >= 2 items."""
    hi = [f.vector() for f, e in zip(features, expert) if e]
    lo = [f.vector() for f, e in zip(features, expert) if not e]
    if len(hi) < 2 or len(lo) < 2:
        raise ValueError(f"fit_register_constants needs >= 2 items per class, got {len(hi)} expert and "
                         f"{len(lo)} child")

    def mean_var(rows: list[tuple[float, ...]], j: int) -> tuple[float, float]:
        values = [r[j] for r in rows]
        m = sum(values) / len(values)
        return m, sum((v - m) ** 2 for v in values) / (len(values) - 1)

    scales = []
    for j in range(len(REGISTER_FEATURES)):
        (m1, v1), (m0, v0) = mean_var(hi, j), mean_var(lo, j)
        scales.append(FeatureScale(center=(m1 + m0) / 2, spread=math.sqrt((v1 + v0) / 2)))
    return RegisterConstants(tuple(scales))


def register_score(features: RegisterFeatures, constants: RegisterConstants = DEFAULT_REGISTER_CONSTANTS) -> float:
    """The 0-100 score of ``features``: mean of clipped z-scores, mapped linearly."""
    zs = [max(-Z_CLIP, min(Z_CLIP, (x - s.center) / s.spread)) for x, s in zip(features.vector(), constants.scales)]
    return 100.0 * (sum(zs) / len(zs) + Z_CLIP) / (2 * Z_CLIP)


# ----------------------------------------------------------------------------- judge


class RegisterJudge:
    """Expert-vs-child register of the answer as a 0-100 score (a ``ResponseScorer``)."""

    name = "register"

    def __init__(self, common_words: frozenset[str] | None = None,
                 constants: RegisterConstants = DEFAULT_REGISTER_CONSTANTS) -> None:
        self.common_words = common_words if common_words is not None else load_common_words()
        self.constants = constants

    def identity(self) -> dict[str, Any]:
        words = hashlib.sha256("\n".join(sorted(self.common_words)).encode()).hexdigest()
        return {"name": self.name, "version": VERSION, "features": list(REGISTER_FEATURES), "z_clip": Z_CLIP,
                "constants": self.constants.as_dict(), "common_words": words, "scored": "answer"}

    def features(self, answer: str) -> RegisterFeatures | None:
        return register_features(answer, self.common_words)

    def score_one(self, answer: str) -> Score:
        """Score one answer; ``None`` when it has no words."""
        feats = self.features(answer)
        return None if feats is None else register_score(feats, self.constants)

    def score(self, items: Sequence[Item], on_result: OnResult | None = None) -> list[Score]:
        scores = score_answers(self.score_one, items, on_result)
        logger.debug("register: scored %d items (%d None)", len(scores), scores.count(None))
        return scores


def generated_register(texts: Sequence[str], judge: RegisterJudge | None = None) -> list[float]:
    """Register score of each generated answer; ``nan`` for one with no words (count
    them: a generation that degenerates under ablation is a result too)."""
    judge = judge or RegisterJudge()
    return [math.nan if s is None else s for s in (judge.score_one(t) for t in texts)]


# ----------------------------------------------------------------------- validation


@dataclass(frozen=True)
class RegisterExample:
    """One labelled answer of the register calibration set."""

    id: str
    question: str
    response: str
    label: str  # "expert" | "child"
    kind: str  # "main" or a hard-case kind ("hard_plain_expert", ...)


def load_register_set(path: str | Path | None = None) -> list[RegisterExample]:
    """``register.jsonl`` (fields id, question, response, label, kind); ValueError naming
    the line for a bad row."""
    path = Path(path) if path is not None else DEFAULT_REGISTER_DIR / "register.jsonl"
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            row = RegisterExample(*(str(raw[k]) for k in ("id", "question", "response", "label", "kind")))
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path.name}:{lineno}: bad row: {err}") from None
        if row.label not in REGISTER_LABELS:
            raise ValueError(f"{path.name}:{lineno}: label {row.label!r} is not one of {', '.join(REGISTER_LABELS)}")
        rows.append(row)
    return rows


def rank_auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """AUROC by the Mann-Whitney rank formula (ties share their mean rank)."""
    import numpy as np

    x = np.asarray(scores, dtype=float)
    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("rank_auroc needs both classes")
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):  # average ranks over ties
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@dataclass(frozen=True)
class RegisterValidation:
    """How well the judge separates expert from child answers (``None`` scores count 50)."""

    auroc_main: float
    auroc_hard: float | None  # hard cases, out of sample (constants fitted on main only)
    n_main: int
    n_hard: int
    judge: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.auroc_main >= MIN_REGISTER_AUROC


def validate_register(judge: RegisterJudge | None = None, path: str | Path | None = None) -> RegisterValidation:
    """Score the calibration set and report AUROC on the main set and the hard cases."""
    judge = judge or RegisterJudge()
    rows = load_register_set(path)
    scores = [judge.score_one(r.response) for r in rows]
    scores = [50.0 if s is None else s for s in scores]

    def auc(kind_main: bool) -> float | None:
        idx = [i for i, r in enumerate(rows) if (r.kind == "main") == kind_main]
        labels = [rows[i].label == "expert" for i in idx]
        if not idx or all(labels) or not any(labels):
            return None
        return rank_auroc([scores[i] for i in idx], labels)

    main = auc(True)
    if main is None:
        raise ValueError("register calibration set: the main set needs expert and child answers")
    result = RegisterValidation(main, auc(False), sum(r.kind == "main" for r in rows),
                                sum(r.kind != "main" for r in rows), judge.identity())
    logger.info("register judge: AUROC main %.3f (n=%d), hard %s (n=%d)", result.auroc_main, result.n_main,
                "n/a" if result.auroc_hard is None else f"{result.auroc_hard:.3f}", result.n_hard)
    return result
