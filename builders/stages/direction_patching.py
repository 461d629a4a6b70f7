"""Direction patching on persona pairs (issue 16 item 6): add alpha x a direction at one layer
over every prompt position and read the logit difference at the last position.

    python -m builders.direction_patching --vectors vectors-demo-instruct-persona-prompt_m1-residual-probe \\
        --method probe --layer 15 --alphas -8,-4,-2,0,2,4,8 --scale unit

The direction ``v`` (one layer of a vectors dataset, e.g. the persona probe's) is added with the
steering machinery (:func:`transforms.steering.steer`, positions ``prompt``: in a forward
over the prompt alone, every prompt token) to both sides of every pair (clean = expert persona,
corrupted = child), one alpha per batch row. ``--scale`` says what alpha counts:

- ``unit``: ``alpha * v / ||v||``, alpha in residual-stream units;
- ``residual``: ``alpha * ||h_L|| * v / ||v||`` with ``||h_L||`` the mean residual norm at the
  layer over the pairs' prompt tokens (first token skipped, :func:`mean_residual_norms`): alpha
  is the perturbation ratio of the steering builder (0.7 = its adaptive start), so use
  fractions (-1..1) there;
- ``raw``: ``alpha * v`` as stored (the steering builder's coefficient).

Published ``patching-<experiment>-<variant>-<set>-direction`` (parent: the vectors):
``data`` — per pair, alpha and side: ``metric`` (expert - simple logit), ``delta`` (vs the
unsteered run of that side, which alpha 0 reproduces), ``coef`` (the multiplier of ``v``),
``perturbation`` (``|coef| ||v|| / ||h_L||``), ``vectors``, ``method``; ``by_alpha`` — mean delta
per side and alpha with a 95% t interval over pairs; ``figures/delta_by_alpha.png``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_config_dims, progress
from builders.stages.patching import PairPlan, inputs_digest, select_pairs, tokenized_pairs

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BUILDER = "builders.direction_patching"
CODE_VERSION = "1"
SCALES: tuple[str, ...] = ("unit", "residual", "raw")
SIDES: tuple[str, ...] = ("clean", "corrupted")


@dataclass(frozen=True)
class DirectionOptions:
    """Settings; all but ``batch_size`` enter the version id."""

    layer: int
    method: str = "probe"
    alphas: tuple[float, ...] = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)
    scale: str = "unit"
    pairs: tuple[str, ...] | None = None
    limit_pairs: int | None = None
    batch_size: int = 32

    def check(self) -> None:
        if self.scale not in SCALES:
            raise BuildError(f"--scale {self.scale!r}: expected one of {', '.join(SCALES)}")
        if not self.alphas:
            raise BuildError("--alphas: give at least one alpha")
        if len(set(self.alphas)) != len(self.alphas):
            raise BuildError(f"--alphas {','.join(map(str, self.alphas))}: an alpha is repeated")
        if not all(math.isfinite(a) for a in self.alphas):
            raise BuildError("--alphas: every alpha must be a finite number")
        if self.limit_pairs is not None and self.limit_pairs < 1:
            raise BuildError(f"--limit-pairs {self.limit_pairs}: must be at least 1")
        if self.batch_size < 1:
            raise BuildError(f"--batch-size {self.batch_size}: must be at least 1")

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "method": self.method, "alphas": [float(a) for a in self.alphas],
                "scale": self.scale, "pairs": list(self.pairs) if self.pairs else None,
                "limit_pairs": self.limit_pairs}


def parse_alphas(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BuildError(f"--alphas {text}: expected comma-separated numbers like -8,-4,0,4,8") from None


def direction_vector(store: Store, vectors: Any, method: str, layer: int, d_model: int, n_layers: int,
                     variant: str) -> np.ndarray:
    """Layer ``layer`` of the vectors (width checked against the model), float32; BuildError otherwise."""
    import numpy as np

    from builders.stages.steering import layer_vectors

    if not 0 <= layer < n_layers:
        raise BuildError(f"--layer {layer}: out of range: the {variant!r} model has layers 0-{n_layers - 1}")
    available = layer_vectors(store, vectors, method, d_model, n_layers, variant)
    if layer not in available:
        raise BuildError(f"--layer {layer}: {vectors.ref} ({method}) has no layer {layer} "
                         f"(layers: {','.join(map(str, sorted(available)))})")
    v = np.asarray(available[layer], dtype=np.float32)
    if not np.isfinite(v).all() or float(np.linalg.norm(v)) == 0.0:
        raise BuildError(f"{vectors.ref} ({method}) layer {layer}: a zero or non-finite vector has no direction")
    return v


def coefficient(alpha: float, scale: str, v_norm: float, h_norm: float) -> float:
    """The multiplier of ``v`` that ``alpha`` means under ``scale`` (module docstring)."""
    if scale == "raw":
        return alpha
    if scale == "unit":
        return alpha / v_norm
    return alpha * h_norm / v_norm


def build_direction_patching(store: Store, catalog: Catalog, vectors: str, *, variant: str | None = None,
                             prompt_set: str = "persona", experiment: str | None = None,
                             options: DirectionOptions, force: bool = False, quiet: bool = False) -> BuildResult:
    """Build (or find up to date) the direction-patching dataset (module docstring). ``variant``
    defaults to the variant the vectors were extracted from. Everything is checked first."""
    from builders.stages.replay import variant_tokenizer
    from builders.stages.responses import model_identity

    options.check()
    manifest = store.resolve(vectors)
    exp = catalog.experiment(experiment or _vectors_experiment(catalog, manifest.params))
    variant = variant or manifest.params.get("variant")
    if not variant:
        raise BuildError(f"{manifest.ref} does not say which variant it came from: pass --variant")
    entry = catalog.variant(exp.name, variant)
    n_layers, d_model = model_config_dims(entry.model.id, entry.model.revision)
    v_D = direction_vector(store, manifest, options.method, options.layer, d_model, n_layers, variant)
    pairs = select_pairs(catalog, prompt_set, options.pairs, options.limit_pairs)
    tokenizer = variant_tokenizer(entry)
    plans = [PairPlan(tok, (), p.clean.question.expert_token, p.clean.question.simple_token)
             for p, tok in zip(pairs, tokenized_pairs(pairs, tokenizer))]
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "vectors": manifest.ref,
              **options.params(), "inputs": inputs_digest(plans)}
    spec = BuildSpec(name=names.patching(exp.name, variant, prompt_set, "direction"), kind="patching",
                     builder=BUILDER, code_version=CODE_VERSION, params=params, parents={"vectors": manifest.ref},
                     identity=model_identity(catalog, exp.name, variant, store))

    def produce(writer: Any) -> None:
        import numpy as np

        from transforms.steering import mean_residual_norms

        from builders.shared.variants import variant_model

        model = variant_model(store, entry).model
        prompts = [ids for p in plans for ids in (p.pair.clean_ids, p.pair.corrupted_ids)]
        h_norm = mean_residual_norms(model, prompts, [options.layer])[options.layer]
        v_norm = float(np.linalg.norm(v_D))
        coefs = [coefficient(a, options.scale, v_norm, h_norm) for a in options.alphas]
        rows = []
        bar = progress(len(plans), "direction patching", quiet)
        for plan in plans:
            metrics = steered_metrics(model, plan.pair, options.layer, v_D, coefs, options.batch_size)
            for side in SIDES:
                base = metrics[side][0]  # the unsteered run
                for alpha, coef, metric in zip(options.alphas, coefs, metrics[side][1:]):
                    rows.append({"pair_id": plan.pair.pair_id, "layer": options.layer, "alpha": float(alpha),
                                 "side": side, "metric": metric, "delta": metric - base, "coef": coef,
                                 "perturbation": abs(coef) * v_norm / h_norm, "vectors": manifest.ref,
                                 "method": options.method})
            bar.update(1)
        bar.close()
        by_alpha = alpha_summary(rows)
        writer.write_table(rows)
        writer.write_table(by_alpha, table="by_alpha")
        writer.write_bytes("figures/delta_by_alpha.png", _figure(by_alpha, spec.name, options.scale))
        writer.summary.update({"pairs": len(plans), "h_norm": h_norm, "v_norm": v_norm, "scale": options.scale})

    return store.build(spec, produce, force=force)


def _vectors_experiment(catalog: Catalog, params: dict[str, Any]) -> str | None:
    name = params.get("experiment")
    return name if name in catalog.experiments else None


def steered_metrics(model: Any, pair: Any, layer: int, v_D: Any, coefs: Sequence[float],
                    batch_size: int) -> dict[str, list[float]]:
    """Per side, ``[unsteered, steered at coefs[0], ...]`` logit differences at the last
    position; one batch row per (side, coefficient), rows steered by :class:`RowEdit`s."""
    import torch

    from transforms.capture import input_device
    from transforms.circuits import logit_diff
    from transforms.steering import Edit, RowEdit, steer

    # row r: side r // (n + 1), coefficient r % (n + 1) - 1 (-1 = unsteered)
    n = len(coefs)
    plan = [(side, i) for side in SIDES for i in range(-1, n)]
    ids = {"clean": pair.clean_ids, "corrupted": pair.corrupted_ids}
    out: dict[str, list[float]] = {side: [math.nan] * (n + 1) for side in SIDES}
    device = input_device(model)
    for lo in range(0, len(plan), batch_size):
        chunk = plan[lo:lo + batch_size]
        edits = [RowEdit(r, r + 1, Edit(layer, v_D, coefs[i], positions="prompt"))
                 for r, (_, i) in enumerate(chunk) if i >= 0]
        batch = torch.tensor([ids[side] for side, _ in chunk], device=device)
        with torch.inference_mode(), steer(model, edits):
            logits = model(input_ids=batch, use_cache=False).logits[:, -1]
        diff = logit_diff(logits, [list(pair.answer_ids)] * len(chunk)).cpu().tolist()
        for (side, i), value in zip(chunk, diff):
            out[side][i + 1] = float(value)
    return out



def alpha_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ``delta`` and ``metric`` per (side, alpha) over pairs."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["side"], r["alpha"]), []).append(r)
    from transforms.stats import mean_t_interval

    out = []
    for (side, alpha), group in sorted(groups.items()):
        mean, lo, hi = mean_t_interval([r["delta"] for r in group])
        out.append({"side": side, "alpha": alpha, "n_pairs": len(group), "mean_delta": mean, "ci_low": lo,
                    "ci_high": hi, "mean_metric": sum(r["metric"] for r in group) / len(group)})
    return out


def _figure(by_alpha: list[dict[str, Any]], title: str, scale: str) -> bytes:
    from builders.shared.figures import png_bytes, subplots

    fig, ax = subplots(figsize=(6, 3.4))
    for i, side in enumerate(SIDES):
        rows = [r for r in by_alpha if r["side"] == side]
        x = [r["alpha"] for r in rows]
        ax.plot(x, [r["mean_delta"] for r in rows], marker="o", ms=3, color=f"C{i}",
                label=f"{side} ({'expert' if side == 'clean' else 'child'} persona)")
        ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=f"C{i}", alpha=0.2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel(f"alpha ({scale} scale)")
    ax.set_ylabel("Δ logit(expert) − logit(simple)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8, title="side (95% CI over pairs)", title_fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)
