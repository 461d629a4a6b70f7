"""Choosing judges per metric, building them, and scoring (question, answer) items with them.

Trait judges: ``local`` (SmolLM2 exact-probability LLM judge), ``openai`` (any
OpenAI-compatible endpoint), ``sentiment`` (VADER; direction from the catalog trait's
``sentiment``), ``lexicon`` (the trait dir's ``lexicon.txt``). Coherence judges: ``local``,
``openai`` (coherence capped by relevance) and ``perplexity`` (reference-model NLL +
degeneracy signals, calibrated; see :mod:`transforms.judge.perplexity`). ``--judge X`` sets
both to the LLM judge X. Every scorer's identity enters the version ids of what it scored.

Calibration gate: a coherence judge must have a published ``judge-calibration-*`` version
(``builders.calibration``) whose fluent-vs-degenerate AUROC is at least
:data:`MIN_COHERENCE_AUROC` before steering or its search trusts it, unless
``--allow-uncalibrated``.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

from store import Store

from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, cached_model, placement, progress
from builders.shared.judge_cache import StoreScoreCache

TRAIT_JUDGES = ("local", "openai", "sentiment", "lexicon")
COHERENCE_JUDGES = ("local", "openai", "perplexity")
LLM_JUDGES = ("local", "openai")
DEFAULT_LOCAL_JUDGE = "pkg:smollm2-135m-instruct"
OPENAI_MODES = ("single-token", "digits")
MIN_COHERENCE_AUROC = 0.9


@dataclass(frozen=True)
class JudgeChoice:
    """Which judge scores each metric. ``reference``: the perplexity judge's reference model
    (a catalog model name; default: the variant whose answers are scored, unsteered)."""

    trait: str = "local"
    coherence: str = "perplexity"
    model: str | None = None
    reference: str | None = None
    allow_uncalibrated: bool = False
    openai_mode: str | None = None  # None: $OPENAI_JUDGE_MODE, else single-token

    def __post_init__(self) -> None:
        if self.trait not in TRAIT_JUDGES:
            raise BuildError(f"--trait-judge: unknown judge {self.trait!r} (known: {', '.join(TRAIT_JUDGES)})")
        if self.coherence not in COHERENCE_JUDGES:
            raise BuildError(f"--coherence-judge: unknown judge {self.coherence!r} (known: {', '.join(COHERENCE_JUDGES)})")
        if "openai" in (self.trait, self.coherence) and not self.model:
            raise BuildError("the openai judge needs --judge-model (e.g. gpt-4.1-mini)")
        if self.openai_mode is not None and self.openai_mode not in OPENAI_MODES:
            raise BuildError(f"--judge-mode: unknown mode {self.openai_mode!r} (known: {', '.join(OPENAI_MODES)})")

    def as_dict(self) -> dict[str, Any]:
        """What enters version ids: the model only when an LLM judge uses it, the reference
        only for the perplexity judge."""
        uses_llm = self.trait in LLM_JUDGES or self.coherence in LLM_JUDGES
        out = {"trait": self.trait, "coherence": self.coherence, "model": self.model if uses_llm else None,
               "reference": self.reference if self.coherence == "perplexity" else None}
        if "openai" in (self.trait, self.coherence):  # only then, so other version ids stay as they were
            out["openai_mode"] = openai_mode(self.openai_mode)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], allow_uncalibrated: bool = False) -> "JudgeChoice":
        return cls(data["trait"], data["coherence"], data.get("model"), data.get("reference"), allow_uncalibrated,
                   data.get("openai_mode"))


def openai_mode(mode: str | None) -> str:
    """The OpenAI judge's mode: ``mode``, else ``$OPENAI_JUDGE_MODE``, else single-token."""
    chosen = mode or os.environ.get("OPENAI_JUDGE_MODE") or "single-token"
    if chosen not in OPENAI_MODES:
        raise BuildError(f"OPENAI_JUDGE_MODE: unknown mode {chosen!r} (known: {', '.join(OPENAI_MODES)})")
    return chosen


def add_judge_args(parser: argparse.ArgumentParser, calibration_gate: bool = False) -> None:
    group = parser.add_argument_group("judges")
    group.add_argument("--judge", metavar="NAME", help=f"set both judges to this LLM judge ({', '.join(LLM_JUDGES)})")
    group.add_argument("--trait-judge", metavar="NAME", default="local",
                       help=f"judge of the trait score ({', '.join(TRAIT_JUDGES)})")
    group.add_argument("--coherence-judge", metavar="NAME", default="perplexity",
                       help=f"judge of coherence ({', '.join(COHERENCE_JUDGES)})")
    group.add_argument("--judge-model", help=f"LLM judge model (local default {DEFAULT_LOCAL_JUDGE})")
    group.add_argument("--judge-mode", choices=OPENAI_MODES, default=None,
                       help="openai judge: single-token (OpenAI models: 0-100 are single tokens) or digits (vLLM, "
                            "llama.cpp serving models that split numbers into digits: prefilled answer, digit walk); "
                            "default $OPENAI_JUDGE_MODE, else single-token")
    group.add_argument("--coherence-reference", metavar="MODEL",
                       help="perplexity judge's reference: a catalog model (default: the scored variant, unsteered)")
    if calibration_gate:
        group.add_argument("--allow-uncalibrated", action="store_true",
                           help=f"use a coherence judge whose calibration AUROC is below {MIN_COHERENCE_AUROC}")


