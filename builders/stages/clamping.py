"""Causal clamping of crosscoder latents while a variant generates (seed 000, Day 3).

    python -m builders.clamping --variant finetuned --dictionary crosscoder-demo-instruct-finetuned-general-L12-l1 \\
        --latents 12,40 --mode zero --prompts optimism_questions
    python -m builders.clamping --variant finetuned --dictionary <ref> --top-b-only 5 --mode scale --values 0,2,4 \\
        --prompts optimism_questions

The chosen latents are clamped at the dictionary's layer (set to a value, scaled by a factor,
or zeroed; :func:`transforms.steering.clamp_latents`, one forward hook, correct under KV-cache
decoding) while the variant answers the questions of ``--prompts``. Every run evaluates:

- ``baseline``: no clamp;
- ``chosen``: the chosen latents clamped together, once per value;
- ``random``: the control, as many RANDOM latents of similar activation frequency (from the
  crosscoder's ``data`` table; seeded) clamped the same way: a change that the random latents
  make too is no evidence about the chosen ones.

Answers are judged for the trait (default: the sentiment judge for a trait with a
``sentiment`` direction in the catalog, else the local LLM judge) and coherence with the
calibrated judges, exactly as steering does (:mod:`builders.stages.steering_eval`: the same
generation cache, keyed under ``clamps``, and judge cache; a rerun redoes nothing).

The dictionary used is ONE model's slice of the crosscoder (``--model-index``, default the
variant's position in the crosscoder's pair): ``encoder.weight[m]``, ``encoder.bias``,
``decoder.weight[m]``, ``input_scale[m]``. The crosscoder's code is computed from BOTH models'
activations (``sum_m x_m W_enc[m] + b``); while one model generates only its own are there, so
the clamped latents are encoded from its slice alone: an approximation of the joint code,
closest for latents that fire mostly from this model (B-only latents on B). A BatchTopK
crosscoder with a calibrated threshold ``t`` becomes JumpReLU thresholds ``t / sum_m ||d_m||``.

``--top-b-only N``: the N latents with the lowest ``dec_norm_diff`` among those tagged
``b_only`` (B = the crosscoder's second model), keeping, when the table has Latent Scaling
ratios, only those with ``nu_error`` < 0.5 (genuinely B-specific rather than a sparsity
artefact; a latent without a ratio is left out).

Tables: ``data`` (one row per configuration: control, latents, mode, value, trait mean/std,
coherence mean, delta vs baseline, control delta, n) and ``responses``.
Output dataset: ``clamping-<experiment>-<variant>-<set>-<dictionary>``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.shared.judges import JudgeChoice

if TYPE_CHECKING:
    from transforms.dictionaries import CrossCoder
    from transforms.steering import LatentDictionary

    from builders.stages.steering_eval import Editing, Planned

log = logging.getLogger(__name__)

BUILDER = "builders.clamping"
CODE_VERSION = "1"
MODES = ("zero", "set", "scale")
POSITIONS = ("all", "prompt", "generated", "response")  # transforms.steering.POSITIONS, without the import
DEFAULT_TRAIT_SET = "optimism_instruction"
NU_MAX = 0.5  # --top-b-only keeps nu_error below this (Minder et al. 2025: ~0 = B-specific, ~1 = artefact)
RANDOM_POOL = 10  # a random control latent is drawn among this many nearest in log frequency


@dataclass(frozen=True)
class ClampingOptions:
    """How the chosen latents are clamped; all of it enters the version id."""

    mode: str = "zero"
    values: tuple[float, ...] = ()
    positions: str = "all"
    seed: int = 0

    def check(self) -> None:
        if self.mode not in MODES:
            raise BuildError(f"--mode: unknown mode {self.mode!r} (known: {', '.join(MODES)})")
        if self.positions not in POSITIONS:
            raise BuildError(f"--positions: expected one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.mode != "zero" and not self.values:
            raise BuildError(f"--mode {self.mode} needs --values, e.g. --values 0,2,4")
        if any(not math.isfinite(v) for v in self.values):
            raise BuildError(f"--values must be finite numbers, got {list(self.values)}")

    def clamp_values(self) -> list[float]:
        """One value per configuration (zero has one, value unused)."""
        return [0.0] if self.mode == "zero" else list(dict.fromkeys(float(v) for v in self.values))

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "values": self.clamp_values(), "positions": self.positions, "seed": self.seed}


@dataclass(frozen=True)
class LatentChoice:
    """The latents clamped and their frequency-matched random control."""

    latents: tuple[int, ...]
    random_latents: tuple[int, ...]
    selection: str  # "explicit" | "top_b_only"


def parse_int_list(text: str | None, flag: str) -> list[int]:
    """``"12,40"`` -> ``[12, 40]``; BuildError naming ``flag`` otherwise."""
    try:
        values = [int(x) for x in (text or "").split(",") if x.strip()]
    except ValueError:
        raise BuildError(f"{flag}: expected a comma list of integers, got {text!r}") from None
    if not values:
        raise BuildError(f"{flag}: empty list")
    if len(set(values)) != len(values):
        raise BuildError(f"{flag}: duplicate entries in {values}")
    return values


def parse_values(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BuildError(f"--values: expected a comma list of numbers, got {text!r}") from None


def crosscoder_slice(model: "CrossCoder", index: int) -> "LatentDictionary":
    """Model ``index``'s slice of a crosscoder as a clamping dictionary (the module docstring
    says why it approximates the joint code)."""
    import torch

    from transforms.steering import LatentDictionary

    if not 0 <= index < model.n_models:
        raise BuildError(f"--model-index {index} out of range: the crosscoder has models 0-{model.n_models - 1}")
    with torch.no_grad():
        threshold = None
        if model.kind == "batch_topk" and float(model.threshold.item()) >= 0:
            # encode keeps f where f * sum_m ||d_m|| > t, i.e. pre > t / sum_m ||d_m||
            threshold = float(model.threshold.item()) / model.latent_scale().float().clamp_min(1e-30)
        elif model.kind == "batch_topk":
            log.warning("batch_topk crosscoder without a calibrated threshold: clamped latents encoded with relu")
        return LatentDictionary(model.encoder["weight"][index].float(), model.encoder["bias"].float(),
                                model.decoder["weight"][index].float(), threshold_F=threshold,
                                input_scale=float(model.input_scale[index]))


def slice_sha(dictionary: "LatentDictionary", latents: Sequence[int]) -> str:
    """sha256 of exactly what clamping ``latents`` reads: their encoder columns, biases,
    decoder rows, thresholds, the pre-encoder bias and the input scale (float32 bytes)."""
    import numpy as np

    idx = list(latents)
    digest = hashlib.sha256()
    parts = [dictionary.enc_weight_DF[:, idx], dictionary.enc_bias_F[idx], dictionary.dec_weight_FD[idx],
             None if dictionary.threshold_F is None else dictionary.threshold_F[idx], dictionary.pre_bias_D]
    for part in parts:
        digest.update(b"-" if part is None else np.ascontiguousarray(part.numpy(), dtype=np.float32).tobytes())
    digest.update(repr(float(dictionary.input_scale)).encode())
    return digest.hexdigest()


def clamp_editing(layer: int, dictionary: "LatentDictionary", positions: str) -> "Editing":
    """The clamping family of :class:`builders.stages.steering_eval.Editing`."""
    from transforms.steering import generate_clamped

    from builders.stages.steering_eval import Editing

    def key(config: Any) -> dict[str, Any]:
        # no clamps: the same generations whatever the dictionary, so baselines are shared
        return {"clamps": [{"layer": layer, "positions": positions, "mode": c.mode, "value": repr(c.value),
                            "latents": list(c.latents), "dictionary": slice_sha(dictionary, c.latents)}
                           for c in config.clamps]}

    def generate(model: Any, tokenizer: Any, prompts_ids: Any, configs: Any, gen: Any, max_batch: int) -> Any:
        return generate_clamped(model, tokenizer, prompts_ids, layer, dictionary, configs, gen, positions=positions,
                                max_batch=max_batch)

    def summary(config: Any) -> str:
        return json.dumps([{"layer": layer, "latents": list(c.latents), "mode": c.mode, "value": c.value,
                            "positions": positions} for c in config.clamps])

    return Editing(key, generate, summary)


def latent_rows(store: Store, dictionary: Manifest, n_latents: int) -> list[dict[str, Any]]:
    """The crosscoder's ``data`` table (one row per latent), or no rows when it has none."""
    if "data" not in dictionary.tables:  # random control latents then drawn without frequency matching
        log.warning("%s: no latent table: random latents drawn uniformly", dictionary.ref)
        return []
    rows = store.read_table(dictionary).to_dicts()
    return rows if len(rows) == n_latents else []


