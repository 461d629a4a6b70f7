"""Figures as files of a version: PNG bytes that do not change between identical runs."""
from __future__ import annotations

import io
from typing import Any


def png_bytes(fig: Any, dpi: int = 90) -> bytes:
    """``fig`` as PNG bytes, then closed. No timestamp or software tag in the metadata, so
    the same figure gives the same bytes (and the version's file hashes stay stable)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()
