"""The seed 004 notebook runs its catalog declaration (experiment ``seed004``) on a fresh store
and reads every result back from the store; and it matches its generator. Minutes: four trait
vectors and live projections on the offline SmolLM2."""
from __future__ import annotations

import pytest

from tests.seed_notebooks import check_matches_generator, execute_notebook, images, output_text

EXP = "seed004"


@pytest.mark.slow
def test_seed004_notebook_executes(tmp_path, monkeypatch):
    from builders.graph.records import record_name
    from store import Store

    root = tmp_path / "store"
    nb = execute_notebook("seed004", root, monkeypatch)
    text = output_text(nb)
    store = Store(str(root))
    have = set(store.datasets())
    for stage in ("judge_optimism", "vec_optimism", "vec.sycophancy", "vec.evil", "vec.hallucination", "monitor",
                  "viewer"):
        assert record_name(EXP, stage) in have, stage
    monitor = store.resolve(store.latest(record_name(EXP, "monitor")).summary["outputs"][0])
    viewer = store.resolve(store.latest(record_name(EXP, "viewer")).summary["outputs"][0])
    assert viewer.parents["projections"] == monitor.ref  # the viewer shows the monitored run
    assert store.path(viewer, "index.html") in text  # the pointer to the page
    assert images(nb) >= 1  # the per-token traces
    # the traces' four traits and the moving-token table came from the projections
    for trait in ("optimism", "sycophancy", "evil", "hallucination"):
        assert f"{trait}_instruction" in text, trait
    frame = store.read_table(monitor)
    assert set(frame["vector"].str.split(":").list.first().unique()) == {
        f"{t}_instruction" for t in ("optimism", "sycophancy", "evil", "hallucination")}
    # the verdict cell computed its text from the vectors' AUROCs at the monitored layer
    assert "separates its held-out responses" in text or "Weak monitors" in text


def test_seed004_notebook_matches_its_generator():
    check_matches_generator("seed004")
