"""Activation and head patching on persona pairs (issue 16 item 4).

    python -m builders.patching --variant instruct --prompt-set persona --kind residual --positions -12:

For every pair of a persona set (clean = the expert persona, corrupted = the child one, aligned
token for token: :func:`transforms.prompts.persona.tokenize_pairs` refuses the others, naming
them), clean activations are written into the corrupted run one target at a time
(:func:`transforms.circuits.patch_sweep`, many targets per forward) and the metric is read:
``logit(expert token) - logit(simple token)`` at the last prompt position. Kinds:

- ``residual`` / ``attn_out`` / ``mlp_out``: every layer x position of ``--positions``;
- ``heads``: every attention head (of ``--layers``, or ``--heads``) at all positions at once;
- ``heads_by_position``: every head at each position of ``--positions``.

Published ``patching-<experiment>-<variant>-<set>-<kind>``:

- ``data``: one row per pair x target: ``pair_id, component, layer, head, position`` (absolute;
  null = all), ``from_end`` (position - n_tokens: -1 = last), ``token`` / ``clean_token`` (the
  corrupted / clean prompt's token there), ``metric`` (raw), ``normalised`` (clean = 1,
  corrupted = 0; null for a pair whose ``|clean - corrupted| < min_gap``);
- ``baselines``: per pair ``n_tokens, clean_metric, corrupted_metric, gap`` (clean - corrupted),
  ``used`` (``|gap| >= min_gap``), the tracked tokens;
- ``figures/``: per-pair layer x position heatmaps (first 4 pairs), the mean normalised effect
  over used pairs by offset from the end, and for heads a layer x head heatmap
  (:mod:`builders.stages.patching_figures`).

Everything is checked before the version starts (one line, nothing published); an up-to-date
rebuild loads no weights (the version id comes from the token ids, not from the model's run).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_layer_count, progress

if TYPE_CHECKING:
    from transforms.prompts.persona import TokenizedPair
    from transforms.sequences import Position

log = logging.getLogger(__name__)

BUILDER = "builders.patching"
CODE_VERSION = "1"
KINDS: tuple[str, ...] = ("residual", "attn_out", "mlp_out", "heads", "heads_by_position")
_HEAD_RE = re.compile(r"^(?:L(\d+)H(\d+)|(\d+)\.(\d+))$", re.IGNORECASE)


@dataclass(frozen=True)
class PatchOptions:
    """Settings; all but ``batch_size`` (rows per forward: speed only) enter the version id."""

    kind: str = "residual"
    layers: str = "all"
    positions: str = "all"
    heads: str | None = None
    pairs: tuple[str, ...] | None = None
    limit_pairs: int | None = None
    min_gap: float = 0.5
    batch_size: int = 64

    def check(self) -> None:
        if self.kind not in KINDS:
            raise BuildError(f"--kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.limit_pairs is not None and self.limit_pairs < 1:
            raise BuildError(f"--limit-pairs {self.limit_pairs}: must be at least 1")
        if self.batch_size < 1:
            raise BuildError(f"--batch-size {self.batch_size}: must be at least 1")
        if not self.min_gap >= 0:
            raise BuildError(f"--min-gap {self.min_gap}: must be >= 0")
        if self.heads is not None and not self.kind.startswith("heads"):
            raise BuildError(f"--heads applies to --kind heads / heads_by_position, not {self.kind}")
        if self.heads is not None and self.layers != "all":
            raise BuildError("give --layers or --heads, not both (--heads names the layers itself)")
        if self.kind == "heads" and self.positions != "all":
            raise BuildError("--kind heads patches each head at every position at once; "
                             "use --kind heads_by_position for --positions")

    def params(self) -> dict[str, Any]:
        return {"kind": self.kind, "layers": self.layers, "positions": self.positions, "heads": self.heads,
                "pairs": list(self.pairs) if self.pairs else None, "limit_pairs": self.limit_pairs,
                "min_gap": float(self.min_gap)}


@dataclass(frozen=True)
class PairPlan:
    """One tokenized pair and the targets patched in it (``positions``: absolute indices)."""

    pair: TokenizedPair
    positions: tuple[int, ...]
    expert_token: str
    simple_token: str


def parse_positions(spec: str) -> Position:
    """``all`` (every prompt token), a slice or index of offsets like ``-12:`` / ``-1``
    (shorthand for ``prompt[-12:]``), or a position expression ``prompt[...]`` / ``all[...]``."""
    from transforms.sequences import parse_position

    text = spec.strip()
    if text == "all":
        text = "prompt[:]"
    elif "[" not in text:
        text = f"prompt[{text}]"
    try:
        position = parse_position(text)
    except ValueError as err:
        raise BuildError(f"--positions {spec}: {err}") from None
    if position.frame == "response":
        raise BuildError(f"--positions {spec}: patching reads the prompt only; use prompt[...] or offsets like -12:")
    return position


def parse_heads(spec: str) -> list[tuple[int, int]]:
    """``L3H4,L5H1`` (or ``3.4,5.1``) as ``(layer, head)`` pairs, in the order given, unique."""
    out: list[tuple[int, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        m = _HEAD_RE.match(part)
        if not m:
            raise BuildError(f"--heads {spec}: {part!r} is not a head (write L3H4 or 3.4)")
        layer, head = (int(x) for x in (m.group(1, 2) if m.group(1) is not None else m.group(3, 4)))
        if (layer, head) in out:
            raise BuildError(f"--heads {spec}: L{layer}H{head} given twice")
        out.append((layer, head))
    return out


def config_head_count(entry: Any) -> int:
    """Query heads per layer from the variant's config, without loading weights."""
    from types import SimpleNamespace

    from transforms.circuits import head_shape
    from transforms.models import ModelRef, load_config

    # head_shape reads model.config only: the config alone answers without the weights
    return head_shape(SimpleNamespace(config=load_config(ModelRef(entry.model.id, entry.model.revision))))[0]


