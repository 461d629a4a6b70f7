"""Memory-aware batches and the out-of-memory retry in the responses and activations
builders (issue 13, item 3), on the real SmolLM2 with a simulated CUDA out-of-memory
error: the decoder trunk's forward raises ``torch.OutOfMemoryError`` whenever it sees more
sequences than a limit. A unit retried at half the batch must give the bytes of a build at
the smaller batch from the start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builders import activations, responses
from builders.stages import activations as activations_stage
from transforms.batching import CPU_GENERATION_BATCH

PROMPTS = 10
ROLLOUTS = "2"  # 20 rows: units of 16 and 4 with --unit-size 16, two batches of 8 (or four of 4) in the first
GENERATION = ["--max-new-tokens", "4", "--temperature", "0.9", "--seed", "5", "--rollouts", ROLLOUTS]
LAYERS = "0,3"  # the forward stops after the deepest requested layer


def _write_catalog(folder: Path) -> Path:
    prompts = folder / "ten.json"
    texts = ["Name a colour.", "Say hello.", "What is two plus two?", "Describe rain in a few words.",
             "Give me a fruit.", "Why is the sky blue?", "Write a greeting for a friend.", "Name a planet.",
             "What do cats eat?", "Tell me one word that rhymes with cat."]
    prompts.write_text(json.dumps({"name": "ten", "prompts": [{"id": i + 1, "text": t} for i, t in enumerate(texts)]}))
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"ten": {"path": str(prompts)}},
        "experiments": {"dev": {"variants": {"instruct": {"model": "smol"}}, "prompt_sets": ["ten"]}},
        "defaults": {"experiment": "dev"},
    }))
    return path


@pytest.fixture
def oom_above(monkeypatch):
    """``oom_above(n, after=k)``: from now on the Llama trunk's forward (generation and capture
    both go through it) raises CUDA's out-of-memory error on a batch of more than ``n``
    sequences, once ``k`` such forwards went through (so a unit fails after writing some of
    its batches). Returns the list of ``(batch size, raised)`` of every forward."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaModel

    original = LlamaModel.forward

    def install(limit: int, after: int = 0) -> list[tuple[int, bool]]:
        seen: list[tuple[int, bool]] = []

        def forward(self, input_ids=None, *args, **kwargs):
            n = int((input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0])
            raised = n > limit and sum(size > limit for size, _ in seen) >= after
            seen.append((n, raised))
            if raised:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (simulated)")
            return original(self, input_ids, *args, **kwargs)

        monkeypatch.setattr(LlamaModel, "forward", forward)
        return seen

    return install


def _responses(store: Path, catalog: Path, *extra: str) -> int:
    return responses.cli(["--store", str(store), "--catalog", str(catalog), "--variant", "instruct",
                          "--prompts", "ten", "--quiet", *GENERATION, *extra])


def _activations(store: Path, catalog: Path, *extra: str) -> int:
    return activations.cli(["--store", str(store), "--catalog", str(catalog), "--variant", "instruct",
                            "--prompts", "ten", "--layers", LAYERS, "--quiet", *extra])


def _versions(store: Path, dataset: str) -> dict[str, dict]:
    """version id -> manifest."""
    folder = store / dataset
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/manifest.json")} if folder.is_dir() else {}


