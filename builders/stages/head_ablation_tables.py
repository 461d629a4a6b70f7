"""Tables and the figure of the head-ablation stage (:mod:`builders.stages.head_ablation`):
head-set labels, the seeded random control sets, the head effects of a per-head patching
dataset, summaries with 95% t intervals, and ``figures/delta.png``. Pure Python / numpy."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from builders.shared.common import BuildError

Head = tuple[int, int]
_HEAD_RE = re.compile(r"^[Ll](\d+)[Hh](\d+)$")


@dataclass(frozen=True)
class HeadSet:
    """Heads ablated together: ``label`` is ``L3H4,L5H1`` for the chosen set, ``random-<i>`` for
    the i-th control draw (its members in ``heads``)."""

    label: str
    kind: str  # chosen | random
    heads: tuple[Head, ...]

    @property
    def members(self) -> str:
        return head_label(self.heads)


def head_label(heads: Iterable[Head]) -> str:
    """``L3H4,L5H1`` (sorted)."""
    return ",".join(f"L{layer}H{head}" for layer, head in sorted(heads))


def parse_heads(text: str) -> list[Head]:
    """``L3H4,L5H1`` into sorted ``(layer, head)`` pairs; BuildError (one line) for a bad item,
    a duplicate or an empty list."""
    out: list[Head] = []
    for item in (x.strip() for x in text.split(",")):
        match = _HEAD_RE.match(item)
        if not match:
            raise BuildError(f"--heads: {item!r} is not a head; write L<layer>H<head>, e.g. L3H4,L5H1")
        head = (int(match.group(1)), int(match.group(2)))
        if head in out:
            raise BuildError(f"--heads: {item} given twice")
        out.append(head)
    if not out:
        raise BuildError("--heads: no heads given")
    return sorted(out)


def check_head_range(heads: Sequence[Head], n_layers: int, n_heads: int, where: str) -> None:
    """BuildError naming the first head outside ``n_layers`` x ``n_heads``."""
    for layer, head in heads:
        if not 0 <= layer < n_layers:
            raise BuildError(f"{where}: L{layer}H{head}: layer {layer} out of range (valid layers 0-{n_layers - 1})")
        if not 0 <= head < n_heads:
            raise BuildError(f"{where}: L{layer}H{head}: head {head} out of range (valid heads 0-{n_heads - 1})")


def random_head_sets(chosen: Sequence[Head], n_layers: int, n_heads: int, draws: int, seed: int) -> list[HeadSet]:
    """``draws`` control sets of ``len(chosen)`` heads each, drawn without replacement from the
    heads NOT chosen (the same count of other heads: does ablating any heads move the metric
    this much?), seeded; a draw is independent of the others."""
    import numpy as np

    taken = set(chosen)
    pool = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in taken]
    if draws and len(pool) < len(chosen):
        raise BuildError(f"--random-draws: only {len(pool)} heads are not chosen, fewer than the {len(chosen)} chosen")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(draws):
        picked = rng.choice(len(pool), size=len(chosen), replace=False)
        out.append(HeadSet(f"random-{i + 1}", "random", tuple(sorted(pool[j] for j in picked.tolist()))))
    return out


def head_effects(rows: Sequence[dict[str, Any]], ref: str) -> dict[Head, float]:
    """Mean normalised effect per head of a per-head, all-positions patching table (rows with a
    null ``normalised``, the pairs below the gap threshold, are left out). BuildError when the
    table is another kind of patching (another component, or per position)."""
    sums: dict[Head, list[float]] = {}
    for r in rows:
        if r.get("component") != "head" or r.get("head") is None or r.get("position") is not None:
            what = r.get("component") if r.get("component") != "head" else "heads_by_position"
            raise BuildError(f"--from-patching {ref}: a {what} patching dataset; need per-head patching over all "
                             f"positions (kind heads)")
        value = r.get("normalised")
        entry = sums.setdefault((int(r["layer"]), int(r["head"])), [])
        if value is not None and not math.isnan(value):
            entry.append(float(value))
    if not sums:
        raise BuildError(f"--from-patching {ref}: the data table has no rows")
    effects = {h: (sum(v) / len(v) if v else math.nan) for h, v in sums.items()}
    if all(math.isnan(e) for e in effects.values()):
        raise BuildError(f"--from-patching {ref}: no pair has a usable normalised effect (every gap below min_gap)")
    return effects


def top_by_effect(effects: dict[Head, float], k: int) -> list[Head]:
    """The ``k`` heads of largest |effect| (ties: lower layer, then head); NaN effects last."""
    order = sorted(effects, key=lambda h: (math.isnan(effects[h]), -abs(effects[h]) if not math.isnan(effects[h]) else 0, h))
    return sorted(order[:k])



def set_summary(data: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``by_set``: per head set, mode and side the mean delta over pairs with a 95% t interval."""
    groups: dict[tuple[str, str, str, str, str], list[float]] = {}
    for r in data:
        groups.setdefault((r["heads"], r["kind"], r["members"], r["mode"], r["side"]), []).append(r["delta"])
    from transforms.stats import mean_t_interval

    out = []
    for (label, kind, members, mode, side), deltas in groups.items():  # insertion order: chosen first
        mean, lo, hi = mean_t_interval(deltas)
        out.append({"heads": label, "kind": kind, "members": members, "mode": mode, "side": side,
                    "n_pairs": len(deltas), "mean_delta": mean, "ci_low": lo, "ci_high": hi})
    return out