def select_pairs(catalog: Catalog, prompt_set: str, wanted: tuple[str, ...] | None, limit: int | None) -> list[Any]:
    """The persona set's pairs (``wanted`` ids only, in the set's order; unknown ids named), the first ``limit``."""
    from builders.stages.logit_lens import load_pairs

    pairs = load_pairs(catalog, prompt_set, None)
    if wanted:
        known = {p.pair_id for p in pairs}
        unknown = [p for p in wanted if p not in known]
        if unknown:
            raise BuildError(f"--pairs: unknown pair id(s) {', '.join(unknown)} in prompt set {prompt_set!r}")
        chosen = set(wanted)
        pairs = [p for p in pairs if p.pair_id in chosen]
    return pairs[:limit] if limit else pairs


def tokenized_pairs(pairs: list[Any], tokenizer: Any) -> list[TokenizedPair]:
    """:func:`tokenize_pairs`, its refusals (misaligned pairs, multi-token answers) as BuildError."""
    from transforms.prompts.persona import tokenize_pairs

    try:
        return tokenize_pairs(pairs, tokenizer)
    except ValueError as err:  # MisalignedPairsError / TrackedTokenError: one line naming them
        raise BuildError(str(err)) from None


def pair_positions(position: Position, tok: TokenizedPair) -> tuple[int, ...]:
    from transforms.sequences import EmptySpanError

    n = len(tok.clean_ids)
    try:
        start, stop = position.span(n, n)
    except EmptySpanError:
        raise BuildError(f"--positions {position}: outside the {n}-token prompt of pair {tok.pair_id}") from None
    return tuple(range(start, stop))


def pair_targets(kind: str, layers: list[int], heads: list[tuple[int, int]], positions: tuple[int, ...]) -> list[Any]:
    """The patch targets of one pair, layer-major (then head, then position)."""
    from transforms.circuits import PatchTarget

    if kind == "heads":
        return [PatchTarget("head", k, None, h) for k, h in heads]
    if kind == "heads_by_position":
        return [PatchTarget("head", k, p, h) for k, h in heads for p in positions]
    return [PatchTarget(kind, k, p) for k in layers for p in positions]


def inputs_digest(plans: list[PairPlan]) -> str:
    """What is patched, as token ids and positions (the truth, whatever the text or tokenizer)."""
    data = [[p.pair.pair_id, p.pair.clean_ids, p.pair.corrupted_ids, list(p.pair.answer_ids), list(p.positions)]
            for p in plans]
    return hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()[:16]


