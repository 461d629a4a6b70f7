"""bfloat16 correctness on CPU: steering / ablation hooks, live projections, the local and
perplexity judges and activation capture, on a bf16 copy of SmolLM2 against the float32
model (one bf16 copy per module). The references are the float32 model or float32
arithmetic on the bf16 model's own states.

Tolerances (bf16 keeps 8 significant bits: unit roundoff 2^-8 ~ 0.0039):

- steering ``add``: the edit seen at the edited layer (steered minus unsteered output of the
  block) equals ``coef * v`` within 2% of ``||coef * v||`` per position (position 0, the
  attention sink with ||h|| ~ 10^4, is left out: its bf16 spacing alone is ~64);
- ablation: ``|h_after . u| <= 2^-8 * ||h||`` per position (the unit roundoff; projecting
  in bf16 instead leaves 0.013 on SmolLM2, 0.022 on Gemma 3);
- live projections: exactly (1e-5) float32 scores of the bf16 states, and within 5% of
  ``||h||`` of the float32 model's scores; one device-to-host copy per layer and forward;
- capture: float32 copies of the bf16 model's own states; relative error per layer against
  the float32 model ``||a_bf16 - a_f32|| / ||a_f32||`` <= 5% pooled, <= 10% per token (the
  bf16 model itself drifts: up to 6.8% on these prompts at layer 10, 18% on other text);
- local judge: score within 3 points of float32; perplexity NLL within 0.03 nats/token of a
  plain bf16 forward and 0.1 of float32 (the bf16 model alone moves one item by 0.066).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from transforms.capture import decoder_layers, first_tensor

pytestmark = pytest.mark.slow  # real models throughout

logger = logging.getLogger(__name__)

CALIBRATION = Path(__file__).resolve().parents[1] / "datasets/judge/calibration/coherence.jsonl"
QUESTIONS = ("Name a color.", "Tell me one thing about the ocean, briefly.", "What is 2 + 2?")


@pytest.fixture(scope="module")
def smol_bf16(smollm2):
    """A bf16 deep copy of SmolLM2 (the session model stays float32)."""
    model = copy.deepcopy(smollm2.model).to(torch.bfloat16).eval()
    return dataclasses.replace(smollm2, model=model, dtype="bfloat16")


@pytest.fixture(scope="module")
def gemma3_bf16(gemma3):
    model = copy.deepcopy(gemma3.model).to(torch.bfloat16).eval()
    return dataclasses.replace(gemma3, model=model, dtype="bfloat16")


@pytest.fixture(params=["smollm2", "gemma3"])
def pair(request):
    """(float32, bf16) LoadedModels of one family."""
    bf16 = "smol_bf16" if request.param == "smollm2" else "gemma3_bf16"
    return request.getfixturevalue(request.param), request.getfixturevalue(bf16)


def _prompt_batch(loaded) -> tuple[torch.Tensor, torch.Tensor]:
    from transforms.sequences import left_pad
    from transforms.sequences import format_prompt

    return left_pad([format_prompt(loaded.tokenizer, q).ids for q in QUESTIONS], loaded.tokenizer.pad_token_id)


def _block_outputs(model, layer: int, ids: torch.Tensor, mask: torch.Tensor, edits=()) -> torch.Tensor:
    """Output of decoder block ``layer`` (after any steering hook, which is prepended)."""
    from transforms.steering import steer

    seen: list[torch.Tensor] = []
    handle = decoder_layers(model)[layer].register_forward_hook(lambda m, a, out: seen.append(first_tensor(out)))
    try:
        with steer(model, list(edits)), torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    return seen[0]


def _mean_direction(model, layer: int, ids, mask) -> torch.Tensor:
    """A direction the residual stream actually has a large component on."""
    h = _block_outputs(model, layer, ids, mask).float()
    return h[mask.bool()][1:].mean(0)


def test_steering_add_bf16_matches_float32_edit(pair):
    from transforms.steering import Edit

    f32, b16 = pair
    ids, mask = _prompt_batch(f32)
    layer = f32.n_layers // 2
    real = mask.bool()
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(f32.d_model, generator=g)
    base32 = _block_outputs(f32.model, layer, ids, mask)
    h_norm = float(base32[real].norm(dim=-1).median())
    coef = 0.5 * h_norm / float(vec.norm())  # a perturbation of half a typical residual norm
    edit = [Edit(layer, vec, coef, "all")]
    edit32 = _block_outputs(f32.model, layer, ids, mask, edit) - base32
    base16 = _block_outputs(b16.model, layer, ids, mask)
    steered16 = _block_outputs(b16.model, layer, ids, mask, edit)
    assert steered16.dtype == torch.bfloat16  # the residual stream keeps the model's dtype
    edit16 = steered16.float() - base16.float()
    keep = real.clone()
    keep[torch.arange(len(keep)), real.int().argmax(1)] = False  # drop each row's first token (sink)
    target = coef * float(vec.norm())
    err = (edit16 - edit32).norm(dim=-1)[keep] / target
    assert float((edit32[keep] - coef * vec).norm(dim=-1).max()) / target < 1e-5
    logger.info("bf16 steering add %s: max edit error / ||coef v|| = %.4g", f32.model_id, float(err.max()))
    assert float(err.max()) < 0.02, float(err.max())


def test_ablation_bf16_removes_component(pair):
    from transforms.steering import Edit

    f32, b16 = pair
    ids, mask = _prompt_batch(f32)
    layer = f32.n_layers // 2
    u = _mean_direction(f32.model, layer, ids, mask)
    u = u / u.norm()
    before = _block_outputs(b16.model, layer, ids, mask).float()
    after = _block_outputs(b16.model, layer, ids, mask, [Edit(layer, u, kind="ablate", positions="all")])
    assert after.dtype == torch.bfloat16
    real = mask.bool()
    proj_before = (before @ u)[real]
    proj_after = (after.float() @ u)[real]
    norms = after.float().norm(dim=-1)[real]
    share_before = proj_before.abs() / before.norm(dim=-1)[real]
    assert float(share_before.median()) > 0.2  # there was something to remove
    ratio = proj_after.abs() / norms
    logger.info("bf16 ablation %s: max |h.u| / ||h|| after = %.4g (before: median %.3g)", f32.model_id,
                float(ratio.max()),
                float(share_before.median()))
    assert float(ratio.max()) <= 2 ** -8, float(ratio.max())  # bf16 ablation arithmetic: 0.013


def test_live_projector_bf16_float32_scores_one_copy_per_forward(smollm2, smol_bf16, monkeypatch):
    from transforms.capture import LiveProjector, VectorStack

    layers = (10, 20)
    rng = np.random.default_rng(0)
    stacks = [VectorStack.build(k, [(f"v{j}", rng.standard_normal(smollm2.d_model), 0.0) for j in range(3)])
              for k in layers]
    ids, mask = _prompt_batch(smollm2)

    def run(model, count: bool = False):
        projector = LiveProjector(stacks)
        copies = [0]
        real_cpu = torch.Tensor.cpu

        def counting_cpu(self, *a, **k):
            copies[0] += 1
            return real_cpu(self, *a, **k)

        with projector.attach(model), torch.inference_mode():
            if count:
                monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            monkeypatch.setattr(torch.Tensor, "cpu", real_cpu)
        return projector, out.hidden_states, copies[0]

    p16, hs16, copies = run(smol_bf16.model, count=True)
    assert copies == len(layers)  # one device-to-host copy per layer per forward
    p32, _, _ = run(smollm2.model)
    real = mask.bool().numpy()
    for stack in stacks:
        raw16, norms16 = p16.scores[stack.layer][0], p16.norms[stack.layer][0]
        assert raw16.dtype == np.float32 and norms16.dtype == np.float32
        h = hs16[stack.layer + 1].float()  # the bf16 states, widened exactly
        unit = torch.as_tensor(stack.unit_KD, dtype=torch.float32)
        np.testing.assert_allclose(raw16, (h @ unit.T).numpy(), rtol=1e-5, atol=1e-5 * float(h.norm(dim=-1).max()))
        raw32, norms32 = p32.scores[stack.layer][0], p32.norms[stack.layer][0]
        rel = np.abs(raw16 - raw32)[real] / norms32[real][:, None]
        logger.info("bf16 live projection L%d: max |raw16 - raw32| / ||h|| = %.4g", stack.layer, rel.max())
        assert rel.max() < 0.05, rel.max()


def _calibration_items(n: int = 4) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in CALIBRATION.read_text().splitlines() if line.strip()]
    return [(r["question"], r["response"]) for r in rows[:n]]


def test_local_judge_bf16_matches_float32(smollm2, smol_bf16):
    from transforms.judge import LocalJudge

    prompts = [f"Rate 0-100 how coherent the answer is.\nQuestion: {q}\nAnswer: {a}\nReply with a number."
               for q, a in _calibration_items()]
    s32 = LocalJudge(smollm2, batch_size=4).score_prompts(prompts)
    s16 = LocalJudge(smol_bf16, batch_size=4).score_prompts(prompts)
    assert all(s is not None for s in s32 + s16)
    diff = max(abs(a - b) for a, b in zip(s16, s32))
    logger.info("bf16 local judge: max score diff %.3f (%s vs %s)", diff, s16, s32)
    assert diff < 3.0, (s16, s32)


def _plain_nll(loaded, question: str, answer: str) -> float:
    """Mean answer NLL from one unbatched, uncached forward (log-softmax in float32)."""
    from transforms.sequences import format_prompt

    prompt = list(format_prompt(loaded.tokenizer, question).ids)
    answer_ids = loaded.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([prompt + answer_ids])).logits[0].float()
    logp = logits[len(prompt) - 1:-1].log_softmax(-1)
    return -float(logp.gather(-1, torch.tensor(answer_ids)[:, None]).mean())


def test_perplexity_nll_bf16_matches_float32(smollm2, smol_bf16):
    """The featurizer's batched, prefix-cached NLL on the bf16 model equals a plain forward
    of that model (0.03 nats: what batching shapes change in bf16 kernels), and the float32
    model's within 0.1 nats (the bf16 model itself moves the token loop item by 0.066)."""
    from transforms.judge import PerplexityFeaturizer

    items = _calibration_items()
    f32 = PerplexityFeaturizer(smollm2, {"model": "f32"}).features(items)
    f16 = PerplexityFeaturizer(smol_bf16, {"model": "bf16"}).features(items)
    plain = [_plain_nll(smol_bf16, q, a) for q, a in items]
    own = max(abs(a["nll"] - b) for a, b in zip(f16, plain))
    diff = max(abs(a["nll"] - b["nll"]) for a, b in zip(f16, f32))
    logger.info("bf16 perplexity: max nll diff vs plain bf16 forward %.4f, vs float32 %.4f", own, diff)
    assert own < 0.03, list(zip([f["nll"] for f in f16], plain))
    assert diff < 0.1, [(a["nll"], b["nll"]) for a, b in zip(f16, f32)]


