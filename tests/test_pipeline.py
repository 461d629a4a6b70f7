"""End to end on the real offline models: prompts -> responses -> activations.

Parity: pooled activations equal the mean of plain transformers' ``hidden_states[k+1]``
over the same token span (rtol 1e-4), every layer, both demo models, three positions.
The last block's output is compared with the final norm replaced by identity, since
``hidden_states[-1]`` is after the final norm (see transforms/capture/layers.py).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from builders.stages.activations import capture_activations
from builders.shared.catalog import load_catalog
from builders.stages.responses import generate_responses
from store import Store

REPO = Path(__file__).resolve().parents[1]
POSITIONS = ("prompt[-1]", "response[:5]", "response[:]")
MAX_NEW = 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Responses of both demo variants to the inference set, in one store."""
    root = str(tmp_path_factory.mktemp("store"))
    store, catalog = Store(root), load_catalog()
    for variant in ("instruct", "base"):
        generate_responses(store, catalog, variant, "general", "demo", {"max_new_tokens": MAX_NEW}, quiet=True)
    return store, catalog


def hidden_states_reference(model, ids: list[int]) -> list[np.ndarray]:
    """Block outputs from plain transformers: hidden_states[k+1] for k < n-1, and the last
    block's output from hidden_states[-1] with the final norm swapped for identity."""
    import torch

    from transforms.capture import decoder_trunk

    trunk = decoder_trunk(model)
    with torch.inference_mode():
        states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        layers = [s[0].float().numpy() for s in states[1:]]
        norm = trunk.norm
        trunk.norm = torch.nn.Identity()
        try:
            last = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
        finally:
            trunk.norm = norm
    layers[-1] = last[0].float().numpy()
    return layers


@pytest.mark.parametrize("variant, fixture", [("instruct", "smollm2"), ("base", "gemma3")])
def test_pooled_activations_match_hidden_states(built, variant, fixture, request):
    from transforms.sequences import parse_position

    store, catalog = built
    loaded = request.getfixturevalue(fixture)
    responses = store.read_table(f"responses-demo-{variant}-general").to_dicts()
    references = [hidden_states_reference(loaded.model, r["token_ids"]) for r in responses]
    for position in POSITIONS:
        manifest = capture_activations(store, catalog, variant, "general", position, "all", quiet=True).manifest
        acts = store.open_array(manifest, "acts")[:]
        table = store.read_table(manifest).sort("sample")
        assert acts.shape == (len(responses), loaded.n_layers, loaded.d_model)
        assert table["prompt_id"].to_list() == [r["prompt_id"] for r in responses]
        pos = parse_position(position)
        for i, (row, ref) in enumerate(zip(responses, references)):
            start, end = pos.span(row["prompt_len"], len(row["token_ids"]))
            expected = np.stack([layer[start:end].mean(axis=0) for layer in ref])
            np.testing.assert_allclose(acts[i], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
                                       err_msg=f"{variant} {position} sample {i}")


def test_responses_rows_keep_ids_and_boundary(built, smollm2):
    from transforms.sequences import assert_no_double_bos

    store, _ = built
    rows = store.read_table("responses-demo-instruct-general").to_dicts()
    assert len(rows) == 10
    for row in rows:
        prompt_ids = row["token_ids"][:row["prompt_len"]]
        assert smollm2.tokenizer.decode(prompt_ids) == row["formatted_prompt"]
        assert_no_double_bos(row["token_ids"], smollm2.tokenizer)
        assert row["response_len"] == len(row["token_ids"]) - row["prompt_len"] <= MAX_NEW
        assert row["model_id"] == "pkg:smollm2-135m-instruct" and row["model_revision"]
    base = store.read_table("responses-demo-base-general").to_dicts()
    assert all(not r["used_chat_template"] for r in base)  # Gemma 3 base has no chat template


def test_rebuild_is_noop_and_loads_no_model(built):
    """A rebuild of unchanged work answers from the store: it never imports transformers, so
    it cannot have loaded a model or a tokenizer (what made it slow; no wall-clock limit,
    which a loaded CI machine would break)."""
    store = built[0]
    before = {m.ref for m in store.all_manifests()}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "builders.responses", "--store",
                          store.location.root, "--variant", "instruct", "--prompts", "general",
                          "--max-new-tokens", str(MAX_NEW)],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("up to date: responses-demo-instruct-general@")
    assert {m.ref for m in store.all_manifests()} == before
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "builders.stages.responses" in imported  # the listing is real
    assert "transformers" not in imported


