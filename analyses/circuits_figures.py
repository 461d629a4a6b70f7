"""The circuits report's figures, drawn from the numbers the report prints (so the two agree)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analyses.circuits_markdown import CircuitsFacts


def figures(facts: "CircuitsFacts", frames: dict[str, Any]) -> dict[str, bytes]:
    """``figures/<name>.png`` -> PNG bytes, one per section that has data."""
    out = {}
    by_layer = frames.get("lens_by_layer")
    if by_layer is not None and by_layer.height:
        out["figures/logit_diff.png"] = _lens(by_layer.to_dicts())
    if facts.patch:
        out["figures/patching.png"] = _patching(facts)
    if facts.heads_all:
        out["figures/heads.png"] = _heads(facts)
    return out


def _lens(rows: list[dict[str, Any]]) -> bytes:
    from builders.shared.figures import png_bytes, subplots

    fig, ax = subplots(figsize=(6, 3.4))
    for i, side in enumerate(sorted({r["side"] for r in rows})):
        mine = sorted((r for r in rows if r["side"] == side), key=lambda r: r["layer"])
        x = [r["layer"] for r in mine]
        ax.plot(x, [r["mean_logit_diff"] for r in mine], marker="o", ms=3, color=f"C{i}", label=side)
        ax.fill_between(x, [r["ci_low"] for r in mine], [r["ci_high"] for r in mine], color=f"C{i}", alpha=0.2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("logit(expert) − logit(simple)")
    ax.set_title("logit lens at the last prompt token (95% CI over pairs)", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def _patching(facts: "CircuitsFacts") -> bytes:
    from builders.shared.figures import png_bytes, subplots

    fig, ax = subplots(figsize=(6, 3.4))
    for i, component in enumerate(sorted({p.component for p in facts.patch})):
        rows = sorted((p for p in facts.patch if p.component == component), key=lambda p: p.layer)
        x = [p.layer for p in rows]
        ax.plot(x, [p.last.mean for p in rows], marker="o", ms=3, color=f"C{i}", label=f"{component}, last token")
        ax.plot(x, [p.persona.mean for p in rows], ls="--", color=f"C{i}", label=f"{component}, persona tokens")
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(1, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("normalised effect (clean = 1)")
    ax.set_title("patching clean into corrupted", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return png_bytes(fig)


def _heads(facts: "CircuitsFacts") -> bytes:
    import numpy as np
    from matplotlib.patches import Rectangle

    from builders.shared.figures import png_bytes, subplots

    layers = sorted({h.layer for h in facts.heads_all})
    n_heads = max(h.head for h in facts.heads_all) + 1
    grid = np.full((len(layers), n_heads), np.nan)
    for h in facts.heads_all:
        grid[layers.index(h.layer), h.head] = h.effect.mean
    fig, ax = subplots(figsize=(1 + 0.45 * n_heads, 1 + 0.3 * len(layers)))
    bound = float(np.nanmax(np.abs(grid))) or 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_yticks(range(len(layers)), [f"L{x}" for x in layers], fontsize=6)
    ax.set_xticks(range(n_heads), [str(x) for x in range(n_heads)], fontsize=6)
    ax.set_xlabel("head")
    for h in facts.heads:
        ax.add_patch(Rectangle((h.head - 0.5, layers.index(h.layer) - 0.5), 1, 1, fill=False, lw=1.5))
    fig.colorbar(image, ax=ax, label="normalised effect")
    ax.set_title("head patching, all positions (boxed: reported heads)", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