def top_b_only(rows: list[dict[str, Any]], n: int, nu_max: float = NU_MAX) -> list[int]:
    """The ``n`` ``b_only`` latents with the lowest ``dec_norm_diff`` (``nu_error`` < ``nu_max``
    when the table has ratios); fewer when fewer qualify, BuildError when none does."""
    if n < 1:
        raise BuildError(f"--top-b-only must be >= 1, got {n}")
    candidates = [r for r in rows if r.get("tag") == "b_only"]
    with_nu = any(r.get("nu_error") is not None for r in rows)
    if with_nu:
        candidates = [r for r in candidates if r.get("nu_error") is not None and r["nu_error"] < nu_max]
    if not candidates:
        extra = f" with nu_error < {nu_max}" if with_nu else ""
        raise BuildError(f"--top-b-only: the crosscoder has no latent tagged b_only{extra}")
    chosen = sorted(candidates, key=lambda r: (r["dec_norm_diff"], r["latent"]))[:n]
    if len(chosen) < n:
        log.warning("--top-b-only %d: only %d latents qualify", n, len(chosen))
    return [int(r["latent"]) for r in chosen]


def matched_random_latents(frequency_F: Sequence[float | None], chosen: Sequence[int], seed: int,
                           pool: int = RANDOM_POOL) -> list[int]:
    """One random latent per chosen latent, drawn (seeded) among the ``pool`` unused latents
    nearest to it in log activation frequency; never a chosen latent, never twice. Unknown
    frequencies count as 0 (never active)."""
    import numpy as np

    n = len(frequency_F)
    if n - len(chosen) < len(chosen):
        raise BuildError(f"the dictionary has {n} latents: too few for {len(chosen)} random control latents")
    freq = np.array([0.0 if f is None else float(f) for f in frequency_F])
    log_f = np.log10(freq + 1e-7)  # never-active latents sit together at the bottom
    if all(f is None for f in frequency_F):
        pool = n  # nothing to match on: uniform over the unused latents
    rng = np.random.default_rng(seed)
    used = set(chosen)
    out = []
    for j in chosen:
        free = np.array([i for i in range(n) if i not in used])
        order = np.lexsort((free, np.abs(log_f[free] - log_f[j])))  # nearest first, ties by index
        pick = int(free[order[:pool]][rng.integers(min(pool, len(free)))])
        out.append(pick)
        used.add(pick)
    return out


