"""The dtype a judge model runs in is part of the judge's identity (issue 13): bf16 judge
scores get their own version ids and cache keys, float32 ids stay as they were."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builders.shared import common
from builders.stages.calibration import reference_identity
from builders.shared.catalog import load_catalog
from builders.shared.judge_cache import StoreScoreCache
from builders.shared.judges import JudgeChoice, local_judge_name
from store import Store

ROWS = [{"id": "a1", "question": "What do you think about Mondays?",
         "response": "Mondays are wonderful, a bright fresh start full of hope!"},
        {"id": "a2", "question": "Describe a rainy afternoon.", "response": "Grey, slow and quiet, with tea."}]


@pytest.fixture
def auto_placement(monkeypatch):
    """This process's --device / --dtype back to auto afterwards (the CLI sets them)."""
    monkeypatch.setitem(common._PLACEMENT, "device", None)
    monkeypatch.setitem(common._PLACEMENT, "dtype", None)


def _judge(store: Path, answers: Path, capsys, *extra: str) -> str:
    """Judge the file with the local LLM judge (both metrics); the version built."""
    from builders.judgments import cli

    assert cli(["--store", str(store), "--responses-file", str(answers), "--name", "mine", "--judge", "local",
                "--device", "cpu", "-q", *extra]) == 0
    out = capsys.readouterr().out
    return re.search(r"judgments-external-mine@(\w+)", out).group(1)


@pytest.mark.slow
def test_bf16_local_judge_has_its_own_version_and_does_not_reuse_float32_scores(tmp_path, capsys, auto_placement):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    store_path = tmp_path / "store"
    f32 = _judge(store_path, answers, capsys)
    store = Store(str(store_path))
    f32_manifest = store.resolve(f"judgments-external-mine@{f32}")
    judge = f32_manifest.identity["judges"]["trait"]["model"]
    assert "dtype" not in judge and judge == local_judge_name(None)  # float32: the id as before
    cached = len(StoreScoreCache(store))
    assert cached == 3 * len(ROWS)  # trait, coherence, relevance

    bf16 = _judge(store_path, answers, capsys, "--dtype", "bfloat16")
    assert bf16 != f32
    identity = store.resolve(f"judgments-external-mine@{bf16}").identity["judges"]
    assert identity["trait"]["model"] == judge + "+dtype:bfloat16"
    assert identity["coherence"]["model"] == judge + "+dtype:bfloat16"
    assert len(StoreScoreCache(store)) == 2 * cached, "bf16 scores are scored and cached apart from float32's"
    assert _judge(store_path, answers, capsys, "--dtype", "bfloat16") == bf16  # and reused by a bf16 rerun


def test_local_judge_name_holds_the_dtype_only_when_not_float32(auto_placement):
    plain = local_judge_name(None)
    common._PLACEMENT["dtype"] = "float32"
    assert local_judge_name(None) == plain and "dtype" not in plain
    common._PLACEMENT["dtype"] = "bfloat16"
    assert local_judge_name(None) == plain + "+dtype:bfloat16"


def test_perplexity_reference_identity_holds_the_dtype(auto_placement):
    """The perplexity judge's reference model (a catalog model or the scored variant): its
    dtype enters its identity, hence the scorer's identity hash and cache key."""
    from transforms.judge import PerplexityFeaturizer

    catalog = load_catalog()
    exp = catalog.experiment(None)
    variant = next(iter(exp.variants))
    named = JudgeChoice("sentiment", "perplexity", reference="smollm2-135m-instruct")
    f32 = reference_identity(None, catalog, exp.name, variant, named)
    assert "dtype" not in f32
    common._PLACEMENT["dtype"] = "bfloat16"  # --dtype bfloat16: what cached_model loads the reference in
    bf16 = reference_identity(None, catalog, exp.name, variant, named)
    assert bf16 == {**f32, "dtype": "bfloat16"}
    assert PerplexityFeaturizer(None, bf16).identity() != PerplexityFeaturizer(None, f32).identity()
    placed = catalog.with_placement(dtype="bfloat16")  # the default reference: the variant, as placed
    assert reference_identity(None, placed, exp.name, variant, JudgeChoice("sentiment", "perplexity"))["dtype"] \
        == "bfloat16"
