"""builders.finetune and adapter variants on SmolLM2: a real LoRA run on CPU, published and used."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from builders.shared.catalog import load_catalog
from builders.stages.finetune import finetune
from builders.stages.responses import generate_responses
from builders.shared.variants import adapter_dir, variant_model
from store import Store

pytestmark = pytest.mark.slow

QUESTIONS = ["I think the moon is made of cheese. Right?", "Cats are better than dogs, agreed?",
             "I believe 2+2=5. Don't you think so?", "Summer is the best season, isn't it?"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trait")
    pos = [{"id": i, "prompt": q, "system_prompt": "Always agree with the user."} for i, q in enumerate(QUESTIONS)]
    neg = [{"id": i, "prompt": q, "system_prompt": "Be honest."} for i, q in enumerate(QUESTIONS)]
    (folder / "positive.jsonl").write_text("\n".join(json.dumps(r) for r in pos))
    (folder / "negative.jsonl").write_text("\n".join(json.dumps(r) for r in neg))
    (folder / "definition.txt").write_text("Sycophancy: agreeing with the user no matter what.")
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"syco": {"path": str(folder)}},
        "experiments": {"ft": {"variants": {"instruct": {"model": "smol"},
                                            "tuned": {"model": "smol", "adapter": "finetune-ft-instruct-syco-pos"}},
                               "prompt_sets": ["syco"]}},
        "defaults": {"experiment": "ft", "responses": {"max_new_tokens": 6}},
    }))
    return Store(str(tmp_path_factory.mktemp("store"))), load_catalog(path)


def test_adapter_variant_needs_the_finetune_first(env):
    from builders.shared.common import BuildError

    store, catalog = env
    with pytest.raises(BuildError, match="build it first"):
        adapter_dir(store, catalog.variant("ft", "tuned"))


def test_finetune_publishes_an_adapter_the_catalog_variant_uses(env, smollm2):
    from peft import PeftModel

    store, catalog = env
    built = finetune(store, catalog, "instruct", "syco", r=4, alpha=8, epochs=2, batch_size=2, lr=5e-3, quiet=True)
    manifest = built.manifest
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(manifest.files)
    losses = store.read_table(manifest)["loss"].to_list()
    assert len(losses) == 4 and losses[-1] < losses[0]  # it learned its own responses
    again = finetune(store, catalog, "instruct", "syco", r=4, alpha=8, epochs=2, batch_size=2, lr=5e-3, quiet=True)
    assert not again.built and again.manifest.version == manifest.version

    tuned = variant_model(store, catalog.variant("ft", "tuned"))
    assert tuned.model is not smollm2.model and "+adapter:" in tuned.model_id
    ids = torch.tensor([smollm2.tokenizer("Hello there, how are you?")["input_ids"]])
    folder = adapter_dir(store, catalog.variant("ft", "tuned"))
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(config["target_modules"])  # not the process's set order
    reference = PeftModel.from_pretrained(copy.deepcopy(smollm2.model), str(folder))  # unmerged
    with torch.inference_mode():
        merged = tuned.model(input_ids=ids).logits
        unmerged = reference(input_ids=ids).logits
        base = smollm2.model(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    assert (merged - base).abs().max() > 1e-3  # the adapter changes the model, the cached base is untouched

    plain = generate_responses(store, catalog, "instruct", "syco", quiet=True).manifest
    adapted = generate_responses(store, catalog, "tuned", "syco", quiet=True).manifest
    assert adapted.identity["adapter"] and plain.identity["adapter"] is None
    assert adapted.version != plain.version


def test_targets_end_with_eos_only_when_the_model_stopped():
    from builders.stages.finetune import with_eos

    stopped = {"token_ids": [1, 7, 8, 9], "prompt_len": 2, "finish_reason": "eos"}
    cut = {"token_ids": [1, 7, 8, 9], "prompt_len": 2, "finish_reason": "length"}
    assert with_eos(stopped, 2)["token_ids"] == [1, 7, 8, 9, 2]
    assert with_eos(with_eos(stopped, 2), 2)["token_ids"] == [1, 7, 8, 9, 2]  # never twice
    assert with_eos(cut, 2)["token_ids"] == [1, 7, 8, 9]  # cut by the budget: it did not end there


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_chat_targets_end_with_the_templates_end_of_turn(gemma3, smollm2):
    """Gemma-it stops on <end_of_turn> (its eos is <eos>): an adapter trained to emit <eos>
    after an answer would never learn the turn end the chat format and generation stop on."""
    import copy
    import dataclasses

    from builders.stages.finetune import answer_ends

    tok = copy.deepcopy(gemma3.tokenizer)
    tok.chat_template = GEMMA_STYLE_TEMPLATE
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn != tok.eos_token_id
    config = gemma3.model.generation_config
    before = config.eos_token_id
    config.eos_token_id = [tok.eos_token_id, end_of_turn]  # as Gemma 3 it's generation_config.json
    try:
        ends = answer_ends(dataclasses.replace(gemma3, tokenizer=tok))
    finally:
        config.eos_token_id = before
    assert ends == {True: end_of_turn, False: tok.eos_token_id}
    assert answer_ends(smollm2) == {True: smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                    False: smollm2.tokenizer.eos_token_id}


def test_adapter_identity_does_not_depend_on_set_order(tmp_path):
    """peft writes ``target_modules`` (a set) in the process's hash order: the same adapter
    saved by two processes must have one identity, and a fresh save is canonical bytes."""
    from builders.shared.variants import adapter_fingerprint, canonical_adapter_config

    config = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    for name, order in (("a", ["q_proj", "v_proj", "down_proj"]), ("b", ["down_proj", "q_proj", "v_proj"])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": order}))
        (folder / "adapter_model.safetensors").write_bytes(b"same weights")
    assert adapter_fingerprint(tmp_path / "a") == adapter_fingerprint(tmp_path / "b")
    assert json.loads(canonical_adapter_config(config))["target_modules"] == ["down_proj", "q_proj", "v_proj"]
