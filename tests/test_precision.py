"""analyses.precision end to end on SmolLM2: float32 vs bfloat16 (and torchao int8 when the
catalog accepts quantized variants), each precision's vectors from its own responses (and,
with replay, over the reference's), the same steering grid at each, the trait judged by VADER.

Small settings (4 prompt pairs, 6 response tokens, 2 steering questions, 8 steered tokens,
one layer and coefficient); one cosine is recomputed with numpy from the stored vectors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from analyses.precision import SteeringPlan, compare_precisions, main
from builders.shared.judges import JudgeChoice
from builders.shared.catalog import CatalogError, load_catalog
from builders.stages.vectors import load_vectors
from store import Store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What do you think about Mondays?", "Describe a rainy afternoon.",
             "How do you feel about getting older?", "What is it like to move to a new city?"]
CHEERFUL = "You are a cheerful assistant who always sees the bright side of everything."
GLOOMY = "You are a gloomy assistant who always sees the dark side of everything."
STEERING = ["What do you think about autumn?", "Describe a long car journey."]
LAYERS = "12"
COEFS = (8.0,)


def write_catalog(tmp: Path, with_int8: bool) -> Path:
    trait = tmp / "optimism"
    trait.mkdir()
    for name, system in (("positive", CHEERFUL), ("negative", GLOOMY)):
        rows = [{"id": i, "prompt": q, "system_prompt": system} for i, q in enumerate(QUESTIONS)]
        (trait / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (trait / "definition.txt").write_text("Score optimism 0-100: 100 = sees the bright side of everything.")
    (trait / "steering.json").write_text(json.dumps({"questions": STEERING, "direction": "positive"}))
    variants = {"fp32": {"model": "smol", "dtype": "float32"}, "bf16": {"model": "smol", "dtype": "bfloat16"},
                "other": {"model": "gemma"}}
    if with_int8:
        variants["int8"] = {"model": "smol", "quantization": {"method": "torchao", "bits": 8}}
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}, "gemma": {"id": "pkg:gemma3-270m"}},
        "traits": {"optimism": {"definition": str(trait / "definition.txt"), "sentiment": "positive"}},
        "prompt_sets": {"opt": {"path": str(trait), "trait": "optimism"}},
        "experiments": {"prec": {"variants": variants, "prompt_sets": ["opt"], "application": "fp32"}},
        "defaults": {"experiment": "prec", "responses": {"max_new_tokens": 6}, "steering": {"max_new_tokens": 8}},
    }))
    return path


def _int8_usable(tmp: Path) -> bool:
    """Quantized variants validate only once the catalog knows ``quantization``; torchao
    int8 weight-only then runs on the CPU."""
    try:
        load_catalog(write_catalog(tmp, with_int8=True))
    except CatalogError:
        return False
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


# the LLM coherence judge needs no calibration (building the perplexity judge's costs minutes);
# the trait judge is the objective one the analysis uses by default
JUDGES = JudgeChoice(trait="sentiment", coherence="local", allow_uncalibrated=True)


def _compare(store, catalog, variants, replay_from=None):
    return compare_precisions(store, catalog, "fp32", variants, SteeringPlan(LAYERS, COEFS), prompt_set="opt",
                              position="response[:]", judges=JUDGES, replay_from=replay_from, quiet=True)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    with_int8 = _int8_usable(tmp_path_factory.mktemp("probe"))
    path = write_catalog(tmp_path_factory.mktemp("catalog"), with_int8)
    store = Store(str(tmp_path_factory.mktemp("store")))
    catalog = load_catalog(path)
    variants = ["bf16", "int8"] if with_int8 else ["bf16"]
    result, tables = _compare(store, catalog, variants)
    return store, catalog, path, result, tables, variants


def test_published_with_cosines_and_deltas(compared):
    store, _, _, result, tables, variants = compared
    manifest = store.resolve("analysis-precision-prec-optimism")
    assert result.built and manifest.ref == result.manifest.ref
    assert {"precision.png", "report.md"} <= set(manifest.files)
    assert store.read_bytes(manifest, "precision.png")[:8] == b"\x89PNG\r\n\x1a\n"
    # every vectors and steering version read is a parent, reference included
    assert sorted(manifest.parents) == sorted(f"{k}-{v}" for v in ["fp32", *variants] for k in ("vectors", "steering"))
    data = store.read_table(manifest).to_dicts()
    bf16 = [r for r in data if r["variant"] == "bf16"]
    assert [r["layer"] for r in bf16] == list(range(30))  # per layer: every decoder block of SmolLM2
    assert {r["precision"] for r in bf16} == {"bfloat16"}
    assert all(-1.0 <= r["cosine"] <= 1.0 for r in data)
    steering = store.read_table(manifest, table="steering").to_dicts()
    for variant in ["fp32", *variants]:
        got = {(r["layer"], r["coef"]) for r in steering if r["variant"] == variant}
        assert got == {(12, 8.0)}, variant
    for row in steering:
        assert row["delta"] is not None and row["n"] == len(STEERING)
        assert row["delta_ci_lo"] <= row["delta"] <= row["delta_ci_hi"]
        assert (row["delta_vs_reference"] is None) == (row["variant"] == "fp32")
    verdict = store.read_table(manifest, table="verdict").to_dicts()
    assert [v["variant"] for v in verdict] == variants
    assert verdict[0]["text"].startswith("bfloat16 (bf16) vs float32 (fp32)") and "min cosine" in verdict[0]["text"]
    # answers compared token for token with the reference's, independently here
    tables = {v: store.read_table(store.resolve(f"responses-prec-{v}-opt")).to_dicts() for v in ("fp32", "bf16")}
    answers = {v: {r["prompt_id"]: r["token_ids"][r["prompt_len"]:] for r in rows} for v, rows in tables.items()}
    same = sum(list(answers["bf16"][k]) == list(answers["fp32"][k]) for k in answers["fp32"])
    assert (verdict[0]["answers_identical"], verdict[0]["answers_compared"]) == (same, 2 * len(QUESTIONS))


def test_independent_checks(compared):
    """One cosine recomputed with numpy from the stored vectors; one delta recomputed from
    the steering run's own response scores."""
    store, _, _, result, _, _ = compared
    manifest = result.manifest
    fp32, _ = load_vectors(store, manifest.parents["vectors-fp32"], "mean_diff")
    bf16, _ = load_vectors(store, manifest.parents["vectors-bf16"], "mean_diff")
    a, b = bf16[12].astype(np.float64), fp32[12].astype(np.float64)
    expected = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    row = next(r for r in store.read_table(manifest).to_dicts()
               if r["variant"] == "bf16" and r["layer"] == 12 and r["method"] == "mean_diff")
    assert row["cosine"] == pytest.approx(expected, abs=1e-9)
    assert row["norm_ratio"] == pytest.approx(np.linalg.norm(a) / np.linalg.norm(b), rel=1e-9)
    run = store.resolve(manifest.parents["steering-bf16"])
    runs = store.read_table(run).to_dicts()
    responses = store.read_table(run, table="responses").to_dicts()
    base = next(r for r in runs if r["mode"] == "baseline")["run_id"]
    steered = next(r for r in runs if r["layer"] == 12)["run_id"]
    trait = lambda rid: {r["question_id"]: r["trait"] for r in responses if r["run_id"] == rid}  # noqa: E731
    per_q = [trait(steered)[q] - trait(base)[q] for q in trait(base)]
    row = next(r for r in store.read_table(manifest, table="steering").to_dicts()
               if r["variant"] == "bf16" and r["layer"] == 12)
    assert row["delta"] == pytest.approx(np.mean(per_q))
    assert row["delta_std"] == pytest.approx(np.std(per_q, ddof=1))


