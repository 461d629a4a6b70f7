"""Library figures leave matplotlib's global state alone: a stage run inside a notebook kernel
(the seed notebooks run their experiments in-kernel) must not switch the notebook's backend to
Agg, or every later ``plt.show()`` in that notebook draws nothing."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("builders", "analyses", "store", "transforms")


def test_png_bytes_is_a_png_and_repeatable():
    from builders.shared.figures import png_bytes, subplots

    def draw() -> bytes:
        fig, axes = subplots(1, 2, figsize=(4, 2), squeeze=False)
        axes[0, 0].plot([0, 1, 2], [1, 0, 2])
        axes[0, 1].bar([0, 1], [3, 1])
        return png_bytes(fig)

    first = draw()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert draw() == first  # no timestamp: identical figures give identical bytes (stable file hashes)


def test_drawing_keeps_the_callers_backend_and_opens_no_pyplot_figure():
    import matplotlib

    matplotlib.use("svg")  # stands in for a notebook's inline backend: anything but Agg
    import matplotlib.pyplot as plt

    from builders.stages.sae_features import frequency_histogram

    before = plt.get_fignums()
    png = frequency_histogram([0.0, 0.01, 0.2, 0.5], n_tokens=100)
    assert png[:4] == b"\x89PNG"
    assert matplotlib.get_backend().lower() == "svg"
    assert plt.get_fignums() == before


def test_library_code_never_goes_through_pyplot():
    offenders = []
    for package in LIBRARY:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "matplotlib.pyplot" for n in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} matplotlib.use")
    assert not offenders, "pyplot / matplotlib.use in library code (draw on builders.shared.figures.subplots): " + \
        ", ".join(offenders)