def _files(store: Path, dataset: str, version: str) -> dict[str, bytes]:
    """Every file of a version but its manifest (which holds the version id), by path."""
    root = store / dataset / version
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def _rows(store: Path, dataset: str, version: str) -> list[tuple]:
    """(prompt id, rollout, token ids) of every row of a responses version, in order."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in sorted((store / dataset / version).rglob("*.parquet"))]
    return sorted((r["prompt_id"], r["rollout"], tuple(r["token_ids"])) for t in tables for r in t.to_pylist())


def _published(store: Path) -> dict[str, set[str]]:
    """dataset -> its published versions (a failed build may leave only a scratch folder)."""
    return {d.name: set(_versions(store, d.name)) for d in store.iterdir() if d.is_dir() and _versions(store, d.name)}


def _new_version(store: Path, dataset: str, before: set[str]) -> tuple[str, dict]:
    (version,) = set(_versions(store, dataset)) - before
    return version, _versions(store, dataset)[version]


RESPONSES = "responses-dev-instruct-ten"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Responses at --batch-size 4 (no simulated limit), in units of 16 rows."""
    folder = tmp_path_factory.mktemp("oom")
    store, catalog = folder / "store", _write_catalog(folder)
    assert _responses(store, catalog, "--batch-size", "4", "--unit-size", "16") == 0
    ((version, manifest),) = _versions(store, RESPONSES).items()
    assert manifest["summary"]["responses"] == 20
    return store, catalog, version


def test_responses_retried_at_half_the_batch_equal_a_small_batch_run(built, oom_above):
    store, catalog, small = built
    assert _versions(store, RESPONSES)[small]["summary"]["batch_sizes"] == [4]
    seen = oom_above(4, after=2)  # the first batch of 8 gets two tokens in, then runs out of memory
    assert _responses(store, catalog, "--batch-size", "8", "--unit-size", "16") == 0
    retried, manifest = _new_version(store, RESPONSES, {small})
    assert manifest["summary"]["batch_sizes"] == [4]
    assert manifest["params"]["generation"]["batch_size"] == 8  # the request stays in the version id
    assert _files(store, RESPONSES, retried) == _files(store, RESPONSES, small)
    assert [raised for _, raised in seen].count(True) == 1, "later units start at the reduced size"


def test_generation_config_column_has_no_batch_size(built):
    from store import Store

    store, _, small = built
    rows = Store(str(store)).read_table(Store(str(store)).resolve(f"{RESPONSES}@{small}")).to_dicts()
    config = json.loads(rows[0]["generation_config"])
    assert "batch_size" not in config and config["temperature"] == 0.9 and config["seed"] == 5


@pytest.mark.parametrize("per_token", [False, True], ids=["pooled", "per_token"])
def test_activations_retried_at_half_the_batch_equal_a_small_batch_run(built, oom_above, monkeypatch, per_token):
    store, catalog, _ = built
    monkeypatch.setattr(activations_stage, "TOKEN_CHUNK", 7)  # per token: whole chunks written as batches come
    flags = ["--unit-size", "16", "--position", "response[:]"] + (["--per-token"] if per_token else [])
    dataset = "activations-dev-instruct-ten-response__-residual" + ("-per_token" if per_token else "")
    assert _activations(store, catalog, "--batch-size", "4", *flags) == 0
    small, _ = _new_version(store, dataset, set())
    seen = oom_above(4, after=1)  # the unit's first batch of 8 is captured (and written), the second fails
    assert _activations(store, catalog, "--batch-size", "8", *flags) == 0
    retried, manifest = _new_version(store, dataset, {small})
    assert manifest["summary"]["batch_sizes"] == [4]
    files = _files(store, dataset, retried)
    assert any("acts.zarr/c/" in path for path in files) and any(path.endswith(".parquet") for path in files)
    assert files == _files(store, dataset, small)
    assert [raised for _, raised in seen].count(True) == 1 and (8, False) in seen


@pytest.mark.parametrize("stage", ["responses", "activations"])
def test_out_of_memory_at_batch_one_is_one_line_and_publishes_nothing(built, oom_above, capsys, stage):
    store, catalog, _ = built
    before = _published(store)
    oom_above(0)
    if stage == "responses":
        code = _responses(store, catalog, "--batch-size", "2", "--unit-size", "8", "--seed", "6")
    else:
        code = _activations(store, catalog, "--batch-size", "2", "--position", "response[:2]")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith(f"error: {stage} instruct/ten unit-00000: out of memory with a batch of 1 (CUDA out of memory")
    assert _published(store) == before, "nothing published"


