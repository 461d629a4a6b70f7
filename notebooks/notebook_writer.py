"""Writing a generated notebook: the one helper behind the notebooks/make_*.py generators,
which keep their cells as a reviewable Python list and call :func:`write_notebook`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)


def write_notebook(cells: Sequence[tuple[str, str]], path: Path) -> Path:
    """Write ``cells`` (``("md" | "code", source)`` pairs, in order) to ``path`` as an
    unexecuted Python 3 notebook; returns the path."""
    import nbformat as nbf

    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    for i, cell in enumerate(nb.cells):  # fixed ids: regenerating an unchanged list rewrites the same bytes
        cell.id = f"cell-{i:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, path)
    log.info("wrote %s", path)
    return path
