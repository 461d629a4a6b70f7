"""One model resolution path that honours the revision, one model-dims reader, one model cache
(issue 14).

A fake Hugging Face hub cache (no network, ``HF_HUB_OFFLINE``) holds two revisions of one
repository with different depths: config dims, the checkpoint folder and the weight analysis'
checkpoint must all follow the pinned revision, and ``main`` when none is pinned.
"""
from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest

REPO = "org/tiny"
MAIN = "a" * 40  # refs/main
OTHER = "b" * 40  # refs/other, and pinned by hash
LAYERS = {MAIN: 2, OTHER: 4}
WIDTH = {MAIN: 8, OTHER: 16}


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A hub cache with ``org/tiny`` at two revisions; the hub library pointed at it, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    for rev in (MAIN, OTHER):
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": LAYERS[rev],
            "hidden_size": WIDTH[rev], "intermediate_size": 32, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": 64}))
        (snap / "model.safetensors").write_bytes(b"not read here")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "other").write_text(OTHER)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub library reads these once, at import: point the imported constants at the fake
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo


@pytest.mark.parametrize("revision, expected", [(None, MAIN), (MAIN, MAIN), (OTHER, OTHER), ("other", OTHER)])
def test_config_dims_follow_the_pinned_revision(hub, revision, expected):
    # fails on the old code for OTHER: builders' model_config_dims dropped the revision (main's dims)
    from builders.shared.common import model_config_dims, model_layer_count

    assert model_config_dims(REPO, revision) == (LAYERS[expected], WIDTH[expected])
    assert model_layer_count(REPO, revision) == LAYERS[expected]


@pytest.mark.parametrize("revision, expected", [(None, MAIN), (OTHER, OTHER), ("other", OTHER)])
def test_checkpoint_folder_config_and_weights_follow_the_pinned_revision(hub, revision, expected):
    from builders.shared.catalog import ModelEntry, Variant
    from builders.stages.weights import checkpoint_dir
    from transforms.models import ModelDims, ModelRef, checkpoint_folder, config_dims, load_config

    ref = ModelRef(REPO, revision)
    folder = hub / "snapshots" / expected
    assert checkpoint_folder(ref) == folder
    assert checkpoint_dir(Variant("v", ModelEntry("m", REPO, revision))) == folder
    assert load_config(ref).num_hidden_layers == LAYERS[expected]
    assert config_dims(ref) == ModelDims(n_layers=LAYERS[expected], d_model=WIDTH[expected], vocab_size=64)


def test_tokenizer_follows_the_pinned_revision(hub):
    """Only the pinned revision's tokenizer ships a chat template."""
    import shutil

    from transforms.models import ModelRef, load_tokenizer, resolve_checkpoint

    smol = Path(resolve_checkpoint("pkg:smollm2-135m-instruct"))
    for rev in (MAIN, OTHER):
        snap = hub / "snapshots" / rev
        shutil.copy(smol / "tokenizer.json", snap / "tokenizer.json")
        config = json.loads((smol / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        if rev == OTHER:
            config["chat_template"] = "{{ messages[0]['content'] }}"
        (snap / "tokenizer_config.json").write_text(json.dumps(config))
        (snap / "chat_template.jinja").unlink(missing_ok=True)
    assert not load_tokenizer(ModelRef(REPO)).chat_template
    assert load_tokenizer(ModelRef(REPO, OTHER)).chat_template == "{{ messages[0]['content'] }}"


def test_fingerprint_is_the_resolved_commit(hub):
    from transforms.models import ModelRef, model_fingerprint

    assert model_fingerprint(ModelRef(REPO)) == MAIN
    assert model_fingerprint(ModelRef(REPO, OTHER)) == OTHER


def test_a_revision_missing_offline_is_one_line(hub):
    from builders.shared.common import model_config_dims
    from transforms.models import ModelLoadError, ModelRef, checkpoint_folder

    missing = ModelRef(REPO, "c" * 40)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        checkpoint_folder(missing)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        model_config_dims(missing.id, missing.revision)


# ------------------------------------------------------------------- ModelDims


def test_model_dims_reads_every_config_spelling():
    import transformers as tf

    from transforms.models import ModelDims

    llama = tf.LlamaConfig(num_hidden_layers=3, hidden_size=32, vocab_size=100)
    assert ModelDims.from_config(llama) == ModelDims(3, 32, 100)
    gpt2 = tf.GPT2Config(n_layer=5, n_embd=24, vocab_size=50)
    assert ModelDims.from_config(gpt2) == ModelDims(5, 24, 50)
    gemma3 = tf.Gemma3Config(text_config={"num_hidden_layers": 6, "hidden_size": 40, "vocab_size": 70})
    assert ModelDims.from_config(gemma3) == ModelDims(6, 40, 70)  # its text config
    assert ModelDims.from_config(llama, n_layers=2).n_layers == 2  # counted in a module tree
    with pytest.raises(ValueError, match="cannot read d_model"):
        ModelDims.from_config(type("Bare", (), {"num_hidden_layers": 1})())


# ----------------------------------------------------------------- model cache


def _tiny():
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return tf.LlamaForCausalLM(config).float().eval()


def _adapter(folder: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    get_peft_model(_tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                       init_lora_weights=False)).save_pretrained(folder)
    return folder


def test_plain_and_adapted_variants_share_one_two_model_cache(tmp_path, monkeypatch):
    """Two plain models and two adapted ones loaded in a row: at most two stay in memory
    (the old code kept two plain ones and two adapted ones: four)."""
    import transforms.models as models
    from builders.shared.catalog import ModelEntry, Variant
    from builders.shared.common import cached_model
    from builders.shared.variants import variant_model

    def fake_load(ref, dtype=None, *, device="cpu", device_map=None, padding_side=None, quantization=None):
        return models.LoadedModel(model=_tiny(), tokenizer=None, model_id=ref.id, revision=ref.revision,
                                  tokenizer_fingerprint="t", n_layers=2, d_model=16, has_chat_template=False,
                                  checkpoint=ref.id, source="hub", architecture="llama", dtype=str(dtype))

    monkeypatch.setattr(models, "load_model", fake_load)
    if hasattr(models, "MODEL_CACHE"):
        models.MODEL_CACHE.clear()
    alive: list[weakref.ref] = []
    for name in ("m1", "m2"):
        alive.append(weakref.ref(cached_model(f"org/{name}", device="cpu", dtype="float32").model))
    first = cached_model("org/m1", device="cpu", dtype="float32")
    assert first.model is alive[0]()  # a hit: not loaded again
    del first
    for name, seed in (("m1", 1), ("m2", 2)):
        variant = Variant(f"tuned-{name}", ModelEntry(name, f"org/{name}"), adapter=str(_adapter(tmp_path / name, seed)),
                          device="cpu", dtype="float32")
        tuned = variant_model(None, variant)
        assert tuned.model_id.startswith(f"org/{name}+adapter:")
        alive.append(weakref.ref(tuned.model))
        del tuned
    gc.collect()
    assert sum(ref() is not None for ref in alive) <= 2
    if hasattr(models, "MODEL_CACHE"):
        models.MODEL_CACHE.clear()