def top_heads_rows(heads: Sequence[Head], effects: dict[Head, float] | None,
                   single: dict[tuple[Head, str], dict[str, float]], modes: Sequence[str]) -> list[dict[str, Any]]:
    """``top_heads``: one row per head with its patch effect (None without a patching dataset)
    and its mean delta when ablated alone (``<mode>_delta``: the clean, expert-persona side;
    ``<mode>_delta_corrupted``: the child side). Ranked by |patch effect|, else by |mean_delta|
    (by |zero_delta| when mean ablation was not run)."""
    rows = []
    for h in heads:
        row: dict[str, Any] = {"layer": h[0], "head": h[1], "label": head_label([h]),
                               "patch_effect": None if effects is None else float(effects[h])}
        for mode in ("zero", "mean"):
            got = single.get((h, mode)) if mode in modes else None
            row[f"{mode}_delta"] = None if got is None else got["clean"]
            row[f"{mode}_delta_corrupted"] = None if got is None else got["corrupted"]
        rows.append(row)
    key = "patch_effect" if effects is not None else ("mean_delta" if "mean" in modes else "zero_delta")

    def magnitude(r: dict[str, Any]) -> float:
        v = r[key]
        return -1.0 if v is None or math.isnan(v) else abs(v)

    rows.sort(key=lambda r: (-magnitude(r), r["layer"], r["head"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def delta_figure(by_set: Sequence[dict[str, Any]], modes: Sequence[str], title: str) -> bytes:
    """Mean delta per head set (chosen first, then the random draws) with 95% intervals, one
    panel per mode, the two sides side by side."""
    import numpy as np

    from builders.shared.figures import png_bytes, subplots

    labels = list(dict.fromkeys(r["heads"] for r in by_set))
    fig, axes = subplots(1, len(modes), figsize=(1.2 + 1.1 * len(labels) * len(modes), 3.4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for j, side in enumerate(("clean", "corrupted")):
            rows = {r["heads"]: r for r in by_set if r["mode"] == mode and r["side"] == side}
            x = np.arange(len(labels)) + (j - 0.5) * 0.38
            mean = np.array([rows[h]["mean_delta"] for h in labels])
            err = np.array([[mean[i] - rows[h]["ci_low"], rows[h]["ci_high"] - mean[i]] for i, h in enumerate(labels)]).T
            colors = [f"C{j}" if rows[h]["kind"] == "chosen" else ("#9ecae1" if j == 0 else "#fdae6b") for h in labels]
            ax.bar(x, mean, 0.38, yerr=np.nan_to_num(err), color=colors, capsize=2,
                   label=f"{side} ({'expert' if side == 'clean' else 'child'} persona)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(np.arange(len(labels)), [lab if len(lab) <= 14 else lab[:12] + "…" for lab in labels],
                      rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{mode} ablation", fontsize=9)
        ax.set_ylabel("Δ logit(expert) − logit(simple)")
        ax.legend(fontsize=6, title="side (95% CI over pairs)", title_fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
