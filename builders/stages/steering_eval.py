"""Evaluate steering configurations: generate under each, judge every response, summarize.

Shared by :mod:`builders.stages.steering` (single vectors: baseline, adaptive search, grids,
ablation) and :mod:`builders.stages.combinations` (seed 001 phase 2). A :class:`SteeringSetup`
holds what every evaluation of one run needs (application model, steering questions,
generation settings, judge); :func:`evaluate` turns a list of :class:`Planned`
configurations into one summary row per configuration and one row per response. Other ways
of changing generation plug in through :class:`Editing` (:mod:`builders.stages.clamping`:
clamping dictionary latents), with the same caches and judging.

Finished configurations are never redone: each configuration's generations are cached in
the store (``_cache/steering``) keyed by the model identity, the prompt token ids, the
generation settings and the exact edits (layer, kind, positions, coefficient, sha256 of
the vector's float32 bytes), and judge scores by the judge cache. A run killed halfway,
or a new run sharing configurations with an old one (a finer grid, more search steps),
picks up what was finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from store import Store
from store.kvcache import KeyedCache

from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, progress
from builders.shared.judges import JudgeChoice, coherence_scorer, prompt_meta, require_calibrated, score_items, trait_scorer
from builders.stages.prompts import ensure_prompt_set
from builders.stages.responses import format_row, model_identity
from builders.shared.variants import check_runs, variant_model

log = logging.getLogger(__name__)

CPU_MAX_BATCH = 64  # ``--max-batch auto`` off CUDA: the rows per call CPU runs always used
# a steering row keeps no activations and shares its prompt's prefill: more rows than other stages fit
AUTO_MAX_BATCH = 256


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    prompt_ids: tuple[int, ...]


@dataclass
class Planned:
    """A configuration to evaluate and the run-table columns describing it."""

    config: Any  # transforms.steering.SteeringConfig
    columns: dict[str, Any]


@dataclass
class SteeringSetup:
    store: Store
    catalog: Catalog
    loaded: Any  # transforms.models.LoadedModel of the application variant
    identity: dict[str, Any]
    questions: list[Question]
    questions_set: str
    gen: Any  # transforms.generation.GenerationConfig
    choice: JudgeChoice
    experiment: str
    variant: str
    trait_meta: dict[str, Any]  # prompt_set.json of the set whose trait is scored
    subset: int = 0
    max_batch: int = 64  # rows per batched generate call, resolved (``auto`` -> a size); halved on out-of-memory
    quiet: bool = False
    batch_sizes: set[int] = field(default_factory=set)  # the sizes used (run info: the manifest summary)
    _h_norms: dict[int, float] = field(default_factory=dict)
    _judges: tuple[Any, Any, Any] | None = None

    def judges(self) -> tuple[Any, Any, Any]:
        """``(trait scorer, coherence scorer, calibration or None)``, built on first use (after
        the caller's cheap checks) and refused when the coherence judge is not calibrated."""
        if self._judges is None:
            catalog = self.catalog
            trait = trait_scorer(self.store, catalog, self.choice, self.trait_meta)
            coherence, calibration = coherence_scorer(self.store, catalog, self.experiment, self.variant, self.choice,
                                                      self.quiet)
            require_calibrated(self.choice, calibration)
            self._judges = (trait, coherence, calibration)
        return self._judges

    def h_norms(self, layers: list[int]) -> dict[int, float]:
        """Mean residual norm per layer over the questions' prompt tokens (cached per setup)."""
        from transforms.steering import mean_residual_norms

        missing = [k for k in layers if k not in self._h_norms]
        if missing:
            self._h_norms.update(mean_residual_norms(self.loaded.model, [q.prompt_ids for q in self.questions], missing))
        return {k: self._h_norms[k] for k in layers}

    def params(self) -> dict[str, Any]:
        """What of the setup enters a run's version id."""
        return {"questions_set": self.questions_set, "subset": self.subset, "questions": [q.id for q in self.questions],
                "generation": self.gen.as_dict(), "judges": self.choice.as_dict(),
                "judge_identity": {"trait": self.judges()[0].identity(), "coherence": self.judges()[1].identity()}}


def calibration_parent(setup: SteeringSetup) -> dict[str, str]:
    """``{"coherence_calibration": ref}`` when the coherence judge has a calibration."""
    calibration = setup.judges()[2]
    feeds_scores = setup.choice.coherence == "perplexity"  # its fitted map is an input; an LLM judge's is not
    return {"coherence_calibration": calibration.ref} if calibration is not None and feeds_scores else {}


def steering_questions(store: Store, catalog: Catalog, prompt_set: str, subset: int = 0) -> tuple[list[dict[str, str]], Any]:
    """``([{id, text}], prompts manifest)``: a trait set's steering questions, or the prompts
    of an inference set; the first ``subset`` of them when ``subset > 0``."""
    manifest = ensure_prompt_set(store, catalog, prompt_set)
    meta = json.loads(store.read_bytes(manifest, "prompt_set.json"))
    steering = meta.get("steering") or {}
    if steering.get("questions"):
        items = [{"id": f"q{i:03d}", "text": q} for i, q in enumerate(steering["questions"])]
    elif meta.get("kind") == "inference":
        items = [{"id": r["prompt_id"], "text": r["prompt"]} for r in store.read_table(manifest).to_dicts()]
    else:
        raise BuildError(f"prompt set {prompt_set!r} has no steering questions (steering.json) to steer on")
    if subset < 0:
        raise BuildError(f"--subset must be >= 0, got {subset}")
    return (items[:subset] if subset else items), manifest


def make_setup(
    store: Store, catalog: Catalog, experiment: str, variant: str, questions_set: str, *,
    subset: int = 0, generation: dict[str, Any] | None = None, choice: JudgeChoice | None = None,
    trait_set: str | None = None, max_batch: int | str = "auto", quiet: bool = False,
) -> SteeringSetup:
    """Load the application variant and format the steering questions for it.

    ``trait_set``: the prompt set whose trait the trait judge scores (default:
    ``questions_set``). The coherence judge is the application variant's, unsteered, for
    the perplexity judge, and must be calibrated (:func:`builders.shared.judges.require_calibrated`).
    ``max_batch``: rows per batched generate call, or ``"auto"`` (:data:`CPU_MAX_BATCH` off
    CUDA, else from the free memory)."""
    from transforms.batching import parse_batch_size, resolve_batch_size
    from transforms.sequences import GenerationConfig

    entry = catalog.variant(experiment, variant)
    check_runs(entry)  # a device or quantization this machine cannot run: before anything is published
    try:
        request = parse_batch_size(max_batch)
    except ValueError as err:
        raise BuildError(f"--max-batch: {err}") from None
    items, q_manifest = steering_questions(store, catalog, questions_set, subset)
    t_manifest = q_manifest if trait_set in (None, questions_set) else ensure_prompt_set(store, catalog, trait_set)
    choice = choice or JudgeChoice()
    defaults = {"max_new_tokens": 32, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    defaults.update(catalog.stage_defaults("steering"))
    defaults.update({k: v for k, v in (generation or {}).items() if v is not None})
    try:
        gen = GenerationConfig(**{k: defaults[k] for k in ("max_new_tokens", "temperature", "top_p", "seed")})
    except ValueError as err:
        raise BuildError(f"steering generation: {err}") from None
    loaded = variant_model(store, entry)
    questions = [Question(it["id"], it["text"], tuple(format_row(loaded.tokenizer, it["text"], None, "instruction").ids))
                 for it in items]
    longest = max((len(q.prompt_ids) for q in questions), default=1)
    size = resolve_batch_size(request, loaded.model, longest, new_tokens=gen.max_new_tokens,
                              limit=AUTO_MAX_BATCH, cpu_batch=CPU_MAX_BATCH)
    return SteeringSetup(store, catalog, loaded, model_identity(catalog, experiment, variant, store), questions,
                         questions_set, gen, choice, experiment, variant, prompt_meta(store, t_manifest), subset,
                         size, quiet)


def setup_from_run(store: Store, catalog: Catalog, run: Any, *, max_batch: int | str = "auto",
                   quiet: bool = False) -> SteeringSetup:
    """The setup a published steering run used (same model, questions, generation, judge)."""
    p = run.params
    choice = JudgeChoice.from_dict(p["judges"], allow_uncalibrated=bool(run.summary.get("allow_uncalibrated")))
    return make_setup(store, catalog, p["experiment"], p["application"], p["questions_set"], subset=p["subset"],
                      generation=p["generation"], choice=choice, trait_set=p.get("trait_set"), max_batch=max_batch,
                      quiet=quiet)


def baseline_plan(base: dict[str, Any]) -> Planned:
    """The unsteered configuration, with the run-table columns a baseline row carries."""
    from transforms.steering import SteeringConfig

    return Planned(SteeringConfig((), "baseline"), {**base, "mode": "baseline", "step": None, "layer": None,
                                                  "layers": "", "coef": 0.0, "kind": "none", "positions": None,
                                                  "v_norm": None, "h_norm": None, "perturbation_ratio": None})


def vector_sha(vector: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).hexdigest()


# "response" took in the last prompt position (steering code version 3): its new key keeps
# old generations from being reused, and "generated", the old meaning, keeps the old key.
_POSITION_KEYS = {"response": "response+prompt[-1]", "generated": "response"}


@dataclass(frozen=True)
class Editing:
    """How one family of configurations changes generation: the seam :func:`evaluate` takes
    (steering edits by default; :mod:`builders.stages.clamping` plugs latent clamps in).

    ``key(config)``: JSON-able entries naming the configuration's generations beside the model,
    prompts and generation settings (a family keys under its own name, so families never share
    cache entries); ``generate(model, tokenizer, prompts_ids, configs, gen, max_batch)``:
    ``result[config][prompt]``; ``summary(config)``: the run row's ``config`` column (JSON)."""

    key: Callable[[Any], dict[str, Any]]
    generate: Callable[..., list[list[Any]]]
    summary: Callable[[Any], str]


def _steering_key(config: Any) -> dict[str, Any]:
    return {"edits": [{"layer": e.layer, "kind": e.kind, "positions": _POSITION_KEYS.get(e.positions, e.positions),
                       "coef": repr(float(e.coef)), "vector": vector_sha(e.vector_D.numpy())} for e in config.edits]}


def _steering_generate(model: Any, tokenizer: Any, prompts_ids: Any, configs: Any, gen: Any, max_batch: int) -> Any:
    from transforms.steering import generate_steered  # looked up per call: tests patch it

    return generate_steered(model, tokenizer, prompts_ids, configs, gen, max_batch=max_batch)


def _steering_summary(config: Any) -> str:
    return json.dumps([{"layer": e.layer, "kind": e.kind, "positions": e.positions, "coef": e.coef,
                        "vector_norm": float(e.vector_D.norm())} for e in config.edits])


STEERING = Editing(_steering_key, _steering_generate, _steering_summary)


def config_key(setup: SteeringSetup, config: Any, editing: Editing = STEERING) -> str:
    """Identity of one configuration's generations (see the module docstring)."""
    payload = {"model": setup.identity, "prompts": [list(q.prompt_ids) for q in setup.questions],
               "generation": setup.gen.as_dict(), **editing.key(config)}
    return json.dumps(payload, sort_keys=True)


def run_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _generate_missing(setup: SteeringSetup, planned: list[Planned], keys: list[str],
                      editing: Editing = STEERING) -> dict[str, list[dict[str, Any]]]:
    """Generations of every configuration, cache first; new ones are flushed after each
    batched call so that an interrupted run keeps them."""
    from transforms.batching import run_slices

    cache = KeyedCache(setup.store, "steering", ["generations"])
    found = {k: json.loads(v["generations"]) for k, v in cache.get_many(set(keys)).items()}
    todo = list(dict.fromkeys(k for k in keys if k not in found))
    config_of = {k: p.config for k, p in zip(keys, planned)}
    n_questions = max(1, len(setup.questions))
    if todo:
        log.info("steering: %d configurations to generate, %d cached", len(todo), len(set(keys)) - len(todo))
    tok = setup.loaded.tokenizer
    bar = progress(len(todo), "steered generations", setup.quiet)

    def call(lo: int, hi: int, size: int) -> None:
        # one batched call is the retried piece: it stores nothing until it has finished
        chunk = todo[lo:hi]
        outs = editing.generate(setup.loaded.model, tok, [q.prompt_ids for q in setup.questions],
                                [config_of[k] for k in chunk], setup.gen, size)
        new = []
        for key, gens in zip(chunk, outs):
            found[key] = [{"response_ids": g.response_ids, "finish_reason": g.finish_reason,
                           "response": tok.decode(g.response_ids, skip_special_tokens=True)} for g in gens]
            new.append((key, {"generations": json.dumps(found[key])}))
        cache.put_many(new)
        bar.update(len(chunk))

    try:
        used = run_slices(len(todo), setup.max_batch, call, what="steered generation",
                          span=lambda size: size // n_questions)
    finally:
        bar.close()
    if used:
        setup.batch_sizes.update(used)
        setup.max_batch = min(used)  # later evaluations of this run start at the size that fitted
    return found


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def _std(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    mean = sum(got) / len(got)
    return math.sqrt(sum((v - mean) ** 2 for v in got) / len(got))  # population std (ddof=0)


def evaluate(setup: SteeringSetup, planned: list[Planned],
             editing: Editing = STEERING) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(run rows, response rows)`` for ``planned`` configurations, in order.

    Run rows carry the planned columns plus ``run_id``, ``label``, ``trait_mean``,
    ``trait_std`` (ddof=0), ``coherence_mean``, ``relevance_mean``, ``n``, ``n_scored``
    and ``config`` (JSON of the edits). Deltas against a baseline are the caller's
    (:func:`add_deltas`). ``editing``: how the configurations change generation (:class:`Editing`)."""
    keys = [config_key(setup, p.config, editing) for p in planned]
    generations = _generate_missing(setup, planned, keys, editing)
    items, owners = [], []
    for i, key in enumerate(keys):
        for q, g in zip(setup.questions, generations[key]):
            items.append((q.text, g["response"]))
            owners.append((i, q, g))
    trait, coherence, _ = setup.judges()
    scores = score_items(trait, coherence, setup.store, items, setup.quiet)
    response_rows: list[dict[str, Any]] = []
    per_run: dict[int, list[dict[str, Any]]] = {}
    for j, (i, q, g) in enumerate(owners):
        row = {"run_id": run_id(keys[i]), "question_id": q.id, "question": q.text, "response": g["response"],
               "n_tokens": len(g["response_ids"]), "finish_reason": g["finish_reason"],
               "trait": scores["trait_score"][j], "coherence": scores["coherence"][j],
               "coherence_raw": scores["coherence_raw"][j], "relevance": scores["relevance"][j]}
        response_rows.append(row)
        per_run.setdefault(i, []).append(row)
    run_rows = []
    for i, (p, key) in enumerate(zip(planned, keys)):
        rows = per_run.get(i, [])
        run_rows.append({
            **p.columns, "run_id": run_id(key), "label": p.config.describe(),
            "trait_mean": _mean([r["trait"] for r in rows]), "trait_std": _std([r["trait"] for r in rows]),
            "coherence_mean": _mean([r["coherence"] for r in rows]),
            "relevance_mean": _mean([r["relevance"] for r in rows]),
            "n": len(rows), "n_scored": sum(r["trait"] is not None for r in rows),
            "config": editing.summary(p.config),
        })
    return run_rows, response_rows


def add_deltas(run_rows: list[dict[str, Any]], baseline_trait: float | None) -> None:
    """``baseline_trait`` and ``delta = trait_mean - baseline_trait`` on every run row."""
    for row in run_rows:
        row["baseline_trait"] = baseline_trait
        row["delta"] = None if row["trait_mean"] is None or baseline_trait is None else row["trait_mean"] - baseline_trait


def dedupe_responses(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One response row per (run, question): a configuration evaluated twice appears once."""
    seen, out = set(), []
    for row in rows:
        key = (row["run_id"], row["question_id"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out
