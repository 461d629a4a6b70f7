"""Response scorers: the one protocol every judge family implements, chosen per metric.

A :class:`ResponseScorer` turns ``(question, answer)`` pairs into scores 0-100 (``None``
when it cannot score an item). Families:

* ``sentiment`` (VADER compound, :mod:`transforms.judge.sentiment`) and ``lexicon``
  (weighted word/regex hits, :mod:`transforms.judge.lexicon`): cheap, deterministic trait
  scorers;
* ``perplexity`` (:mod:`transforms.judge.perplexity`): coherence from a reference model's
  token NLL plus degeneracy signals, mapped to 0-100 by a fitted calibration;
* ``local`` / ``openai``: the LLM judges (:class:`LLMScorer` wraps them with a template).

Identity: ``scorer.identity()`` is a JSON-able dict (name, version, parameters, reference
model, calibration) that enters version ids; :func:`identity_hash` hashes it canonically
and, with the scorer's name, keys the score cache, so changing any parameter can never
reuse old scores.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from transforms.judge.base import Key, OnResult, Score, ScoreCache, apply_relevance_cap, score_responses

if TYPE_CHECKING:
    from transforms.judge.base import Judge
    from transforms.judge.templates import JudgeTemplate

logger = logging.getLogger(__name__)

Item = tuple[str, str]  # (question, answer)


@runtime_checkable
class ResponseScorer(Protocol):
    """Scores ``(question, answer)`` pairs 0-100."""

    name: str

    def identity(self) -> dict[str, Any]:
        """JSON-able identity: name, version, parameters, reference model (no secrets)."""
        ...

    def score(self, items: Sequence[Item], on_result: OnResult | None = None) -> list[Score]:
        """One score per item, in order; ``on_result(index, score)`` as each is known."""
        ...


def identity_hash(scorer: ResponseScorer) -> str:
    """sha256 of the canonical JSON of the scorer's identity."""
    text = json.dumps(scorer.identity(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def score_cached(scorer: ResponseScorer, items: Sequence[Item], cache: ScoreCache | None = None,
                 on_result: OnResult | None = None, flush_every: int = 256) -> list[Score]:
    """``scorer.score`` over the unique items the cache does not hold; new scores cached.

    Cache key: ``(scorer.name, identity_hash(scorer), question, answer)``. Scorers that
    cache by themselves (``caches_itself = True``, the LLM scorers) are called directly.
    """
    if getattr(scorer, "caches_itself", False):
        return scorer.score(items, on_result)
    ident = f"scorer:{scorer.name}"
    ihash = identity_hash(scorer)
    keys: list[Key] = [(ident, ihash, q, a) for q, a in items]
    positions: dict[Key, list[int]] = {}
    for i, key in enumerate(keys):
        positions.setdefault(key, []).append(i)
    found = dict(cache.get_many(list(positions))) if cache is not None else {}
    if on_result is not None:
        for key, value in found.items():
            for i in positions[key]:
                on_result(i, value)
    todo = [key for key in positions if key not in found]
    logger.info("scorer %s (%s): %d items, %d unique, %d cached", scorer.name, ihash[:12], len(items),
                len(positions), len(positions) - len(todo))
    for lo in range(0, len(todo), flush_every):
        chunk = todo[lo:lo + flush_every]

        def forward(j: int, value: Score, chunk: list[Key] = chunk) -> None:
            if on_result is not None:
                for i in positions[chunk[j]]:
                    on_result(i, value)

        values = scorer.score([(k[2], k[3]) for k in chunk], forward)
        found.update(zip(chunk, values))
        if cache is not None:
            cache.put_many(list(zip(chunk, values)))
    return [found[key] for key in keys]


class LLMScorer:
    """An LLM judge (local or OpenAI-compatible) with a template, as a :class:`ResponseScorer`.

    ``kind="trait"``: the trait template; ``kind="coherence"``: the coherence template
    capped by the relevance template (:func:`apply_relevance_cap`). Scores are cached by the
    judge's own cache keys (judge model, template hash, question, answer), so scores cached
    before this protocol existed are reused.
    """

    caches_itself = True

    def __init__(self, judge: Judge, backend: str, kind: str, templates: dict[str, JudgeTemplate],
                 cache: ScoreCache | None = None, model_name: str | None = None) -> None:
        if kind not in ("trait", "coherence"):
            raise ValueError(f"LLMScorer kind must be trait or coherence, got {kind!r}")
        self.judge, self.backend, self.kind, self.templates, self.cache = judge, backend, kind, templates, cache
        self.name = backend
        self.model_name = model_name  # names the judge model without loading it
        self.last_detail: dict[str, list[Score]] = {}

    def identity(self) -> dict[str, Any]:
        return {"name": self.backend, "model": self.model_name or self.judge.model_id, "kind": self.kind,
                "templates": {k: t.hash for k, t in sorted(self.templates.items())}}

    def score(self, items: Sequence[Item], on_result: OnResult | None = None) -> list[Score]:
        items = list(items)
        if self.kind == "trait":
            return score_responses(self.judge, self.templates["trait"], items, self.cache, on_result=on_result)
        coherence = score_responses(self.judge, self.templates["coherence"], items, self.cache)
        relevance = score_responses(self.judge, self.templates["relevance"], items, self.cache)
        self.last_detail = {"coherence_raw": coherence, "relevance": relevance}
        capped = [apply_relevance_cap(c, r) for c, r in zip(coherence, relevance)]
        if on_result is not None:
            for i, value in enumerate(capped):
                on_result(i, value)
        return capped


def score_answers(score_one: Callable[[str], Score], items: Sequence[Item],
                  on_result: OnResult | None = None) -> list[Score]:
    """``score_one(answer)`` for every item (the question unused), reporting each result."""
    scores: list[Score] = []
    for i, (_question, answer) in enumerate(items):
        scores.append(score_one(answer))
        if on_result is not None:
            on_result(i, scores[-1])
    return scores


def compound_to_score(compound: float, direction: int = 1) -> float:
    """Map a signed score in [-1, 1] to 0-100; ``direction=-1`` flips it (gloom up)."""
    value = max(-1.0, min(1.0, float(compound))) * (1 if direction >= 0 else -1)
    return 50.0 * (value + 1.0)
