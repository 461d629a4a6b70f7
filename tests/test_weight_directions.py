"""transforms.diffing.directions: top singular directions against LAPACK's SVD, and the logit
lens's final norm against each architecture's own norm module: Llama RMSNorm (``x/rms·w``),
Gemma's (``x/rms·(1+w)``, computed in float32) and GPT-2's LayerNorm (mean subtracted, bias
added), read from a saved checkpoint the way builders.weights reads it."""
from __future__ import annotations

import pytest
import torch


def _tiny(kind: str):
    import transformers as tf

    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, rms_norm_eps=1e-5))
        return model, model.model.norm
    if kind == "gemma3":
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**common, rms_norm_eps=1e-6))
        return model, model.model.norm
    if kind == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, rms_norm_eps=1e-6))
        return model, model.model.norm
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             layer_norm_epsilon=1e-5))
    return model, model.transformer.ln_f


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gemma2", "gpt2"])
def test_final_norm_equals_the_models_norm_module(kind, tmp_path):
    from transforms.diffing import TensorReader
    from transforms.diffing import read_final_norm

    torch.manual_seed(0)
    model, norm = _tiny(kind)
    with torch.no_grad():  # non-trivial weights (and bias): defaults of 1 or 0 would hide (1+w) vs w
        for p in norm.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    final = read_final_norm(TensorReader(tmp_path), model.config)
    assert final.kind == {"llama": "rms", "gemma3": "gemma", "gemma2": "gemma", "gpt2": "layernorm"}[kind]
    vectors = torch.randn(5, 32) * 3 + 1  # an offset mean, so mean subtraction matters
    with torch.no_grad():
        expected = norm(vectors.float()[:, None])[:, 0].double()
    got = torch.stack([final.apply(v) for v in vectors])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, rank", [((40, 12), None), ((12, 40), None), ((30, 50), 2)])
def test_top_singular_directions_equal_lapack(shape, rank):
    from transforms.diffing import top_singular_directions

    g = torch.Generator().manual_seed(0)
    delta = torch.randn(*shape, generator=g, dtype=torch.float64)
    if rank is not None:  # a LoRA-like change: only `rank` directions exist, not k
        delta = torch.randn(shape[0], rank, generator=g, dtype=torch.float64) @ torch.randn(rank, shape[1], generator=g,
                                                                                         dtype=torch.float64)
    u, s, _ = torch.linalg.svd(delta, full_matrices=False)
    found = top_singular_directions(delta.float(), 3)
    assert len(found) == (rank or 3)
    for i, (sigma, share, vec) in enumerate(found):
        assert sigma == pytest.approx(float(s[i]), rel=1e-5)
        assert share == pytest.approx(float(s[i] ** 2 / (s ** 2).sum()), rel=1e-5)
        assert vec[vec.abs().argmax()] > 0 and float(vec.norm()) == pytest.approx(1.0, abs=1e-6)
        torch.testing.assert_close(vec, u[:, i] * torch.sign(u[:, i][vec.abs().argmax()]), rtol=0, atol=1e-5)