def _responses_cmd(root: str, batch_size: int) -> list[str]:
    return [sys.executable, "-m", "builders.responses", "--store", root, "--variant", "instruct", "--prompts",
            "general", "--max-new-tokens", "8", "--batch-size", str(batch_size), "--quiet"]


def test_sigkill_halfway_leaves_no_version_and_resumes_identically(tmp_path):
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    subprocess.run(_responses_cmd(clean, 2), cwd=REPO, check=True, capture_output=True)
    reference = Store(clean).resolve("responses-demo-instruct-general")

    proc = subprocess.Popen(_responses_cmd(killed, 2), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "killed" / "responses-demo-instruct-general" / f".partial-{reference.version}"
    deadline = time.time() + 240
    while time.time() < deadline and not list(partial.glob("unit-*/batch-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(partial.glob("unit-*/batch-*.parquet")), "the build finished no batch before the kill"
    store = Store(killed)
    assert store.versions("responses-demo-instruct-general") == []  # nothing partial is visible

    subprocess.run(_responses_cmd(killed, 2), cwd=REPO, check=True, capture_output=True)
    resumed = store.resolve("responses-demo-instruct-general")
    assert resumed.version == reference.version
    data_files = {k: v for k, v in resumed.files.items()}
    assert data_files == reference.files and resumed.content_hash == reference.content_hash
    assert not partial.exists()


@pytest.mark.parametrize("args, message", [
    (["builders.responses", "--variant", "chat", "--prompts", "general"], "unknown variant 'chat'"),
    (["builders.responses", "--variant", "instruct", "--prompts", "nope"], "unknown prompt set 'nope'"),
    (["builders.activations", "--variant", "instruct", "--prompts", "general", "--position", "response[5"],
     "bad position"),
    (["builders.activations", "--variant", "instruct", "--prompts", "general", "--layers", "30"],
     "out of range"),
    (["builders.activations", "--variant", "instruct", "--prompts", "general", "--layers", "2-x"], "bad layer spec"),
])
def test_bad_input_is_one_line_and_touches_nothing(built, args, message):
    store = built[0]
    before = {m.ref: m.content_hash for m in store.all_manifests()}
    out = subprocess.run([sys.executable, "-m", *args, "--store", store.location.root, "--quiet"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert {m.ref: m.content_hash for m in store.all_manifests()} == before


def test_replay_refuses_different_tokenizers(built):
    store, catalog = built
    from builders.shared.common import BuildError

    with pytest.raises(BuildError, match="does not share the tokenizer vocabulary"):
        capture_activations(store, catalog, "base", "general", "response[:]", replay_from="instruct", quiet=True)
    assert not [d for d in store.datasets() if "replay" in d]


def test_batched_generation_equals_unbatched(built, tmp_path):
    store, catalog = built
    single = Store(str(tmp_path / "single"))
    generate_responses(single, catalog, "instruct", "general", "demo",
                       {"max_new_tokens": MAX_NEW, "batch_size": 1}, quiet=True)
    batched = {r["prompt_id"]: r["token_ids"] for r in store.read_table("responses-demo-instruct-general").to_dicts()}
    unbatched = {r["prompt_id"]: r["token_ids"] for r in single.read_table("responses-demo-instruct-general").to_dicts()}
    assert batched == unbatched


def test_per_token_activations_match_hidden_states(built, smollm2, monkeypatch):
    import builders.stages.activations

    monkeypatch.setattr(builders.stages.activations, "TOKEN_CHUNK", 7)  # many chunk flushes, ragged ends
    store, catalog = built
    manifest = capture_activations(store, catalog, "instruct", "general", "response[:]", "3,29", per_token=True,
                                   quiet=True).manifest
    acts = store.open_array(manifest, "acts")
    assert acts.metadata.dimension_names == ("token", "layer", "d_model") and acts.attrs["layers"] == [3, 29]
    rows = store.read_table(manifest).sort("sample").to_dicts()
    assert acts.chunks == (7, 1, 576)
    assert sorted((r["token_start"], r["token_end"]) for r in rows)[-1][1] == acts.shape[0]
    for row in rows:
        ref = hidden_states_reference(smollm2.model, row["token_ids"])
        got = acts[row["token_start"]:row["token_end"]]
        assert got.shape[0] == row["total_len"] - row["prompt_len"] == row["n_tokens"]
        for j, layer in enumerate((3, 29)):
            expected = ref[layer][row["prompt_len"]:]
            np.testing.assert_allclose(got[:, j], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