def build_patching(store: Store, catalog: Catalog, variant: str, prompt_set: str, *, experiment: str | None = None,
                   options: PatchOptions = PatchOptions(), force: bool = False, quiet: bool = False) -> BuildResult:
    """Build (or find up to date) one patching dataset (module docstring); a refused run publishes nothing."""
    from transforms.capture import parse_layers

    from builders.stages.replay import variant_tokenizer
    from builders.stages.responses import model_identity

    options.check()
    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    n_layers = model_layer_count(entry.model.id, entry.model.revision)
    try:
        layers = parse_layers(options.layers, n_layers)
    except ValueError as err:
        raise BuildError(f"--layers: {err}") from None
    heads: list[tuple[int, int]] = []
    if options.kind.startswith("heads"):
        n_heads = config_head_count(entry)
        heads = parse_heads(options.heads) if options.heads else [(k, h) for k in layers for h in range(n_heads)]
        for k, h in heads:
            if not 0 <= k < n_layers:
                raise BuildError(f"--heads: L{k}H{h}: layer {k} out of range: valid layers are 0-{n_layers - 1}")
            if not 0 <= h < n_heads:
                raise BuildError(f"--heads: L{k}H{h}: head {h} out of range: valid heads are 0-{n_heads - 1}")
        layers = sorted({k for k, _ in heads})
    position = parse_positions(options.positions)
    pairs = select_pairs(catalog, prompt_set, options.pairs, options.limit_pairs)
    tokenizer = variant_tokenizer(entry)
    plans = [PairPlan(tok, pair_positions(position, tok), p.clean.question.expert_token,
                      p.clean.question.simple_token)
             for p, tok in zip(pairs, tokenized_pairs(pairs, tokenizer))]
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, **options.params(),
              "layer_ids": layers, "head_ids": [list(h) for h in heads], "inputs": inputs_digest(plans)}
    spec = BuildSpec(name=names.patching(exp.name, variant, prompt_set, options.kind), kind="patching",
                     builder=BUILDER, code_version=CODE_VERSION, params=params, parents={},
                     identity=model_identity(catalog, exp.name, variant, store))

    def produce(writer: Any) -> None:
        from builders.shared.variants import variant_model
        from builders.stages.patching_figures import patching_figures

        loaded = variant_model(store, entry)
        data, baselines = [], []
        bar = progress(len(plans), f"patching {options.kind}", quiet)
        for plan in plans:
            rows, base = patch_pair(loaded.model, tokenizer, plan, options.kind, layers, heads, options.min_gap,
                                    options.batch_size)
            data += rows
            baselines.append(base)
            bar.update(1)
        bar.close()
        writer.write_table(_typed(data, DATA_SCHEMA))
        writer.write_table(_typed(baselines, BASELINE_SCHEMA), table="baselines")
        for path, png in patching_figures(data, baselines, options.kind, spec.name).items():
            writer.write_bytes(path, png)
        writer.summary.update({"pairs": len(plans), "used_pairs": sum(b["used"] for b in baselines),
                               "targets_per_pair": len(data) // max(1, len(plans)), "layers": layers,
                               "positions": str(position), "device": loaded.device, "dtype": loaded.dtype})

    return store.build(spec, produce, force=force)


def patch_pair(model: Any, tokenizer: Any, plan: PairPlan, kind: str, layers: list[int], heads: list[tuple[int, int]],
               min_gap: float, batch_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``data`` rows and the ``baselines`` row of one pair."""
    import math

    from transforms.circuits import patch_sweep

    tok = plan.pair
    targets = pair_targets(kind, layers, heads, plan.positions)
    try:
        sweep = patch_sweep(model, tok.clean_ids, tok.corrupted_ids, tok.answer_ids, targets, batch_size=batch_size)
    except ValueError as err:  # a target the model refuses (checked above; kept as one line)
        raise BuildError(f"pair {tok.pair_id}: {err}") from None
    n = len(tok.clean_ids)
    gap = sweep.clean_metric - sweep.corrupted_metric
    used = abs(gap) >= min_gap
    normalised = sweep.normalised
    rows = []
    for t, metric, norm in zip(targets, sweep.metric.tolist(), normalised.tolist()):
        p = t.position
        rows.append({"pair_id": tok.pair_id, "component": t.component, "layer": t.layer, "head": t.head,
                     "position": p, "from_end": None if p is None else p - n,
                     "token": None if p is None else tokenizer.decode([tok.corrupted_ids[p]]),
                     "clean_token": None if p is None else tokenizer.decode([tok.clean_ids[p]]),
                     "metric": float(metric), "normalised": float(norm) if used and math.isfinite(norm) else None})
    base = {"pair_id": tok.pair_id, "n_tokens": n, "clean_metric": sweep.clean_metric,
            "corrupted_metric": sweep.corrupted_metric, "gap": gap, "used": bool(used),
            "expert_token": plan.expert_token, "simple_token": plan.simple_token}
    return rows, base


DATA_SCHEMA: dict[str, str] = {
    "pair_id": "string", "component": "string", "layer": "int64", "head": "int64", "position": "int64",
    "from_end": "int64", "token": "string", "clean_token": "string", "metric": "float64", "normalised": "float64"}
BASELINE_SCHEMA: dict[str, str] = {
    "pair_id": "string", "n_tokens": "int64", "clean_metric": "float64", "corrupted_metric": "float64",
    "gap": "float64", "used": "bool", "expert_token": "string", "simple_token": "string"}


def _typed(rows: list[dict[str, Any]], schema: dict[str, str]) -> Any:
    """Rows as an Arrow table with fixed column types (an all-null ``head`` column stays int64)."""
    import pyarrow as pa

    fields = [pa.field(name, pa.type_for_alias(kind)) for name, kind in schema.items()]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))
