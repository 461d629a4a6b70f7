"""User-model features (seed 000, Day 1; issue 15 item 5): which directions and dictionary latents
separate the two sides of minimal pairs consistently, per category.

    python -m builders.user_features --variant instruct --prompts user_model --layer 12
    python -m builders.user_features --variant instruct --prompts user_model --layer 12 \\
        --dictionary crosscoder-demo-instruct-finetuned-user_model-L12-l1

Samples are the variant's prompts (the features live in the prompt; responses are only needed
for their token ids and are generated with a few new tokens when missing). Per category
(``categories.json``: pos = the cue side) two kinds of candidates:

- ``direction``: the plain mean-difference direction (pos − neg) learned on a seeded half of the
  category's pairs and evaluated — projection of pooled activations — on the other half only,
  so no pair both shapes the direction and tests it (the split is published per pair);
- ``latent`` (with ``--dictionary``): every latent's activation, encoded per token and averaged
  over the span (:mod:`builders.stages.prompt_latents`); a crosscoder's latents are joint
  activations of its A and B on the same tokens (one value per latent, for the pair).

Per category × feature, :func:`transforms.diffing.paired_feature_stats`: mean difference, d_z,
sign consistency, sign-flip permutation p, Benjamini-Hochberg q over the category's latents.
Permutations: the p floor is 1/(n+1), so BH over K latents cannot go below K/(n+1); the latent
screen runs max(``--permutations``, 40·K) permutations (q floor 0.025) over the K latents that
fire at all on the set (a latent that never fires cannot differ and is not tested).

Published ``userfeatures-<experiment>-<variant>-<set>-L<layer>``: tables ``data`` (every
statistic), ``candidates`` (q < 0.05 and sign consistency ≥ 0.8, top ``--top`` by |d_z| per
category), ``samples`` (prompt id, pair, side, category, split), ``projections`` (every pair's
projection on its category's direction, train and eval); arrays ``directions``
[category, d_model] and, with a dictionary, ``latent_means`` [sample, latent]; figure
``figures/candidates.png``.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.stages.prompt_latents import checked_run, ensure_responses, latent_means, pooled_samples, prompt_info

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BUILDER = "builders.user_features"
CODE_VERSION = "1"
SCREEN_FACTOR = 40  # permutations per screened latent: BH's q floor K/(40K+1) < 0.05


@dataclass(frozen=True)
class UserFeatureOptions:
    """Settings; all enter the version id."""

    position: str = "prompt[:]"
    split_seed: int = 0
    n_permutations: int = 10_000
    seed: int = 0
    q_threshold: float = 0.05
    min_consistency: float = 0.8
    top: int = 10
    max_new_tokens: int = 4

    def check(self) -> None:
        if self.n_permutations < 1 or self.top < 1 or self.max_new_tokens < 1:
            raise BuildError("--permutations, --top and --max-new-tokens must be at least 1")
        if not 0 < self.q_threshold <= 1 or not 0 <= self.min_consistency <= 1:
            raise BuildError("--q must be in (0, 1] and --min-consistency in [0, 1]")


@dataclass(frozen=True)
class HeldOutDirection:
    """A mean-difference direction learned on ``train`` pairs, projected on every pair."""

    direction_D: "np.ndarray"
    train: list[str]
    eval: list[str]
    pos_proj_P: "np.ndarray"  # over ``pair_ids`` (train and eval)
    neg_proj_P: "np.ndarray"


def split_half(pair_ids: list[str], seed: int, category: str) -> tuple[list[str], list[str]]:
    """Seeded split of a category's pairs: (train = ⌊P/2⌋ pairs, eval = the rest), each sorted."""
    import numpy as np

    ordered = sorted(pair_ids)
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    perm = rng.permutation(len(ordered))
    n_train = len(ordered) // 2
    return sorted(ordered[i] for i in perm[:n_train]), sorted(ordered[i] for i in perm[n_train:])


def held_out_direction(pair_ids: list[str], pos_PD: "np.ndarray", neg_PD: "np.ndarray", seed: int,
                       category: str) -> HeldOutDirection:
    """Direction from the train half only; projections of all pairs (``ValueError`` below 4 pairs)."""
    import numpy as np

    from transforms.diffing import mean_difference_direction

    if len(pair_ids) < 4:
        raise ValueError(f"{len(pair_ids)} pairs: a held-out direction needs at least 4 (2 to learn, 2 to test)")
    train, held = split_half(pair_ids, seed, category)
    rows = [pair_ids.index(p) for p in train]
    direction = mean_difference_direction(np.asarray(pos_PD)[rows], np.asarray(neg_PD)[rows])
    return HeldOutDirection(direction, train, held, np.asarray(pos_PD) @ direction, np.asarray(neg_PD) @ direction)


def screen_permutations(n_features: int, minimum: int) -> int:
    """Permutations for a BH screen over ``n_features`` (module docstring)."""
    return max(minimum, SCREEN_FACTOR * n_features)


