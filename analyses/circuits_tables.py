"""The numbers of the circuits report (seed 003), each computed from a published table.

Every function takes polars frames exactly as the stages publish them (column names from the
wave-2 contract: patching ``data`` / ``baselines``, ablation ``data`` / ``generation`` /
``top_heads``, direction ``data``, logit lens ``tracked`` / ``by_layer``, probe ``data``) and
returns dataclasses; nothing here reads the store or formats text (:mod:`analyses.circuits`
and :mod:`analyses.circuits_markdown` do).

Pairs whose clean - corrupted gap is below the patching stage's ``min_gap`` carry a null
``normalised``; they are left out of every normalised mean (and named in the report).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import polars as pl

LAST = -1  # ``from_end`` of the last prompt token: the next-token logits the metric reads


@dataclass(frozen=True)
class Estimate:
    """A mean over pairs (or draws) with its 95% t interval (nan bounds below 2 values)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def above_zero(self) -> bool:
        return self.ci_low > 0

    def excludes(self, value: float) -> bool:
        return not (self.ci_low <= value <= self.ci_high)


def estimate(values: Sequence[float]) -> Estimate:
    """Mean and 95% t interval of ``values`` (nan values dropped)."""
    from transforms.stats import mean_t_interval

    n = sum(1 for v in values if v is not None and not math.isnan(v))
    return Estimate(*mean_t_interval(values), n)


# ---- data set facts -------------------------------------------------------------------------

@dataclass(frozen=True)
class PairFacts:
    """The patching baselines: how many pairs were aligned, used, and which had a tiny gap."""

    aligned: int
    used: int
    tiny_gap: list[tuple[str, float]]  # (pair_id, gap) of the pairs left out of normalised numbers
    mean_gap: float


def pair_facts(baselines: "pl.DataFrame") -> PairFacts:
    rows = baselines.sort("pair_id").to_dicts()
    unused = [(r["pair_id"], float(r["gap"])) for r in rows if not r["used"]]
    return PairFacts(len(rows), len(rows) - len(unused), unused,
                     estimate([r["gap"] for r in rows if r["used"]]).mean)


# ---- logit lens -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LensLayer:
    layer: int
    expert_minus_child: Estimate  # paired over pairs: clean logit diff - corrupted logit diff


def lens_separation(tracked: "pl.DataFrame") -> list[LensLayer]:
    """Per layer, the paired difference of the logit difference between the two sides."""
    import polars as pl

    wide = (tracked.select("pair_id", "layer", "role", "logit_diff")
            .pivot(on="role", index=["pair_id", "layer"], values="logit_diff")
            .drop_nulls(["clean", "corrupted"]).with_columns((pl.col("clean") - pl.col("corrupted")).alias("d")))
    return [LensLayer(int(layer), estimate(group["d"].to_list()))
            for (layer,), group in sorted(wide.group_by("layer"), key=lambda g: g[0][0])]


def first_separated(layers: Sequence[LensLayer]) -> int | None:
    """The first layer from which the expert side stays above the child side (interval above 0)."""
    for i, row in enumerate(layers):
        if all(r.expert_minus_child.above_zero for r in layers[i:]):
            return row.layer
    return None


# ---- probe ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeFacts:
    method: str
    best: dict  # the probe ``data`` row of the best held-out AUROC
    chance_layers: list[int]  # layers whose AUROC interval contains 0.5


def probe_facts(data: "pl.DataFrame") -> ProbeFacts:
    methods = data["method"].unique().to_list()
    method = "probe" if "probe" in methods else sorted(methods)[0]
    rows = data.filter(data["method"] == method).sort("layer").to_dicts()
    best = max(rows, key=lambda r: -1.0 if r["auroc"] is None or math.isnan(r["auroc"]) else r["auroc"])
    chance = [int(r["layer"]) for r in rows if r["auroc_ci_low"] <= 0.5 <= r["auroc_ci_high"]]
    return ProbeFacts(method, best, chance)


# ---- activation patching ----------------------------------------------------------------------

@dataclass(frozen=True)
class PatchLayer:
    """Normalised effect of patching one component at one layer."""

    component: str
    layer: int
    last: Estimate  # at the last prompt token
    persona: Estimate  # mean over the tokens where the two sides differ (per pair, then over pairs)