def model_index_for(dictionary: Manifest, variant: str, model_index: int | None) -> int:
    if model_index is not None:
        return model_index
    pair = [dictionary.params.get("a"), dictionary.params.get("b")]
    if variant not in pair:
        raise BuildError(f"--variant {variant!r} is neither model of {dictionary.ref} ({pair[0]}, {pair[1]}): "
                         f"pass --model-index")
    return pair.index(variant)


def _plans(choice: LatentChoice, options: ClampingOptions, base: dict[str, Any],
           frequency: dict[int, float | None]) -> list["Planned"]:
    from transforms.steering import Clamp, ClampConfig

    from builders.stages.steering_eval import Planned

    def mean_freq(latents: Sequence[int]) -> float | None:
        got = [f for f in (frequency.get(i) for i in latents) if f is not None]
        return sum(got) / len(got) if got and len(got) == len(latents) else None

    plans = [Planned(ClampConfig((), "baseline"), {**base, "control": "baseline", "latents": "", "n_latents": 0,
                                                   "mode": None, "value": None, "mean_frequency": None})]
    for value in options.clamp_values():
        for control, latents in (("chosen", choice.latents), ("random", choice.random_latents)):
            clamp = Clamp(latents, options.mode, value)
            plans.append(Planned(ClampConfig((clamp,), f"{control}: {clamp.describe()}"),
                                 {**base, "control": control, "latents": ",".join(map(str, latents)),
                                  "n_latents": len(latents), "mode": options.mode,
                                  "value": None if options.mode == "zero" else value,
                                  "mean_frequency": mean_freq(latents)}))
    return plans


def add_control_deltas(runs: list[dict[str, Any]]) -> None:
    """``coherence_delta`` vs the baseline on every row; ``control_delta`` (trait mean minus the
    random control's at the same value) on ``chosen`` rows."""
    base_coherence = runs[0]["coherence_mean"]
    random_by_value = {r["value"]: r["trait_mean"] for r in runs if r["control"] == "random"}
    for row in runs:
        row["coherence_delta"] = (None if row["coherence_mean"] is None or base_coherence is None
                                  else row["coherence_mean"] - base_coherence)
        other = random_by_value.get(row["value"]) if row["control"] == "chosen" else None
        row["control_delta"] = None if other is None or row["trait_mean"] is None else row["trait_mean"] - other


def default_judges(catalog: Catalog, store: Store, trait_set: str) -> JudgeChoice:
    """The sentiment judge for a trait the catalog gives a sentiment direction, else the local judge."""
    from builders.shared.judges import prompt_meta
    from builders.stages.prompts import ensure_prompt_set

    trait = prompt_meta(store, ensure_prompt_set(store, catalog, trait_set)).get("trait")
    return JudgeChoice(trait="sentiment" if (catalog.traits.get(trait) or {}).get("sentiment") else "local")


