"""``sentiment``: a cheap, deterministic trait scorer from VADER's compound polarity.

Only the answer is scored (never the question). VADER's compound score in [-1, 1] is
mapped to 0-100 by :func:`~transforms.judge.scorers.compound_to_score`: 50 is neutral,
``direction=1`` puts cheerful answers near 100, ``direction=-1`` (traits where gloom is
the trait) puts gloomy answers near 100. An empty or whitespace-only answer scores
``None``. ``vaderSentiment`` (its lexicon ships in the wheel) is imported on first use.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from transforms.judge.base import OnResult, Score
from transforms.judge.scorers import Item, compound_to_score, score_answers

logger = logging.getLogger(__name__)

VERSION = "1"


def _analyzer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaderSentiment")
    except PackageNotFoundError:  # pragma: no cover - importable but not installed as a dist
        return "unknown"


class SentimentScorer:
    """VADER compound polarity of the answer as a 0-100 score (50 neutral)."""

    name = "sentiment"

    def __init__(self, direction: int = 1) -> None:
        if direction not in (1, -1):
            raise ValueError(f"SentimentScorer direction must be 1 or -1, got {direction!r}")
        self.direction = direction
        self._analyzer: Any = None

    @property
    def analyzer(self) -> Any:
        """The VADER analyzer, built on first use (loads its lexicon once)."""
        if self._analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._analyzer = SentimentIntensityAnalyzer()
        return self._analyzer

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": VERSION, "analyzer": f"vaderSentiment=={_analyzer_version()}",
                "direction": self.direction, "scored": "answer"}

    def score_one(self, answer: str) -> Score:
        """Score one answer; ``None`` when it is empty or whitespace."""
        if not answer or not answer.strip():
            return None
        compound = self.analyzer.polarity_scores(answer)["compound"]
        return compound_to_score(compound, self.direction)

    def score(self, items: Sequence[Item], on_result: OnResult | None = None) -> list[Score]:
        scores = score_answers(self.score_one, items, on_result)
        logger.debug("sentiment: scored %d items (%d None)", len(scores), scores.count(None))
        return scores
