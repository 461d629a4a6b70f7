"""Replay across tokenizers that share a vocabulary (issue 12): a base/instruct pair like
Llama-3.1-8B and -Instruct has the same token -> id mapping but another eos token and chat
template, and a base tokenizer often ships no pad token.

Four tiny random llamas (the same weights) carry SmolLM2's tokenizer in four forms:
``I`` as shipped (instruct: chat template, eos = pad = <|im_end|>), ``B`` and ``B2`` a
"base" form (eos <|endoftext|>, no pad token, no chat template), ``S`` with two tokens'
ids swapped (a different vocabulary of the same size).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from builders.stages.activations import capture_activations
from builders.shared.catalog import load_catalog
from builders.shared.common import BuildError
from builders.stages.responses import generate_responses
from store import Store

PROMPTS = ["Name a fruit.", "What is the capital of Italy?", "Say something about the sea."]


def _tokenizer_dir(folder: Path, source: Path, edit: str) -> None:
    """A checkpoint folder: the tiny model's files plus SmolLM2's tokenizer, edited."""
    folder.mkdir()
    for f in source.iterdir():
        try:
            os.link(f, folder / f.name)
        except OSError:
            shutil.copy(f, folder / f.name)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if edit == "base":
        config["eos_token"] = "<|endoftext|>"
        config.pop("pad_token")
        config.pop("chat_template", None)
        (folder / "chat_template.jinja").unlink()
    elif edit == "swapped":
        tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
        vocab = tokenizer_json["model"]["vocab"]
        by_id = {i: t for t, i in vocab.items()}
        vocab[by_id[1000]], vocab[by_id[1001]] = 1001, 1000
        (folder / "tokenizer.json").unlink()  # a hard link: not the others' file
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    config_path.unlink()
    config_path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    root = tmp_path_factory.mktemp("replay-vocab")
    torch.manual_seed(0)
    tok = smollm2.tokenizer
    config = LlamaConfig(vocab_size=smollm2.model.config.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model_dir = root / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    folders = {}
    for name, edit in (("I", "none"), ("B", "base"), ("B2", "base"), ("S", "swapped")):
        folders[name] = root / f"ckpt-{name}"
        _tokenizer_dir(folders[name], model_dir, edit)
    (root / "general.json").write_text(json.dumps({"prompts": [{"id": i, "text": t} for i, t in enumerate(PROMPTS)]}))
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {f"m{name}": {"id": str(folder)} for name, folder in folders.items()},
        "prompt_sets": {"general": {"path": str(root / "general.json")}},
        "experiments": {"x": {"variants": {name: {"model": f"m{name}"} for name in folders},
                              "prompt_sets": ["general"]}},
        "defaults": {"experiment": "x", "responses": {"max_new_tokens": 4}},
    }))
    return Store(str(root / "store")), load_catalog(path), folders, path


def test_a_pad_set_at_load_changes_no_fingerprint(env):
    from transformers import AutoTokenizer

    from transforms.models import load_model, load_tokenizer, tokenizer_fingerprint, vocabulary_fingerprint

    _, _, folders, _ = env
    shipped = AutoTokenizer.from_pretrained(str(folders["B"]), local_files_only=True)
    assert shipped.pad_token is None
    padded = load_tokenizer(str(folders["B"]))
    assert padded.pad_token == "<|endoftext|>"  # pad = eos, set at load
    assert tokenizer_fingerprint(padded) == tokenizer_fingerprint(shipped)
    assert vocabulary_fingerprint(padded) == vocabulary_fingerprint(shipped)
    loaded = load_model(str(folders["B"]))
    assert loaded.tokenizer_fingerprint == tokenizer_fingerprint(padded)
    assert loaded.vocabulary_fingerprint == vocabulary_fingerprint(shipped)


def test_vocabulary_fingerprint_sees_only_the_token_ids(env, smollm2, gemma3):
    from transformers import AutoTokenizer

    from transforms.models import load_tokenizer, tokenizer_fingerprint, vocabulary_fingerprint

    _, _, folders, _ = env
    instruct, base, swapped = (load_tokenizer(str(folders[k])) for k in ("I", "B", "S"))
    assert tokenizer_fingerprint(instruct) != tokenizer_fingerprint(base)
    assert vocabulary_fingerprint(instruct) == vocabulary_fingerprint(base) == smollm2.vocabulary_fingerprint
    assert vocabulary_fingerprint(swapped) != vocabulary_fingerprint(instruct)
    assert gemma3.vocabulary_fingerprint != smollm2.vocabulary_fingerprint
    extra = AutoTokenizer.from_pretrained(str(folders["I"]), local_files_only=True)
    extra.add_tokens(["<traitstore_extra>"])  # an added token's id is part of the mapping
    assert vocabulary_fingerprint(extra) != vocabulary_fingerprint(instruct)


def test_same_vocabulary_other_eos_and_template_replays(env):
    from builders.stages.similarity import activation_similarity

    store, catalog, _, _ = env
    generate_responses(store, catalog, "I", "general", quiet=True)
    manifest = capture_activations(store, catalog, "B", "general", "response[:]", replay_from="I", quiet=True).manifest
    source = {r["prompt_id"]: r for r in store.read_table("responses-x-I-general").to_dicts()}
    assert all(r["vocabulary_fingerprint"] for r in source.values())
    rows = store.read_table(manifest).to_dicts()
    assert len(rows) == len(PROMPTS)
    for row in rows:
        a = source[row["prompt_id"]]
        assert row["token_ids"][row["prompt_len"]:] == a["token_ids"][a["prompt_len"]:]
        assert a["used_chat_template"] and not row["used_chat_template"]  # B formats its own way
    recorded = manifest.identity["replay_tokenizers"]
    differences = recorded["differences"]
    assert differences["eos_token"] == ["<|im_end|>", "<|endoftext|>"]
    assert differences["pad_token"] == ["<|im_end|>", None]  # B ships none; the one set at load is not B's
    assert differences["chat_template_sha256"][0] and differences["chat_template_sha256"][1] is None
    # builders.stages.replay (similarity, compare) takes the same pair and records the same
    similarity = activation_similarity(store, catalog, "I", "B", "general", quiet=True).manifest
    assert similarity.identity["replay_tokenizers"]["differences"] == differences
    assert all(r["same_prompt_ids"] is False for r in store.read_table(similarity, "prompts").to_dicts())


def test_tokenizer_without_pad_token_replays(env):
    store, catalog, _, _ = env
    generate_responses(store, catalog, "B", "general", quiet=True)
    manifest = capture_activations(store, catalog, "B2", "general", "response[:]", replay_from="B", quiet=True).manifest
    rows = store.read_table(manifest).to_dicts()
    assert len(rows) == len(PROMPTS)
    assert "replay_tokenizers" not in manifest.identity  # nothing differs: the same versions as before


def test_different_vocabulary_is_refused_with_one_line(env, capsys):
    from builders.activations import cli
    from builders.stages.similarity import activation_similarity

    store, catalog, _, catalog_path = env
    generate_responses(store, catalog, "I", "general", quiet=True)
    with pytest.raises(BuildError, match="vocabulary") as err:
        capture_activations(store, catalog, "S", "general", "response[:]", replay_from="I", quiet=True)
    assert "\n" not in str(err.value) and "'S'" in str(err.value)
    code = cli(["--store", store.location.url, "--catalog", str(catalog_path), "--variant", "S",
                "--prompts", "general", "--replay-from", "I", "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "vocabulary" in lines[0]
    # refused before S generates anything to replay
    with pytest.raises(BuildError, match="vocabulary"):
        activation_similarity(store, catalog, "S", "I", "general", quiet=True)
    assert not [d for d in store.datasets() if d.startswith("activations-x-S") or d == "responses-x-S-general"
                or d.startswith("similarity-x-S")]


def test_responses_built_before_the_vocabulary_was_recorded(env):
    """Older responses versions carry no tokenizer traits: those of the variant's tokenizer
    are used, provided it still has the fingerprint the rows recorded."""
    import dataclasses

    from builders.stages.replay import responses_tokenizer

    store, catalog, _, _ = env
    manifest = generate_responses(store, catalog, "B", "general", quiet=True).manifest
    recorded = manifest.summary["tokenizer"]
    old = dataclasses.replace(manifest, summary={k: v for k, v in manifest.summary.items() if k != "tokenizer"})
    assert responses_tokenizer(store, catalog, old, "x", "B") == recorded
    with pytest.raises(BuildError, match="rebuild it"):  # the catalog now names another tokenizer
        responses_tokenizer(store, catalog, old, "x", "I")
