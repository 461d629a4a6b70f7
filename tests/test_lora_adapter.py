"""LoraAdapter against peft itself: scaling with rank/alpha patterns as peft resolves them,
ΔW equal to what ``merge_and_unload`` adds, and adapters whose change it cannot express
(DoRA, embedding LoRA) refused with one line naming the folder."""
from __future__ import annotations

import pytest
import torch

from transforms.diffing import AdapterError, LoraAdapter


def _tiny():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return tf.LlamaForCausalLM(config).float().eval()


def _adapter(tmp_path, name: str, **config):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny(), LoraConfig(init_lora_weights=False, **config))
    folder = tmp_path / name
    model.save_pretrained(folder)
    return model, folder


def test_pattern_keys_match_on_module_boundaries_like_peft(tmp_path):
    # "proj" is not a module name: peft matches a key only as the whole name or after a ".",
    # so it must not set o_proj's rank; the regex key and the dotted suffix key must apply.
    model, folder = _adapter(
        tmp_path, "patterned", r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "down_proj"],
        rank_pattern={"proj": 7, "layers.1.self_attn.o_proj": 2},
        alpha_pattern={"proj": 100, r"layers\.[02]\.mlp\.down_proj": 32})
    adapter = LoraAdapter(folder)
    expected = {name.removeprefix("base_model.model.") + ".weight": module.scaling["default"]
                for name, module in model.named_modules() if hasattr(module, "lora_A") and "default" in module.lora_A}
    assert len(expected) == 9 and set(expected.values()) == {2.0, 4.0, 8.0}
    assert {n: adapter.scale(n) for n in expected} == pytest.approx(expected)
    merged = model.merge_and_unload().state_dict()
    base = _tiny().state_dict()
    for name in expected:
        torch.testing.assert_close(adapter.delta(name), merged[name] - base[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("config, what", [
    ({"use_dora": True, "target_modules": ["o_proj"]}, "DoRA"),
    ({"target_modules": ["embed_tokens", "o_proj"]}, "embedding"),
])
def test_unsupported_adapters_refused_naming_the_folder(tmp_path, config, what):
    _, folder = _adapter(tmp_path, what, r=4, lora_alpha=8, **config)
    with pytest.raises(AdapterError) as err:
        LoraAdapter(folder)
    message = str(err.value)
    assert str(folder) in message and what in message and "\n" not in message


def test_builder_refuses_dora_adapter_in_one_line(tmp_path, capsys):
    import yaml

    from builders.weights import cli
    from store import Store

    model, folder = _adapter(tmp_path, "dora", r=4, lora_alpha=8, use_dora=True, target_modules=["o_proj"])
    _tiny().save_pretrained(tmp_path / "base", safe_serialization=True)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({
        "models": {"m": {"id": str(tmp_path / "base")}},
        "experiments": {"w": {"variants": {"a": {"model": "m"}, "dora": {"model": "m", "adapter": str(folder)}},
                              "prompt_sets": []}},
        "defaults": {"experiment": "w"}}))
    root = tmp_path / "store"
    capsys.readouterr()  # drop save_pretrained's progress bar
    assert cli(["--store", str(root), "--catalog", str(catalog), "--a", "a", "--b", "dora"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --b dora: ") and str(folder) in err and "DoRA" in err and "\n" not in err
    assert not Store(str(root)).datasets()
