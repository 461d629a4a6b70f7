"""Cost estimates of stages, in the units a researcher budgets GPU time by.

A cost is ``sequences × tokens × passes``: how many sequences go through the model, how long
each is, and how many forward passes each needs (one to read activations; one per new token
to generate, counted as the new tokens). Estimates, not measurements: prompt lengths are
guessed at :data:`PROMPT_TOKENS`, generation is taken to run to ``max_new_tokens``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROMPT_TOKENS = 48  # a typical chat-formatted prompt of our sets


@dataclass(frozen=True)
class Cost:
    sequences: int
    tokens: int
    passes: int

    @property
    def token_passes(self) -> int:
        return self.sequences * self.tokens * self.passes

    def __add__(self, other: "Cost") -> "Cost":
        # summing different shapes keeps the total token-passes exact, the shape approximate
        total = self.token_passes + other.token_passes
        sequences = self.sequences + other.sequences
        tokens = max(self.tokens, other.tokens)
        return Cost(sequences, tokens, max(1, round(total / max(1, sequences * tokens))))

    def __str__(self) -> str:
        return f"{self.sequences} seq x {self.tokens} tok x {self.passes} pass = {human(self.token_passes)}"


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


@dataclass
class CostContext:
    """What estimates read: the catalog (prompt-set sizes, generation defaults)."""

    catalog: Any
    experiment: str
    _sizes: dict[str, int] = field(default_factory=dict)

    def prompts(self, prompt_set: str) -> int:
        """Rows of a prompt set (both polarities of a trait set)."""
        if prompt_set not in self._sizes:
            from transforms.prompts import load_prompt_set

            try:
                self._sizes[prompt_set] = len(load_prompt_set(self.catalog.prompt_set(prompt_set).path).rows)
            except Exception:  # an estimate never stops a plan; the stage itself reports the problem
                self._sizes[prompt_set] = 0
        return self._sizes[prompt_set]

    def generation(self, overrides: dict[str, Any] | None = None) -> tuple[int, int]:
        """(max_new_tokens, rollouts) after the catalog's defaults and ``overrides``."""
        settings = {**self.catalog.stage_defaults("responses"), **(overrides or {})}
        return int(settings.get("max_new_tokens", 32)), int(settings.get("rollouts", 1))


def generate(cc: CostContext, prompt_set: str, overrides: dict[str, Any] | None = None, copies: int = 1) -> Cost:
    """Answering every prompt of ``prompt_set`` (``copies`` times: steering configurations)."""
    new, rollouts = cc.generation(overrides)
    return Cost(cc.prompts(prompt_set) * rollouts * copies, PROMPT_TOKENS + new, new)


def read(cc: CostContext, prompt_set: str, overrides: dict[str, Any] | None = None, models: int = 1) -> Cost:
    """One forward pass over prompt + response of every row (activations, judging by perplexity)."""
    new, rollouts = cc.generation(overrides)
    return Cost(cc.prompts(prompt_set) * rollouts * models, PROMPT_TOKENS + new, 1)
