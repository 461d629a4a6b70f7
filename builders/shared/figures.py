"""Figures as files of a version: PNG bytes that do not change between identical runs.

Library code draws on bare ``matplotlib.figure.Figure`` objects, never through pyplot: pyplot
state (and ``matplotlib.use``) is global, and a stage run inside a notebook kernel must not
switch that notebook's inline backend off or leave figures behind for its next ``plt.show()``."""
from __future__ import annotations

import io
from typing import Any


def subplots(*args: Any, figsize: tuple[float, float] = (6.4, 4.8), **kwargs: Any) -> tuple[Any, Any]:
    """Like ``plt.subplots`` but on a detached ``Figure`` (no backend, nothing global)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def png_bytes(fig: Any, dpi: int = 90) -> bytes:
    """``fig`` as PNG bytes. No timestamp or software tag in the metadata, so the same figure
    gives the same bytes (and the version's file hashes stay stable)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
