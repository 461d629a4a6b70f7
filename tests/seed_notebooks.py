"""Shared by the seed 001 / 004 notebook tests: execute a generated notebook on a store and
check it against its generator."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def execute_notebook(name: str, root: Path, monkeypatch: Any, timeout: int = 1800) -> Any:
    """Run ``notebooks/<name>.ipynb`` top to bottom with ``$TRAITSTORE_ROOT`` = ``root``;
    returns the executed notebook (a failing cell raises ``CellExecutionError``)."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TRAITSTORE_ROOT", str(root))
    monkeypatch.setenv("TRAITSTORE_REPO", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


def outputs(nb: Any) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def output_text(nb: Any) -> str:
    """Every stream, plain-text and markdown output, concatenated."""
    data = [o.get("data", {}) for o in outputs(nb)]
    return "".join(o.get("text", "") for o in outputs(nb)) + "".join(
        d.get("text/plain", "") + d.get("text/markdown", "") for d in data)


def images(nb: Any) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb) if o.get("output_type") == "display_data")


def check_matches_generator(name: str) -> None:
    """``notebooks/<name>.ipynb`` is what ``notebooks/make_<name>.py`` writes, unexecuted."""
    import nbformat

    spec = importlib.util.spec_from_file_location(f"make_{name}", REPO / "notebooks" / f"make_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    assert [c.source for c in nb.cells] == [src for _, src in module.CELLS]
    assert [c.cell_type for c in nb.cells] == [{"md": "markdown", "code": "code"}[k] for k, _ in module.CELLS]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed unexecuted
    assert "# parameters" in module.CELLS[1][1]  # one parameters cell, first code cell
    assert "builders.run import cli" in module.CELLS[2][1]  # the next one runs the declaration
