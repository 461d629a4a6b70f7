"""Figures of a patching dataset (:mod:`builders.stages.patching`): heatmaps labelled with the
prompt's tokens (``clean|corrupted`` where the two prompts differ, e.g. ``PhD|five``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

N_PAIR_FIGURES = 4
N_OFFSETS = 16
N_TOP_HEADS = 16


def token_label(clean: str | None, corrupted: str | None) -> str:
    """A position's tick label: the token, or ``clean|corrupted`` where the prompts differ."""
    c, k = (clean or "").replace("\n", "\\n"), (corrupted or "").replace("\n", "\\n")
    return c if c == k else f"{c}|{k}"


def heatmap(matrix: np.ndarray, ylabels: list[str], xlabels: list[str], title: str, *, xlabel: str, ylabel: str,
            value: str) -> bytes:
    """A diverging heatmap centred at 0 (NaN cells blank), one tick per row and column."""
    import numpy as np

    from builders.shared.figures import png_bytes, subplots

    finite = np.abs(matrix[np.isfinite(matrix)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    n_rows, n_cols = matrix.shape
    fig, ax = subplots(figsize=(min(max(6.0, 2.5 + 0.32 * n_cols), 30), min(max(3.0, 1.8 + 0.22 * n_rows), 24)))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    ax.set_xticks(range(n_cols), xlabels, rotation=90, fontsize=7)
    ax.set_yticks(range(n_rows), ylabels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label=value, shrink=0.8)
    fig.tight_layout()
    return png_bytes(fig)


def _cells(rows: list[dict[str, Any]], row_key: Any, col_key: Any, field: str) -> dict[tuple[Any, Any], list[float]]:
    cells: dict[tuple[Any, Any], list[float]] = {}
    for r in rows:
        if r[field] is not None:
            cells.setdefault((row_key(r), col_key(r)), []).append(r[field])
    return cells


def _matrix(cells: dict[tuple[Any, Any], list[float]], row_ids: list[Any], col_ids: list[Any]) -> np.ndarray:
    """Mean of each cell's values (NaN where a cell has none)."""
    import numpy as np

    out = np.full((len(row_ids), len(col_ids)), np.nan)
    for i, a in enumerate(row_ids):
        for j, b in enumerate(col_ids):
            values = cells.get((a, b))
            if values:
                out[i, j] = float(np.mean(values))
    return out


def _head_name(r: dict[str, Any]) -> str:
    return f"L{r['layer']}H{r['head']}"


def patching_figures(data: list[dict[str, Any]], baselines: list[dict[str, Any]], kind: str,
                     title: str) -> dict[str, bytes]:
    """``{path: png}``: per-pair heatmaps of the first pairs (position kinds), the mean normalised
    effect over used pairs by offset from the end, and for heads a layer x head heatmap."""
    import numpy as np

    used = {b["pair_id"] for b in baselines if b["used"]}
    used_rows = [r for r in data if r["pair_id"] in used]
    out: dict[str, bytes] = {}
    first = baselines[0]["pair_id"] if baselines else None
    labels_by_offset = {r["from_end"]: token_label(r["clean_token"], r["token"])
                        for r in data if r["pair_id"] == first and r["from_end"] is not None}
    if kind in ("residual", "attn_out", "mlp_out"):
        for i, base in enumerate(baselines[:N_PAIR_FIGURES]):
            rows = [r for r in data if r["pair_id"] == base["pair_id"]]
            field = "normalised" if base["used"] else "metric"
            layers = sorted({r["layer"] for r in rows})
            positions = sorted({r["position"] for r in rows})
            labels = {r["position"]: token_label(r["clean_token"], r["token"]) for r in rows}
            m = _matrix(_cells(rows, lambda r: r["layer"], lambda r: r["position"], field), layers, positions)
            out[f"figures/pair_{i}.png"] = heatmap(
                m, [str(k) for k in layers], [f"{labels[p]} ({p})" for p in positions],
                f"{title}\npair {base['pair_id']}: {field} (clean {base['clean_metric']:.2f}, "
                f"corrupted {base['corrupted_metric']:.2f})",
                xlabel="position (clean|corrupted token)", ylabel="layer",
                value="normalised effect" if field == "normalised" else "logit diff")
        rows_key, ylabel = (lambda r: r["layer"]), "layer"
        row_ids = sorted({r["layer"] for r in data})
        row_names = [str(k) for k in row_ids]
    elif kind == "heads_by_position":
        # the heads whose mean effect peaks highest over offsets: all 270+ heads would not read
        cells = _cells(used_rows, _head_name, lambda r: r["from_end"], "normalised")
        peak: dict[str, float] = {}
        for (head, _), values in cells.items():
            peak[head] = max(peak.get(head, 0.0), abs(float(np.mean(values))))
        row_ids = row_names = sorted(peak, key=lambda h: -peak[h])[:N_TOP_HEADS]
        rows_key, ylabel = _head_name, f"head (top {N_TOP_HEADS} by peak |effect|)"
    else:
        return {"figures/heads.png": _head_grid(used_rows, title, len(used))}
    offsets = sorted({r["from_end"] for r in data if r["from_end"] is not None})[-N_OFFSETS:]
    if row_ids and offsets:
        m = _matrix(_cells(used_rows, rows_key, lambda r: r["from_end"], "normalised"), row_ids, offsets)
        out["figures/by_offset.png"] = heatmap(
            m, row_names, [f"{labels_by_offset.get(o, '?')} ({o})" for o in offsets],
            f"{title}\nmean normalised effect over {len(used)} used pair(s); tokens of pair {first}",
            xlabel="offset from the end (tokens of the first pair)", ylabel=ylabel, value="normalised effect")
    if kind == "heads_by_position":
        out["figures/heads.png"] = _head_grid(used_rows, title, len(used))
    return out


def _head_grid(used_rows: list[dict[str, Any]], title: str, n_used: int) -> bytes:
    """Layer x head: the mean normalised effect over used pairs (summed over positions for
    per-position patching: the head's total share)."""
    import numpy as np

    layers = sorted({r["layer"] for r in used_rows}) or [0]
    n_heads = max((r["head"] for r in used_rows), default=0) + 1
    per_pair: dict[tuple[int, int, str], float] = {}
    for r in used_rows:
        if r["normalised"] is not None:
            key = (r["layer"], r["head"], r["pair_id"])
            per_pair[key] = per_pair.get(key, 0.0) + r["normalised"]
    cells: dict[tuple[int, int], list[float]] = {}
    for (k, h, _), v in per_pair.items():
        cells.setdefault((k, h), []).append(v)
    m = _matrix(cells, layers, list(range(n_heads)))
    if not np.isfinite(m).any():
        m = np.zeros_like(m)  # no used pair: an empty grid rather than no figure
    return heatmap(m, [str(k) for k in layers], [str(h) for h in range(n_heads)],
                   f"{title}\nmean normalised effect per head over {n_used} used pair(s)",
                   xlabel="head", ylabel="layer", value="normalised effect")