def category_stats(category: str, kind: str, features: list[int], pos_PK: "np.ndarray", neg_PK: "np.ndarray",
                   n_permutations: int, seed: int) -> list[dict[str, Any]]:
    """One row per feature (column) of ``paired_feature_stats``; ``feature`` = the given ids."""
    from transforms.diffing import paired_feature_stats

    stats = paired_feature_stats(pos_PK, neg_PK, n_permutations=n_permutations, seed=seed)
    return [{"category": category, "kind": kind, "feature": int(features[s.feature]), "n_pairs": s.n_pairs,
             "n_tested": len(features), "n_permutations": n_permutations, "mean_diff": s.mean_diff,
             "effect_size": s.effect_size, "sign_consistency": s.sign_consistency, "p_value": s.p_value,
             "q_value": s.q_value} for s in stats]


def select_candidates(rows: list[dict[str, Any]], q_threshold: float, min_consistency: float,
                      top: int) -> list[dict[str, Any]]:
    """Rows with q < threshold and sign consistency ≥ min, the ``top`` by |d_z| per category."""
    import math

    out = []
    for category in sorted({r["category"] for r in rows}):
        passing = [r for r in rows if r["category"] == category and r["q_value"] < q_threshold
                   and r["sign_consistency"] >= min_consistency and math.isfinite(r["effect_size"])]
        passing.sort(key=lambda r: (-abs(r["effect_size"]), r["kind"], r["feature"]))
        out += [{**r, "rank": i + 1} for i, r in enumerate(passing[:top])]
    return out


def find_user_features(store: Store, catalog: Catalog, variant: str, prompt_set: str, layer: int, *,
                       experiment: str | None = None, dictionary: str | None = None,
                       options: UserFeatureOptions = UserFeatureOptions(), batch_size: int | str = "auto",
                       force: bool = False, quiet: bool = False) -> BuildResult:
    """Build (or find up to date) the user-model features of ``variant`` (module docstring)."""

    options.check()
    exp_name, dic = checked_run(store, catalog, experiment, variant, layer, options.position, dictionary)
    source = dic.variants[0] if dic is not None and dic.kind == "crosscoder" else variant
    responses = ensure_responses(store, catalog, exp_name, variant, prompt_set, options.max_new_tokens, quiet)
    if source != variant:  # a crosscoder's tokens are its A's responses
        ensure_responses(store, catalog, exp_name, source, prompt_set, options.max_new_tokens, quiet)
    info = prompt_info(store, responses)
    pooled = pooled_samples(store, catalog, exp_name, variant, prompt_set, layer, options.position,
                            batch_size=batch_size, quiet=quiet)
    latents = None
    if dic is not None:
        latents = latent_means(store, catalog, exp_name, variant, prompt_set, layer, options.position, dic,
                               generation={"max_new_tokens": options.max_new_tokens}, batch_size=batch_size,
                               quiet=quiet)
    params = {"experiment": exp_name, "variant": variant, "prompt_set": prompt_set, "layer": layer,
              "dictionary": dic.ref if dic else None, **asdict(options)}
    parents = {**pooled.parents, **({f"latents_{k}": v for k, v in latents.parents.items()} if latents else {})}
    if dic is not None:
        parents["dictionary"] = dic.ref
    spec = BuildSpec(name=names.user_features(exp_name, variant, prompt_set, layer), kind="userfeatures",
                     builder=BUILDER, code_version=CODE_VERSION, params=params, parents=parents, identity={})

    def produce(writer: Any) -> None:
        _produce(writer, info, pooled, latents, dic, options)

    return store.build(spec, produce, force=force)