def test_capture_bf16_matches_float32(smollm2, smol_bf16):
    from transforms.capture import capture_per_token, capture_pooled
    from transforms.sequences import format_prompt

    seqs = [{"ids": list(format_prompt(smollm2.tokenizer, q).ids) + [28, 29, 30], "prompt_len":
             len(format_prompt(smollm2.tokenizer, q).ids)} for q in QUESTIONS]
    layers = [0, 10, 20, 28]  # not 29: hidden_states[30] is after the final norm
    p32 = capture_pooled(smollm2.model, seqs, "prompt[1:]", layers)
    p16 = capture_pooled(smol_bf16.model, seqs, "prompt[1:]", layers)
    assert p16.dtype == np.float32
    t32, rows = capture_per_token(smollm2.model, seqs, layers, frame="all")
    t16, rows16 = capture_per_token(smol_bf16.model, seqs, layers, frame="all")
    assert t16.dtype == np.float32 and rows == rows16
    keep = np.ones(len(t32), dtype=bool)
    keep[[r.start for r in rows]] = False  # the sink token: huge norm, relative error meaningless
    with torch.inference_mode():  # capture of the bf16 model = its own states, widened exactly
        for i, seq in enumerate(seqs):
            hs = smol_bf16.model(input_ids=torch.tensor([seq["ids"]]), output_hidden_states=True).hidden_states
            own = torch.stack([hs[k + 1][0] for k in layers], dim=1).float().numpy()
            np.testing.assert_allclose(t16[rows[i].start:rows[i].end], own, rtol=0.02, atol=0.02)
    for j in range(len(layers)):
        rel_pooled = np.linalg.norm(p16[:, j] - p32[:, j], axis=-1) / np.linalg.norm(p32[:, j], axis=-1)
        rel_tok = np.linalg.norm(t16[keep, j] - t32[keep, j], axis=-1) / np.linalg.norm(t32[keep, j], axis=-1)
        logger.info("bf16 capture L%d: max rel err pooled %.4g, per token %.4g", layers[j], rel_pooled.max(),
                    rel_tok.max())
        assert rel_pooled.max() < 0.05, (layers[j], rel_pooled.max())
        assert rel_tok.max() < 0.1, (layers[j], rel_tok.max())