def judge_choice(args: argparse.Namespace) -> JudgeChoice:
    if args.judge and args.judge not in LLM_JUDGES:
        raise BuildError(f"--judge sets both judges and takes an LLM judge ({', '.join(LLM_JUDGES)}), got "
                         f"{args.judge!r}: use --trait-judge / --coherence-judge to choose each")
    trait, coherence = (args.judge, args.judge) if args.judge else (args.trait_judge, args.coherence_judge)
    return JudgeChoice(trait, coherence, args.judge_model, args.coherence_reference,
                       getattr(args, "allow_uncalibrated", False), getattr(args, "judge_mode", None))


def llm_judge(backend: str, model: str | None, concurrency: int = 8, mode: str | None = None) -> Any:
    """An LLM judge: ``local`` (in-process HF chat model) or ``openai`` (OPENAI_API_KEY,
    OPENAI_BASE_URL; ``mode`` see :func:`openai_mode`)."""
    from transforms.judge import LocalJudge, OpenAIJudge

    if backend == "local":
        return LocalJudge(cached_model(model or DEFAULT_LOCAL_JUDGE))
    if not model:
        raise BuildError("--judge openai needs --judge-model (e.g. gpt-4.1-mini)")
    return OpenAIJudge(model, base_url=os.environ.get("OPENAI_BASE_URL"), concurrency=concurrency,
                       mode=openai_mode(mode))


def judge_dtype() -> str | None:
    """The dtype judge models loaded through :func:`~builders.shared.common.cached_model` run in
    (``--dtype``, else the device's default), when it is not float32: it changes their
    scores, so it is part of their identity -- only then, so float32 ids and cache keys
    from before dtypes were settings stay valid."""
    dtype = placement()[1]
    return None if dtype == "float32" else dtype


def _dtype_mark(dtype: str | None) -> str:
    return "" if dtype in (None, "float32") else f"+dtype:{dtype}"


def local_judge_name(model: str | None) -> str:
    """The local judge's identity without loading it: what :attr:`LocalJudge.model_id`
    reports for the builders' settings (model, revision, default prefill), plus the dtype
    mark of :func:`judge_dtype` (``_LazyLLM.model_id`` adds the same, the cache key)."""
    import hashlib

    from transforms.judge import DEFAULT_PREFILL
    from transforms.models import model_fingerprint

    ref = model or DEFAULT_LOCAL_JUDGE
    revision = model_fingerprint(ref)
    prefill = hashlib.sha256(DEFAULT_PREFILL.encode()).hexdigest()[:8]
    return f"local:{ref}" + (f"@{revision}" if revision else "") + f"+prefill:{prefill}" + _dtype_mark(judge_dtype())


class _LazyLLM:
    """Builds the local judge on first use: identities are known before any model loads."""

    def __init__(self, backend: str, model: str | None) -> None:
        self.backend, self.model = backend, model
        self._judge: Any = None

    @property
    def model_id(self) -> str:
        """The judge's model id (what keys its cached scores), with the loaded model's dtype
        when it is not float32: bf16 scores never reuse float32 ones."""
        judge = self.get()
        loaded = getattr(judge, "loaded", None)
        return judge.model_id + _dtype_mark(None if loaded is None else loaded.dtype)

    def get(self) -> Any:
        if self._judge is None:
            self._judge = llm_judge(self.backend, self.model)
        return self._judge

    def score_prompts(self, prompts: list[str], on_result: Any = None) -> list[Any]:
        return self.get().score_prompts(prompts, on_result)


def _llm_scorer(store: Store, backend: str, model: str | None, kind: str, trait_template: Any,
                mode: str | None = None) -> Any:
    """An LLM scorer whose identity names the judge fully (endpoint, mode, revision, ...).
    The OpenAI judge is built here, so a missing key or bad setting stops a builder before
    it generates anything; the local judge loads on first use."""
    from transforms.judge import load_templates
    from transforms.judge import LLMScorer

    templates = load_templates()
    chosen = {"trait": trait_template} if kind == "trait" else {k: templates[k] for k in ("coherence", "relevance")}
    if backend == "openai":
        judge: Any = llm_judge(backend, model, mode=mode)
        name = judge.model_id
    else:
        judge, name = _LazyLLM(backend, model), local_judge_name(model)
    return LLMScorer(judge, backend, kind, chosen, StoreScoreCache(store), model_name=name)