def persona_mask(frame: "pl.DataFrame") -> "pl.Expr":
    """Rows at a token where the clean and corrupted prompts differ: the persona's words."""
    import polars as pl

    return pl.col("position").is_not_null() & (pl.col("token") != pl.col("clean_token"))


def patch_layers(data: "pl.DataFrame") -> list[PatchLayer]:
    """Per component and layer, the normalised effect at the last token and at the persona tokens."""
    import polars as pl

    used = data.filter(pl.col("normalised").is_not_null())
    persona = (used.filter(persona_mask(used)).group_by("component", "layer", "pair_id")
               .agg(pl.col("normalised").mean()))
    last = used.filter(pl.col("from_end") == LAST)
    out = []
    for component, layer in sorted(set(zip(used["component"].to_list(), used["layer"].to_list()))):
        def pick(frame: "pl.DataFrame") -> list[float]:
            return frame.filter((pl.col("component") == component) & (pl.col("layer") == layer))["normalised"].to_list()
        out.append(PatchLayer(component, int(layer), estimate(pick(last)), estimate(pick(persona))))
    return out


def best_last(layers: Sequence[PatchLayer], component: str = "residual") -> PatchLayer | None:
    rows = [r for r in layers if r.component == component and r.last.n]
    return max(rows, key=lambda r: r.last.mean, default=None)


# ---- heads ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadEffect:
    layer: int
    head: int
    effect: Estimate  # normalised effect of patching the head at every position
    last_share: float | None  # share of the head's per-position |effect| at the last token
    persona_share: float | None  # ... at the persona tokens
    last: Estimate | None  # its effect patched at the last token only

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}"


def head_effects(heads: "pl.DataFrame", by_position: "pl.DataFrame | None" = None) -> list[HeadEffect]:
    """Every head's all-positions effect, largest |mean| first (the order the head-ablation and
    per-position stages take their top heads in, so the report names the heads they studied;
    a head pushing towards the child answer counts as much as one restoring the expert answer),
    with where its per-position effect sits."""
    import polars as pl

    whole = heads.filter(pl.col("normalised").is_not_null() & pl.col("position").is_null()
                         & pl.col("head").is_not_null())
    where = head_positions(by_position) if by_position is not None else {}
    out = []
    for (layer, head), group in whole.group_by("layer", "head"):
        shares = where.get((int(layer), int(head)))
        out.append(HeadEffect(int(layer), int(head), estimate(group["normalised"].to_list()),
                              *(shares if shares else (None, None, None))))
    return sorted(out, key=lambda h: (-abs(h.effect.mean), h.layer, h.head))


def head_positions(by_position: "pl.DataFrame") -> dict[tuple[int, int], tuple[float, float, Estimate]]:
    """Per head: (share of |effect| at the last token, share at the persona tokens, effect at the
    last token). Shares are of the summed |normalised| over every patched position and pair."""
    import polars as pl

    used = by_position.filter(pl.col("normalised").is_not_null() & pl.col("position").is_not_null()
                              & pl.col("head").is_not_null())
    used = used.with_columns(persona_mask(used).alias("is_persona"), pl.col("normalised").abs().alias("size"))
    out = {}
    for (layer, head), group in used.group_by("layer", "head"):
        total = float(group["size"].sum())
        at_last = group.filter(pl.col("from_end") == LAST)
        last_share = float(at_last["size"].sum()) / total if total > 0 else math.nan
        persona_share = float(group.filter(pl.col("is_persona"))["size"].sum()) / total if total > 0 else math.nan
        out[(int(layer), int(head))] = (last_share, persona_share, estimate(at_last["normalised"].to_list()))
    return out


ROLE_SHARE = 0.5  # a role is named only when at least half of the head's |effect| sits there


def head_role(head: HeadEffect) -> str:
    """A hypothesised role, stated cautiously, from where the per-position patching puts the effect."""
    if head.last_share is None or math.isnan(head.last_share):
        return "no per-position patching: no role assigned"
    if head.last_share >= ROLE_SHARE and head.last is not None and head.last.above_zero:
        return (f"hypothesis: moves persona information to the last position ({head.last_share:.0%} of its "
                f"per-position effect there)")
    if head.persona_share is not None and head.persona_share >= ROLE_SHARE:
        return (f"hypothesis: acts at the persona tokens themselves ({head.persona_share:.0%} of its effect), "
                f"not a mover to the last position")
    if head.last_share >= ROLE_SHARE:  # where the effect sits is clear, but not that it is there at all
        return (f"{head.last_share:.0%} of its per-position effect at the last token, but that effect's interval "
                f"includes 0: no role assigned")
    return (f"effect spread over positions (last token {head.last_share:.0%}, persona tokens "
            f"{head.persona_share or 0:.0%}): no role assigned")


