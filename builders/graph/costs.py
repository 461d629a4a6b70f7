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
class Part:
    """One block of work: ``sequences`` of ``tokens`` through ``passes`` forward passes.
    ``shared``: a key for work several stages would do once (the same responses)."""

    what: str
    sequences: int
    tokens: int
    passes: int
    shared: tuple | None = None

    @property
    def token_passes(self) -> int:
        return self.sequences * self.tokens * self.passes

    def __str__(self) -> str:
        return f"{self.what} {self.sequences} seq x {self.tokens} tok x {self.passes} pass"


class Cost:
    """The parts of a stage's work: ``Cost(sequences, tokens, passes)`` for one block,
    ``Cost(parts)`` for several."""

    def __init__(self, *args: Any, what: str = "run") -> None:
        self.parts: tuple[Part, ...] = tuple(args[0]) if len(args) == 1 else (Part(what, *args),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cost) and self.parts == other.parts

    def __repr__(self) -> str:
        return f"Cost({self.parts!r})"

    @property
    def sequences(self) -> int:
        return sum(p.sequences for p in self.parts)

    @property
    def tokens(self) -> int:
        return max((p.tokens for p in self.parts), default=0)

    @property
    def passes(self) -> int:
        return max((p.passes for p in self.parts), default=0)

    @property
    def token_passes(self) -> int:
        return sum(p.token_passes for p in self.parts)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.parts + other.parts)

    def without(self, seen: set) -> "Cost":
        """This cost without the shared parts already counted (and ``seen`` updated)."""
        kept = tuple(p for p in self.parts if p.shared is None or p.shared not in seen)
        seen.update(p.shared for p in self.parts if p.shared is not None)
        return Cost(kept)

    def __str__(self) -> str:
        if not self.parts:
            return "shares work counted above"
        if self.token_passes == 0:
            return "no forward pass (reads stored datasets)"
        return " + ".join(map(str, self.parts)) + f" = {human(self.token_passes)}"


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


@dataclass
class CostContext:
    """What estimates read: the catalog (prompt-set sizes, generation defaults) and the
    experiment's other stages (a stage built from another's runs inherits their sizes)."""

    catalog: Any
    experiment: str
    stages: dict[str, Any] = field(default_factory=dict)
    _sizes: dict[str, int] = field(default_factory=dict)

    def params_of(self, ref: Any) -> dict[str, Any]:
        """Parameters of the stage ``ref`` (``$name``) names; empty when it names none."""
        from builders.graph.params import is_ref, ref_name

        spec = self.stages.get(ref_name(ref)) if is_ref(ref) else None
        return dict(spec.params) if spec is not None else {}

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


def generate(cc: CostContext, prompt_set: str, overrides: dict[str, Any] | None = None, copies: int = 1,
             variant: str | None = None) -> Cost:
    """Answering every prompt of ``prompt_set`` (``copies`` times: steering configurations).
    With ``variant``: these are the stored responses, counted once however many stages read them."""
    new, rollouts = cc.generation(overrides)
    shared = ("responses", variant, prompt_set, new, rollouts) if variant else None
    return Cost((Part("generate", cc.prompts(prompt_set) * rollouts * copies, PROMPT_TOKENS + new, new, shared),))


def read(cc: CostContext, prompt_set: str, overrides: dict[str, Any] | None = None, models: int = 1) -> Cost:
    """One forward pass over prompt + response of every row (activations, judging by perplexity)."""
    new, rollouts = cc.generation(overrides)
    return Cost((Part("read", cc.prompts(prompt_set) * rollouts * models, PROMPT_TOKENS + new, 1),))