def clamp_run(
    store: Store,
    catalog: Catalog,
    dictionary_ref: str,
    variant: str,
    prompt_set: str,
    *,
    latents: Sequence[int] = (),
    top_b_only_n: int | None = None,
    options: ClampingOptions = ClampingOptions(),
    experiment: str | None = None,
    model_index: int | None = None,
    layer: int | None = None,
    trait_set: str = DEFAULT_TRAIT_SET,
    subset: int = 0,
    generation: dict[str, Any] | None = None,
    judges: JudgeChoice | None = None,
    max_batch: int | str = "auto",
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    """Build one clamping run (see the module docstring). Bad inputs raise BuildError before
    anything is generated or published."""
    from builders.stages.crosscoder import load_crosscoder_version
    from builders.stages.steering_eval import add_deltas, calibration_parent, dedupe_responses, evaluate, make_setup

    exp = catalog.experiment(experiment)
    catalog.variant(exp.name, variant)
    options.check()
    if bool(latents) == (top_b_only_n is not None):
        raise BuildError("pass exactly one of --latents and --top-b-only")
    dictionary = store.resolve(dictionary_ref)
    if dictionary.kind != "crosscoder":
        raise BuildError(f"{dictionary.ref} is a {dictionary.kind} dataset, not a crosscoder")
    dict_layer = int(dictionary.params["layer"])
    if layer is not None and layer != dict_layer:
        raise BuildError(f"--layer {layer} does not match the dictionary: {dictionary.ref} reads layer {dict_layer}")
    index = model_index_for(dictionary, variant, model_index)
    model = load_crosscoder_version(store, dictionary)
    sliced = crosscoder_slice(model, index)
    rows = latent_rows(store, dictionary, sliced.n_latents)
    chosen = list(latents) if latents else top_b_only(rows, int(top_b_only_n or 0))
    try:
        sliced.check_latents(chosen)
    except ValueError as err:
        raise BuildError(f"--latents: {err} ({dictionary.ref})") from None
    frequency = {int(r["latent"]): r.get("frequency") for r in rows}
    randoms = matched_random_latents([frequency.get(i) for i in range(sliced.n_latents)], chosen, options.seed)
    choice = LatentChoice(tuple(chosen), tuple(randoms), "explicit" if latents else "top_b_only")

    judges = judges or default_judges(catalog, store, trait_set)
    setup = make_setup(store, catalog, exp.name, variant, prompt_set, subset=subset, generation=generation,
                       choice=judges, trait_set=trait_set, max_batch=max_batch, quiet=quiet)
    n_layers, d_model = setup.loaded.n_layers, setup.loaded.d_model
    if not 0 <= dict_layer < n_layers:
        raise BuildError(f"{dictionary.ref} reads layer {dict_layer}; the {variant!r} model has layers 0-{n_layers - 1}")
    if sliced.d_model != d_model:
        raise BuildError(f"{dictionary.ref} has width {sliced.d_model}, the {variant!r} model's d_model is {d_model}")

    params = {"experiment": exp.name, "variant": variant, "dictionary": dictionary.ref, "model_index": index,
              "layer": dict_layer, "latents": list(choice.latents), "random_latents": list(choice.random_latents),
              "selection": choice.selection, "top_b_only": top_b_only_n, **options.params(), "trait_set": trait_set,
              **setup.params()}
    spec = BuildSpec(name=names.clamping(exp.name, variant, dictionary.name, prompt_set), kind="clamping",
                     builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents={"dictionary": dictionary.ref, **calibration_parent(setup)}, identity=dict(setup.identity))
    base = {"dictionary": dictionary.ref, "variant": variant, "model_index": index, "layer": dict_layer,
            "positions": options.positions, "selection": choice.selection}

    def produce(writer: Any) -> None:
        editing = clamp_editing(dict_layer, sliced, options.positions)
        runs, responses = evaluate(setup, _plans(choice, options, base, frequency), editing)
        add_deltas(runs, runs[0]["trait_mean"])
        add_control_deltas(runs)
        writer.write_table(runs)
        writer.write_table(dedupe_responses(responses), table="responses")
        writer.summary.update({"configs": len(runs), "responses": len(responses), **asdict(choice),
                               "baseline_trait": runs[0]["trait_mean"], "batch_sizes": sorted(setup.batch_sizes),
                               "allow_uncalibrated": setup.choice.allow_uncalibrated,
                               "encoding": "one model's crosscoder slice (approximates the joint code)"})

    return store.build(spec, produce, force=force)
