"""Per-token projections: stacked scores equal h·v̂; live scores during generation equal
scores computed afterwards from the same tokens (SmolLM2, KV cache, left padding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transforms.projections import LiveProjector, VectorStack, project

LAYERS = (10, 20)


def _stacks(d_model: int) -> list[VectorStack]:
    rng = np.random.default_rng(0)
    return [VectorStack.build(k, [(f"v{j}", rng.standard_normal(d_model), float(j)) for j in range(3)]) for k in LAYERS]


def test_project_equals_per_token_dot_products():
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((5, 16))
    vecs = [("a", rng.standard_normal(16), 0.5), ("b", rng.standard_normal(16), -1.0)]
    stack = VectorStack.build(3, vecs)
    got = project(acts, stack)
    for t in range(5):
        for k, (_, v, base) in enumerate(vecs):
            expected = float(acts[t] @ v / np.linalg.norm(v))
            assert got["raw"][t, k] == pytest.approx(expected)
            assert got["cosine"][t, k] == pytest.approx(expected / np.linalg.norm(acts[t]))
            assert got["centered"][t, k] == pytest.approx(expected - base)
    with pytest.raises(ValueError, match="zero vector"):
        VectorStack.build(0, [("z", np.zeros(4), 0.0)])


@pytest.mark.slow
def test_live_projection_equals_afterwards(smollm2):
    from transforms.generation import GenerationConfig, generate_batch
    from transforms.tokenization import format_prompt

    tok, model = smollm2.tokenizer, smollm2.model
    prompts = [format_prompt(tok, q).ids for q in ("Name a color.", "Tell me one thing about the ocean, briefly.")]
    stacks = _stacks(smollm2.d_model)
    projector = LiveProjector(stacks)
    with projector.attach(model):
        outs = generate_batch(model, tok, prompts, GenerationConfig(max_new_tokens=8), 0)
    width = max(len(p) for p in prompts)
    for row, (prompt, out) in enumerate(zip(prompts, outs)):
        ids = list(prompt) + list(out.response_ids)
        with torch.inference_mode():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for stack in stacks:
            raw, norms = projector.per_row(stack.layer, row)
            raw = raw[width - len(prompt):]  # drop this row's left padding
            n = len(ids) - 1  # the last generated token is never fed back
            expected = project(hs[stack.layer + 1][0, :n].double().numpy(), stack)
            np.testing.assert_allclose(raw[:n], expected["raw"], rtol=2e-3, atol=2e-3 * np.abs(expected["raw"]).max())
            np.testing.assert_allclose(norms[width - len(prompt):][:n], expected["norm"], rtol=2e-3)