# ---- ablation ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AblationEffect:
    heads: str
    kind: str
    mode: str
    side: str
    delta: Estimate  # mean change of the logit diff vs the unablated model, over pairs
    random_range: tuple[float, float] | None  # the random-head control for the same mode and side
    register_delta: Estimate | None  # change of the judged register during generation

    @property
    def beyond_random(self) -> bool:
        """Outside the random heads' range (and its interval clear of 0)."""
        if self.random_range is None or math.isnan(self.delta.mean):
            return False
        lo, hi = self.random_range
        return not (lo <= self.delta.mean <= hi) and self.delta.excludes(0.0)


def ablation_verdict(effect: AblationEffect) -> str:
    """Why an ablation does or does not count as beyond the random heads, in words."""
    if effect.beyond_random:
        return "beyond the random heads"
    if effect.random_range is None:
        return "without a random control"
    lo, hi = effect.random_range
    if lo <= effect.delta.mean <= hi:
        return "within the random-head range"
    return "outside the random-head range, but its interval includes 0"


def random_range(draws: Sequence[Estimate]) -> tuple[float, float] | None:
    """The spread of the random control: min..max of the draws' means when there are several
    draws, else the one draw's 95% interval."""
    draws = [d for d in draws if d.n]
    if not draws:
        return None
    if len(draws) == 1:
        d = draws[0]
        return (d.ci_low, d.ci_high) if not math.isnan(d.ci_low) else (d.mean, d.mean)
    means = [d.mean for d in draws]
    return min(means), max(means)


def ablation_effects(data: "pl.DataFrame", generation: "pl.DataFrame | None" = None) -> list[AblationEffect]:
    """The chosen heads' effects per mode and side, each next to its random control."""
    groups = {key: estimate(g["delta"].to_list()) for key, g in data.group_by("heads", "kind", "mode", "side")}
    registers = ({key: estimate(g["delta_register"].to_list()) for key, g in generation.group_by("heads", "mode")}
                 if generation is not None and generation.height else {})
    out = []
    for (heads, kind, mode, side), delta in sorted(groups.items()):
        if kind != "chosen":
            continue
        control = [d for (h, k, m, s), d in groups.items() if k == "random" and m == mode and s == side]
        out.append(AblationEffect(heads, kind, mode, side, delta, random_range(control), registers.get((heads, mode))))
    return out


def random_register(generation: "pl.DataFrame", mode: str) -> Estimate:
    import polars as pl

    rows = generation.filter((pl.col("kind") == "random") & (pl.col("mode") == mode))
    return estimate(rows["delta_register"].to_list())


# ---- direction patching -----------------------------------------------------------------------

@dataclass(frozen=True)
class DirectionCurve:
    layer: int
    side: str
    alphas: list[float]
    deltas: list[Estimate]  # per alpha, mean over pairs
    rho: float  # Spearman correlation of alpha with the mean delta

    @property
    def monotone(self) -> bool:
        means = [d.mean for d in self.deltas]
        steps = [b - a for a, b in zip(means, means[1:])]
        return len(steps) > 0 and (all(s >= 0 for s in steps) or all(s <= 0 for s in steps))


def direction_curves(data: "pl.DataFrame") -> list[DirectionCurve]:
    import polars as pl
    from scipy import stats

    out = []
    for (layer, side), group in sorted(data.group_by("layer", "side"), key=lambda g: g[0]):
        alphas = sorted(set(group["alpha"].to_list()))
        deltas = [estimate(group.filter(pl.col("alpha") == a)["delta"].to_list()) for a in alphas]
        means = [d.mean for d in deltas]
        rho = float(stats.spearmanr(alphas, means).statistic) if len(set(means)) > 1 else math.nan
        out.append(DirectionCurve(int(layer), str(side), [float(a) for a in alphas], deltas, rho))
    return out