def test_auto_on_the_cpu_equals_batch_8_and_32_for_generation(built):
    store, catalog, _ = built
    before = set(_versions(store, RESPONSES))
    # generation: units round up to whole batches of 32 (12 -> 32), and the batch is 32
    assert _responses(store, catalog, "--batch-size", "32", "--unit-size", "12", "--seed", "9") == 0
    fixed, manifest = _new_version(store, RESPONSES, before)
    assert manifest["params"]["unit_size"] == 32
    assert _responses(store, catalog, "--batch-size", "auto", "--unit-size", "12", "--seed", "9") == 0
    auto, manifest = _new_version(store, RESPONSES, before | {fixed})
    assert manifest["params"]["generation"]["batch_size"] == "auto" and manifest["summary"]["batch_sizes"] == [CPU_GENERATION_BATCH]
    assert manifest["params"]["unit_size"] == 32
    assert _files(store, RESPONSES, auto) == _files(store, RESPONSES, fixed)
    assert _responses(store, catalog, "--batch-size", "auto", "--unit-size", "12", "--seed", "9") == 0  # a rebuild is a no-op
    assert set(_versions(store, RESPONSES)) == before | {fixed, auto}
    # greedy, the batch does not change the tokens (sampling is seeded per batch index, so it does)
    known = set(_versions(store, RESPONSES))
    assert _responses(store, catalog, "--batch-size", "8", "--unit-size", "12", "--temperature", "0") == 0
    eight, _ = _new_version(store, RESPONSES, known)
    assert _responses(store, catalog, "--unit-size", "12", "--temperature", "0") == 0
    auto, _ = _new_version(store, RESPONSES, known | {eight})
    assert _rows(store, RESPONSES, auto) == _rows(store, RESPONSES, eight)  # units of 32 and of 16 + 4: the same rows

    dataset = "activations-dev-instruct-ten-response__2-residual"
    known = set(_versions(store, dataset))
    assert _activations(store, catalog, "--batch-size", "8", "--position", "response[:2]") == 0
    eight, _ = _new_version(store, dataset, known)
    assert _activations(store, catalog, "--position", "response[:2]") == 0  # no flag: auto (the function's default)
    auto, manifest = _new_version(store, dataset, known | {eight})
    assert manifest["params"]["batch_size"] == "auto" and manifest["summary"]["batch_sizes"] == [8]
    assert _files(store, dataset, auto) == _files(store, dataset, eight)


@pytest.mark.parametrize("stage", ["responses", "activations"])
@pytest.mark.parametrize("value", ["0", "x"])
def test_bad_batch_size_is_one_line(tmp_path, capsys, stage, value):
    store = tmp_path / "store"
    run = _responses if stage == "responses" else _activations
    assert run(store, _write_catalog(tmp_path), "--batch-size", value) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --batch-size: batch size must be"), err
    assert not store.exists() or not any(store.iterdir())


def test_smaller_batches_divide_the_unit_and_later_units_start_there():
    """A forced size that is no power of two backs off to divisors of the unit (so batches keep
    starting at multiples of their size), and the job's next unit starts at the size that fit."""
    import torch

    from builders.shared.units import run_batched
    from transforms.batching import halving_divisor

    assert [halving_divisor(12)(s) for s in (12, 6, 3)] == [6, 3, 1]
    assert [halving_divisor(14)(s) for s in (14, 7, 2)] == [7, 2, 1]
    assert halving_divisor(64)(64) == 32
    calls: list[int] = []

    def work(size: int) -> int:
        calls.append(size)
        if size > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return size

    assert run_batched("scratch-of-a-test-job", "responses x unit-00000", 12, 12, work) == (3, 3)
    assert run_batched("scratch-of-a-test-job", "responses x unit-00001", 12, 12, work) == (3, 3)
    assert calls == [12, 6, 3, 3]
