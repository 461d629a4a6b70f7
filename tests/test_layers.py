"""Layer discovery, component hook sites and the layer convention, on tiny random models.

``tiny_model(family)`` is shared with tests/test_capture.py.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from transforms.capture import component_module, decoder_layers, decoder_trunk, model_dims, parse_layers

FAMILIES = ("llama", "gemma2", "gemma3", "qwen2", "gpt2", "peft_llama")
N_LAYERS = 3
D_MODEL = 32
VOCAB = 97

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


def _build(family: str) -> nn.Module:
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    if family in ("llama", "peft_llama"):
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    elif family == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=8, sliding_window=4))
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(
            **common,
            head_dim=8,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
        model = tf.Gemma3ForCausalLM(cfg)
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    elif family == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=VOCAB, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=128,
            bos_token_id=1, eos_token_id=2,
        )
        model = tf.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(family)
    if family == "peft_llama":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(1)
        lora = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        )
        with warnings.catch_warnings():  # peft 0.21 calls a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, lora)
    return model.float().eval()


@functools.cache
def tiny_model(family: str) -> nn.Module:
    """A seeded fp32 eval-mode tiny model (3 layers, d_model 32); cached per family."""
    return _build(family)


def full_forward(model: nn.Module, ids: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], dict]:
    """Full forward with ``output_hidden_states`` plus hooked components of every layer:
    returns (hidden_states, {(component, layer): tensor})."""
    got: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for comp in ("residual", "attn_out", "mlp_out"):
        for k in range(N_LAYERS):
            site = component_module(model, k, comp)

            def hook(mod, args, out, key=(comp, k), read=site.read):
                got[key] = read(out).detach().clone()

            handles.append(site.module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out.hidden_states, got


def _ids(n: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (1, n), generator=g)


# --------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_layers_and_dims(family):
    model = tiny_model(family)
    layers = decoder_layers(model)
    assert len(layers) == N_LAYERS
    assert len({id(x) for x in layers}) == N_LAYERS
    assert type(layers[0]).__name__.endswith(("DecoderLayer", "Block"))
    assert model_dims(model) == (N_LAYERS, D_MODEL)
    trunk = decoder_trunk(model)
    assert not hasattr(trunk, "lm_head")
    assert any(layers[0] is m for m in trunk.modules())


def test_bare_base_model_and_peft_unwrap():
    model = tiny_model("llama")
    assert decoder_layers(model.model)[0] is model.model.layers[0]
    peft = tiny_model("peft_llama")
    # PeftModel and its LoraModel both unwrap to the transformers model with LoRA injected
    assert decoder_layers(peft.base_model)[1] is decoder_layers(peft)[1]
    assert "lora" in type(decoder_layers(peft)[0].self_attn.q_proj).__module__


class _Cfg:
    num_hidden_layers = 2
    hidden_size = 8


class _Odd(nn.Module):
    """Layers under an unknown attribute name, plus a decoy ModuleList of another length."""

    def __init__(self):
        super().__init__()
        self.config = _Cfg()
        self.decoy = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.small = nn.ModuleList([nn.Identity(), nn.Identity()])
        self.stack = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])


def test_fallback_search_picks_module_list_matching_config():
    odd = _Odd()
    assert decoder_layers(odd) == list(odd.stack)  # longest (most params) list of length 2
    assert model_dims(odd) == (2, 8)


class _NoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = _Cfg()
        self.decoy = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])


def test_no_layers_clear_error():
    with pytest.raises(ValueError, match="cannot find the decoder layers of _NoLayers"):
        decoder_layers(_NoLayers())


def test_component_sites_per_family():
    llama = tiny_model("llama")
    assert component_module(llama, 1, "attn_out").module is llama.model.layers[1].self_attn
    assert component_module(llama, 1, "mlp_out").module is llama.model.layers[1].mlp
    assert component_module(llama, 1, "residual").module is llama.model.layers[1]
    for fam in ("gemma2", "gemma3"):
        g = tiny_model(fam)
        blk = g.model.layers[2]
        assert component_module(g, 2, "attn_out").module is blk.post_attention_layernorm
        assert component_module(g, 2, "mlp_out").module is blk.post_feedforward_layernorm
    gpt2 = tiny_model("gpt2")
    assert component_module(gpt2, 0, "attn_out").module is gpt2.transformer.h[0].attn
    assert component_module(gpt2, 0, "attn_out").module_name == "transformer.h.0.attn"
    with pytest.raises(ValueError, match="unknown component"):
        component_module(llama, 0, "resid")
    with pytest.raises(ValueError, match="valid layers are 0-2"):
        component_module(llama, 3, "residual")


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_equals_hidden_states_and_decomposes(family):
    model = tiny_model(family)
    hs, got = full_forward(model, _ids())
    assert len(hs) == N_LAYERS + 1
    prev = hs[0]  # embeddings as fed to block 0
    for k in range(N_LAYERS):
        res = got[("residual", k)]
        if k < N_LAYERS - 1:
            assert torch.equal(res, hs[k + 1]), f"{family} layer {k}"
        torch.testing.assert_close(res, prev + got[("attn_out", k)] + got[("mlp_out", k)], rtol=1e-5, atol=1e-5)
        prev = res


@pytest.mark.parametrize("family", FAMILIES)
def test_last_hidden_state_is_after_final_norm(family):
    """transformers 5: hidden_states[-1] is the final norm of the last block's output, on
    every family here; our last layer is the raw block output."""
    model = tiny_model(family)
    hs, got = full_forward(model, _ids())
    last = got[("residual", N_LAYERS - 1)]
    trunk = decoder_trunk(model)
    final_norm = trunk.ln_f if family == "gpt2" else trunk.norm
    with torch.inference_mode():
        torch.testing.assert_close(hs[-1], final_norm(last), rtol=0, atol=0)
    assert not torch.allclose(hs[-1], last)


# --------------------------------------------------------------------------- parse_layers


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("all", 4, [0, 1, 2, 3]),
        ("ALL", 2, [0, 1]),
        ("all:2", 5, [0, 2, 4]),
        ("12", 30, [12]),
        ("0", 1, [0]),
        ("9-19", 30, list(range(9, 20))),
        ("3-3", 30, [3]),
        ("0-29:5", 30, [0, 5, 10, 15, 20, 25]),
        ("0-20:5", 30, [0, 5, 10, 15, 20]),
        ("0-29:10", 30, [0, 10, 20]),
        ("30%-60%", 30, list(range(9, 19))),
        ("0%-100%", 18, list(range(18))),
        ("50%-50%", 18, [9]),
        ("50%", 30, [15]),
        ("40%,50%", 30, [12, 15]),
        ("100%", 18, [17]),
        ("25%-75%:2", 40, list(range(10, 31, 2))),
        ("3,5,7", 30, [3, 5, 7]),
        ("7, 3,5,3", 30, [3, 5, 7]),
        ("1-3,10-12", 30, [1, 2, 3, 10, 11, 12]),
        ("2,20%-30%", 10, [2, 3]),
    ],
)
def test_parse_layers(spec, n, expected):
    assert parse_layers(spec, n) == expected


@pytest.mark.parametrize(
    "spec, n, match",
    [
        ("30", 30, "out of range"),
        ("0-30", 30, "out of range"),
        ("0-30:5", 30, "out of range"),  # 30 is not a layer of a 30-layer model
        ("3,99", 30, "out of range"),
        ("19-9", 30, "reversed"),
        ("0-10:0", 30, "step 0"),
        ("120%-130%", 30, "over 100%"),
        ("", 30, "empty"),
        ("-1", 30, "cannot parse"),
        ("a-b", 30, "cannot parse"),
        ("1-", 30, "cannot parse"),
        ("1,,2", 30, "cannot parse"),
        ("layers", 30, "cannot parse"),
        ("1.5", 30, "cannot parse"),
    ],
)
def test_parse_layers_errors(spec, n, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_layers(spec, n)
    msg = str(info.value)
    assert "\n" not in msg and repr(spec) in msg and f"0-{n - 1}" in msg