def trait_template(prompt_meta: dict[str, Any]) -> Any:
    from transforms.judge import load_templates
    from transforms.judge import trait_template as bind

    steering = prompt_meta.get("steering") or {}
    return bind(load_templates(), prompt_meta.get("definition"), steering.get("eval_prompt"),
                prompt_meta.get("trait") or prompt_meta["name"])


def trait_scorer(store: Store, catalog: Catalog, choice: JudgeChoice, prompt_meta: dict[str, Any]) -> Any:
    """The trait scorer for a prompt set's trait (``prompt_meta``: its ``prompt_set.json``)."""
    if choice.trait in LLM_JUDGES:
        return _llm_scorer(store, choice.trait, choice.model, "trait", trait_template(prompt_meta), choice.openai_mode)
    trait = prompt_meta.get("trait")
    if choice.trait == "sentiment":
        from transforms.judge import SentimentScorer

        polarity = (catalog.traits.get(trait) or {}).get("sentiment", "positive")
        return SentimentScorer(direction=-1 if polarity == "negative" else 1)
    from transforms.judge import Lexicon, LexiconError, LexiconScorer

    text = prompt_meta.get("lexicon")
    if text is None:
        raise BuildError(f"--trait-judge lexicon: prompt set {prompt_meta['name']!r} has no lexicon.txt")
    try:
        return LexiconScorer(Lexicon.from_text(text, source=f"{prompt_meta['name']}/lexicon.txt"))
    except LexiconError as err:
        raise BuildError(str(err)) from None


def coherence_scorer(store: Store, catalog: Catalog, experiment: str, variant: str, choice: JudgeChoice,
                     quiet: bool = True) -> tuple[Any, Any]:
    """``(scorer, calibration manifest or None)``. The perplexity judge needs its
    calibration (built here when missing); LLM judges' calibration is looked up only."""
    from builders.stages.calibration import calibration_for

    if choice.coherence in LLM_JUDGES:  # its calibration gates steering but is no input of its scores
        scorer = _llm_scorer(store, choice.coherence, choice.model, "coherence", None, choice.openai_mode)
        return scorer, calibration_for(store, catalog, experiment, variant, choice, build=False, quiet=quiet)
    manifest = calibration_for(store, catalog, experiment, variant, choice, build=True, quiet=quiet)
    from builders.stages.calibration import perplexity_scorer

    return perplexity_scorer(store, catalog, experiment, variant, choice, manifest), manifest


def require_calibrated(choice: JudgeChoice, calibration: Any) -> None:
    """Refuse a coherence judge without a published AUROC ≥ :data:`MIN_COHERENCE_AUROC`."""
    if choice.allow_uncalibrated:
        return
    if calibration is None:
        raise BuildError(f"coherence judge {choice.coherence!r} has no published calibration: run python -m "
                         f"builders.calibration --judge {choice.coherence} (or pass --allow-uncalibrated)")
    auroc = (calibration.summary or {}).get("coherence_auroc")
    if auroc is None or auroc < MIN_COHERENCE_AUROC:
        shown = "none" if auroc is None else f"{auroc:.3f}"
        raise BuildError(f"coherence judge {choice.coherence!r} separates fluent from degenerate answers with AUROC "
                         f"{shown} < {MIN_COHERENCE_AUROC} ({calibration.ref}): its coherence cannot gate steering; "
                         f"choose --coherence-judge perplexity or pass --allow-uncalibrated")


def score_items(trait: Any, coherence: Any, store: Store, items: list[tuple[str, str]],
                quiet: bool = True) -> dict[str, list]:
    """``trait_score``, ``coherence`` (and, for LLM coherence, ``coherence_raw``, ``relevance``)."""
    from transforms.judge import score_cached

    cache = StoreScoreCache(store)
    bar = progress(2 * len(items), "judge scores", quiet)
    try:
        tick = lambda index, score: bar.update(1)  # noqa: E731
        trait_scores = score_cached(trait, items, cache, on_result=tick)
        coherence_scores = score_cached(coherence, items, cache, on_result=tick)
    finally:
        bar.close()
    detail = getattr(coherence, "last_detail", None) or {}
    none = [None] * len(items)
    return {"trait_score": trait_scores, "coherence": coherence_scores,
            "coherence_raw": detail.get("coherence_raw", none), "relevance": detail.get("relevance", none)}


def scorer_identities(trait: Any, coherence: Any) -> dict[str, Any]:
    return {"trait": trait.identity(), "coherence": coherence.identity()}


def prompt_meta(store: Store, manifest: Any) -> dict[str, Any]:
    return json.loads(store.read_bytes(manifest, "prompt_set.json"))