def test_rerun_is_a_no_op(compared):
    store, catalog, _, result, _, variants = compared
    again, _ = _compare(store, catalog, variants)
    assert not again.built and again.manifest.ref == result.manifest.ref


def test_replay_isolates_the_representation(compared):
    """Over the reference's own responses, bf16 vectors point where float32's do at every
    layer (capture differs by ~1% of ||h||); answers that diverge by one token are what moves
    the own-responses vectors of this 4-pair set (see the README)."""
    store, catalog, _, result, _, _ = compared
    replayed, tables = _compare(store, catalog, ["bf16"], replay_from="fp32")  # bf16 only: judging is slow
    assert replayed.manifest.name == "analysis-precision-prec-optimism-replay_fp32"
    # the reference's vectors and steering run are shared with the own-responses comparison
    assert replayed.manifest.parents["vectors-fp32"] == result.manifest.parents["vectors-fp32"]
    assert replayed.manifest.parents["vectors-bf16"].startswith("vectors-prec-bf16-opt-response__-residual-replay_fp32@")
    bf16 = [r for r in tables["data"] if r["variant"] == "bf16"]
    assert len(bf16) == 30 and min(r["cosine"] for r in bf16) > 0.9, [round(r["cosine"], 3) for r in bf16]
    assert all(0.9 < r["norm_ratio"] < 1.1 for r in bf16)
    verdict = tables["verdict"][0]
    assert verdict["answers_identical"] == verdict["answers_compared"] == 2 * len(QUESTIONS)  # the very answers
    steered = {(r["variant"], r["layer"]) for r in tables["steering"]}
    assert steered == {("fp32", 12), ("bf16", 12)}


def test_cli_help_and_bad_input(compared, capsys):
    store, _, path, _, _, _ = compared
    help_text = subprocess.run([sys.executable, "-m", "analyses.precision", "--help"], cwd=ROOT,
                               capture_output=True, text=True)
    assert help_text.returncode == 0 and "--reference" in help_text.stdout and "--dtype" not in help_text.stdout
    before = sorted(store.datasets())
    code = main(["--store", str(store.location.url), "--catalog", str(path), "-q", "--experiment", "prec",
                 "--reference", "fp32", "--variants", "other", "--prompts", "opt"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --variants other: model 'gemma'") and "same model" in err
    assert sorted(store.datasets()) == before