def _pairs(info: dict[str, dict[str, Any]], keys: list[tuple[str, int]]) -> dict[str, dict[str, dict[str, Any]]]:
    """category -> pair id -> {"pos": key, "neg": key}; rollout 0 only, pairs with both sides."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in keys:
        meta = info.get(key[0])
        if key[1] != 0 or meta is None or meta["pair_id"] is None or meta["polarity"] not in ("pos", "neg"):
            continue
        out.setdefault(meta["category"], {}).setdefault(str(meta["pair_id"]), {})[meta["polarity"]] = key
    return {c: {p: s for p, s in pairs.items() if len(s) == 2} for c, pairs in out.items()}


def _produce(writer: Any, info: dict[str, dict[str, Any]], pooled: Any, latents: Any, dic: Any,
             options: UserFeatureOptions) -> None:
    import numpy as np

    have = set(latents.keys) if latents is not None else None
    by_category = _pairs(info, [k for k in pooled.keys if have is None or k in have])
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    projections: list[dict[str, Any]] = []
    directions, notes = {}, []
    latent_rows: list[tuple[str, int]] = []
    for category, pairs in sorted(by_category.items()):
        pair_ids = sorted(pairs)
        pos_keys, neg_keys = [pairs[p]["pos"] for p in pair_ids], [pairs[p]["neg"] for p in pair_ids]
        split = {}
        try:
            held = held_out_direction(pair_ids, pooled.take(pos_keys), pooled.take(neg_keys), options.split_seed,
                                      category)
        except ValueError as err:
            notes.append(f"{category}: no direction ({err})")
        else:
            directions[category] = held.direction_D
            split = {p: "train" for p in held.train} | {p: "eval" for p in held.eval}
            ev = [pair_ids.index(p) for p in held.eval]
            rows += category_stats(category, "direction", [0], held.pos_proj_P[ev, None], held.neg_proj_P[ev, None],
                                   options.n_permutations, options.seed)
            for i, p in enumerate(pair_ids):
                for pol, proj in (("pos", held.pos_proj_P[i]), ("neg", held.neg_proj_P[i])):
                    projections.append({"category": category, "pair_id": p, "polarity": pol, "split": split[p],
                                        "projection": float(proj)})
        for p in pair_ids:
            for pol in ("pos", "neg"):
                key = pairs[p][pol]
                samples.append({"sample": len(samples), "prompt_id": key[0], "rollout": key[1], "pair_id": p,
                                "polarity": pol, "category": category, "split": split.get(p)})
                latent_rows.append(key)
        if latents is not None:
            pos, neg = latents.take(pos_keys), latents.take(neg_keys)
            active = np.flatnonzero((pos != 0).any(axis=0) | (neg != 0).any(axis=0))
            if len(active):
                n_perm = screen_permutations(len(active), options.n_permutations)
                rows += category_stats(category, "latent", active.tolist(), pos[:, active], neg[:, active], n_perm,
                                       options.seed)
    if not samples:
        raise BuildError("no complete pairs in the prompt set's responses: nothing to compare")
    writer.write_table(rows or _empty_stats(), table="data")
    candidates = select_candidates(rows, options.q_threshold, options.min_consistency, options.top)
    writer.write_table(candidates or _empty_stats(with_rank=True), table="candidates")
    writer.write_table(samples, table="samples")
    if projections:
        writer.write_table(projections, table="projections")
    if directions:
        cats = sorted(directions)
        array = writer.create_array("directions", (len(cats), len(directions[cats[0]])), (len(cats), len(directions[cats[0]])),
                                    ("category", "d_model"), attributes={"categories": cats})
        array[:] = np.stack([directions[c] for c in cats]).astype(np.float32)
    if latents is not None:
        values = latents.take(latent_rows).astype(np.float32)
        array = writer.create_array("latent_means", values.shape, (min(len(values), 1024), values.shape[1]),
                                    ("sample", "latent"), attributes={"dictionary": dic.ref})
        array[:] = values
        writer.write_bytes("figures/candidates.png", _figure(candidates, dic.ref))
    else:
        writer.write_bytes("figures/candidates.png", _figure(candidates, None))
    writer.summary.update({
        "categories": {c: len(p) for c, p in sorted(by_category.items())}, "notes": notes,
        "candidates": {c: sum(r["category"] == c for r in candidates) for c in sorted(by_category)},
        "dictionary": dic.ref if dic else None,
        "dictionary_reads": None if dic is None else (
            f"joint latents of {dic.variants[0]} and {dic.variants[1]} (crosscoder) on the same tokens"
            if dic.kind == "crosscoder" else f"{dic.variants[0]}'s latents (SAE)"),
        "direction_evaluation": "learned on the train half of each category's pairs, tested on the eval half only",
    })


def _empty_stats(with_rank: bool = False) -> Any:
    import pyarrow as pa

    fields = [("category", pa.string()), ("kind", pa.string()), ("feature", pa.int64()), ("n_pairs", pa.int64()),
              ("n_tested", pa.int64()), ("n_permutations", pa.int64())] + [
        (c, pa.float64()) for c in ("mean_diff", "effect_size", "sign_consistency", "p_value", "q_value")]
    return pa.schema(fields + ([("rank", pa.int64())] if with_rank else [])).empty_table()


def _figure(candidates: list[dict[str, Any]], dictionary: str | None) -> bytes:
    from builders.shared.figures import png_bytes, subplots

    cats = sorted({r["category"] for r in candidates}) or ["(no candidates)"]
    fig, axes = subplots(1, len(cats), figsize=(3.2 * len(cats), 3.2), squeeze=False)
    for ax, cat in zip(axes[0], cats):
        top = [r for r in candidates if r["category"] == cat]
        labels = [("dir" if r["kind"] == "direction" else f"#{r['feature']}") for r in top]
        ax.barh(range(len(top)), [r["effect_size"] for r in top], color=["C1" if r["kind"] == "direction" else "C0"
                                                                         for r in top])
        ax.set_yticks(range(len(top)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.5)
        ax.set_title(cat, fontsize=9)
        ax.set_xlabel("d_z (pos − neg)", fontsize=8)
    fig.suptitle(f"user-model candidates{' — ' + dictionary if dictionary else ''}", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)
