"""Activation capture against Hugging Face ``hidden_states`` on tiny random models."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from tests.test_layers import FAMILIES, N_LAYERS, VOCAB, full_forward, tiny_model
from transforms.capture import (IndexRow, capture_batch, capture_per_token, capture_pooled, hook_components, iter_pooled, run_forward)
from transforms.capture import decoder_layers, decoder_trunk
from transforms.sequences import EmptySpanError, parse_position

POSITIONS = ["prompt[-1]", "response[:5]", "response[:]", "all[:]", "prompt[1:3]"]
LAYERS = list(range(N_LAYERS))
COMPONENTS = ("residual", "attn_out", "mlp_out")


def make_sequences(seed: int = 0) -> list[dict]:
    """Mixed lengths (some responses shorter than 5, one sequence much longer than the
    sliding window of the gemma models); ids 3.. so no special tokens."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 8), (3, 2), (6, 12), (5, 5), (3, 1), (7, 20), (4, 6)]  # (prompt_len, response_len)
    seqs = []
    for p, r in shapes:
        ids = torch.randint(3, VOCAB, (p + r,), generator=g).tolist()
        seqs.append({"ids": ids, "prompt_len": p})
    return seqs


@functools.cache
def reference(family: str, seed: int = 0) -> list[dict[tuple[str, int], torch.Tensor]]:
    """Per sequence, unbatched and untruncated: component tensors [T, D] of every layer from
    a full forward; residual of layers < n-1 taken from ``hidden_states[k+1]``."""
    model = tiny_model(family)
    refs = []
    for seq in make_sequences(seed):
        hs, got = full_forward(model, torch.tensor([seq["ids"]]))
        ref = {key: t[0] for key, t in got.items()}
        for k in range(N_LAYERS - 1):
            assert torch.equal(ref[("residual", k)], hs[k + 1][0])
            ref[("residual", k)] = hs[k + 1][0]
        refs.append(ref)
    return refs


def expected_pooled(family: str, position: str, component: str = "residual") -> np.ndarray:
    pos = parse_position(position)
    rows = []
    for seq, ref in zip(make_sequences(), reference(family)):
        s, e = pos.span(seq["prompt_len"], len(seq["ids"]))
        rows.append(torch.stack([ref[(component, k)][s:e].mean(0) for k in LAYERS]))
    return torch.stack(rows).numpy()


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """``np.testing.assert_allclose`` with ``atol`` in units of the activation scale
    (max |want|, at least 1). Changing the sequence length (truncation) or the batch shape
    changes fp32 matmul blocking, so results differ by a few ulps of the largest values;
    gemma's residual stream is ~sqrt(d_model) larger than llama's, so a fixed atol would
    be 6x tighter there."""
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("family", FAMILIES)
def test_hooked_residual_equals_hidden_states_exactly(family):
    model = tiny_model(family)
    ids = torch.tensor([make_sequences()[2]["ids"]])
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    got = capture_batch(model, ids, torch.ones_like(ids), LAYERS)
    for k in range(N_LAYERS - 1):
        assert torch.equal(got[k], hs[k + 1]), f"{family} layer {k}"
    # the last layer is the raw block output, hidden_states[-1] is after the final norm
    assert not torch.allclose(got[N_LAYERS - 1], hs[-1])
    torch.testing.assert_close(got[N_LAYERS - 1][0], reference(family)[2][("residual", N_LAYERS - 1)])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("position", POSITIONS)
def test_pooled_equals_mean_of_hidden_states(family, position):
    got = capture_pooled(tiny_model(family), make_sequences(), position, LAYERS, batch_size=1)
    assert got.dtype == np.float32 and got.shape == (7, N_LAYERS, 32)
    assert_close(got, expected_pooled(family, position))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("component", COMPONENTS)
def test_batched_equals_unbatched(family, component):
    model, seqs = tiny_model(family), make_sequences()
    for position in ("response[:5]", "all[:]", "prompt[-1]"):
        one = capture_pooled(model, seqs, position, LAYERS, component, batch_size=1)
        three = capture_pooled(model, seqs, position, LAYERS, component, batch_size=3)
        assert_close(three, one)
        assert_close(one, expected_pooled(family, position, component))


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_early_stop_and_truncation_match_full_forward(family):
    model = tiny_model(family)
    seq = make_sequences()[5]
    ids = torch.tensor([seq["ids"]])
    mask = torch.ones_like(ids)
    # early stop after layer 1 == layer 1 of a forward through every block, exactly
    with hook_components(model, [0, 1]) as full:
        run_forward(model, ids, mask)
    stopped = capture_batch(model, ids, mask, [0, 1])
    for k in (0, 1):
        assert torch.equal(stopped[k], full[k])
    # truncation: prompt + 5 tokens give the same states as the whole sequence (to fp32 ulps)
    n = seq["prompt_len"] + 5
    trunc = capture_batch(model, ids[:, :n], mask[:, :n], [0, 1])
    for k in (0, 1):
        assert trunc[k].shape[1] == n
        assert_close(trunc[k].numpy(), full[k][:, :n].numpy())


def test_forward_stops_and_skips_lm_head():
    model = tiny_model("llama")
    calls: list[str] = []
    trunk_kwargs: dict = {}
    handles = [
        model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head")),
        model.model.norm.register_forward_hook(lambda *a: calls.append("norm")),
        model.model.layers[2].register_forward_hook(lambda *a: calls.append("layer2")),
        model.model.layers[0].register_forward_hook(lambda *a: calls.append("layer0")),
        decoder_trunk(model).register_forward_pre_hook(
            lambda mod, args, kwargs: trunk_kwargs.update(kwargs), with_kwargs=True
        ),
    ]
    try:
        capture_pooled(model, make_sequences(), "response[:5]", [1, 0], batch_size=4)
    finally:
        for h in handles:
            h.remove()
    assert calls == ["layer0", "layer0"]  # two batches, stopped after layer 1
    assert trunk_kwargs["use_cache"] is False
    mask = trunk_kwargs["attention_mask"]
    assert mask.shape == trunk_kwargs["input_ids"].shape and mask[:, 0].all() and not mask.all()


def test_truncation_to_needed_tokens():
    model = tiny_model("qwen2")
    widths: list[int] = []
    handle = decoder_trunk(model).register_forward_pre_hook(
        lambda mod, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        capture_pooled(model, make_sequences(), "response[:5]", [0], batch_size=3)
        capture_pooled(model, make_sequences(), "prompt[-1]", [0], batch_size=7)
    finally:
        handle.remove()
    # needed = prompt + min(5, response): 12, 11, 10 | 9, 9, 5 | 4 (widths = batch maxima);
    # prompt[-1] needs the prompt only: max 7
    assert widths == [12, 9, 4, 7]


# --------------------------------------------------------------------------- hooks


def _hook_counts(model) -> list[int]:
    return [len(m._forward_hooks) for m in model.modules()]


def test_hooks_removed_after_exception_and_early_stop():
    model = tiny_model("gemma2")
    before = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with hook_components(model, [0, 2], "attn_out", stop_after_last=True):
            assert sum(_hook_counts(model)) == sum(before) + 3  # two readers and the stop after layer 2
            raise RuntimeError("boom")
    assert _hook_counts(model) == before
    with pytest.raises(ValueError, match="valid layers are 0-2"):
        with hook_components(model, [0, 5]):
            pass
    assert _hook_counts(model) == before
    capture_pooled(model, make_sequences(), "all[:]", [1], "mlp_out", batch_size=2)
    assert _hook_counts(model) == before


def test_hooks_removed_when_callback_raises():
    model = tiny_model("llama")
    before = _hook_counts(model)

    def bad(layer, tensor):
        raise KeyError("callback failed")

    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(KeyError):
        with hook_components(model, [0], callback=bad):
            run_forward(model, ids, torch.ones_like(ids))
    assert _hook_counts(model) == before


# --------------------------------------------------------------------------- API details


def test_order_restored_and_layer_order_kept():
    model, seqs = tiny_model("llama"), make_sequences()
    fwd = capture_pooled(model, seqs, "all[:]", [2, 0], batch_size=3)
    rev = capture_pooled(model, seqs[::-1], "all[:]", [0, 2], batch_size=3)
    assert_close(fwd[::-1][:, ::-1], rev)
    streamed = list(iter_pooled(model, seqs, "all[:]", [0], batch_size=3))
    assert [len(i) for i, _ in streamed] == [3, 3, 1]
    assert sorted(np.concatenate([i for i, _ in streamed]).tolist()) == list(range(7))


def test_empty_spans():
    model = tiny_model("llama")
    seqs = make_sequences() + [{"ids": [5, 6, 7], "prompt_len": 3}]  # no response
    with pytest.raises(EmptySpanError, match="sample 7"):
        capture_pooled(model, seqs, "response[:5]", [0])
    got = capture_pooled(model, seqs, "response[:5]", [0], on_empty="nan")
    assert np.isnan(got[7]).all() and np.isfinite(got[:7]).all()


def test_progress_callback_and_tqdm_like():
    model, seqs = tiny_model("llama"), make_sequences()
    ticks: list[int] = []
    capture_pooled(model, seqs, "all[:]", [0], batch_size=3, progress=ticks.append)
    assert ticks == [3, 3, 1]

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    capture_per_token(model, seqs, [0], frame="response", batch_size=2, progress=bar)
    assert bar.n == len(seqs)


def test_sequence_objects_and_bad_layers():
    from dataclasses import dataclass

    @dataclass
    class Seq:
        ids: list[int]
        prompt_len: int

    model = tiny_model("llama")
    seqs = make_sequences()
    objs = [Seq(s["ids"], s["prompt_len"]) for s in seqs]
    np.testing.assert_array_equal(
        capture_pooled(model, objs, "prompt[-1]", [1]), capture_pooled(model, seqs, "prompt[-1]", [1])
    )
    for layers, match in (([], "no layers"), ([0, 0], "duplicate"), ([3], "out of range")):
        with pytest.raises(ValueError, match=match):
            capture_pooled(model, seqs, "all[:]", layers)
    with pytest.raises(ValueError, match="unknown component"):
        capture_pooled(model, seqs, "all[:]", [0], "resid")


@pytest.mark.parametrize("family", ["llama", "gemma3", "peft_llama"])
@pytest.mark.parametrize("frame", ["all", "prompt", "response", "response[:5]"])
def test_per_token(family, frame):
    model, seqs = tiny_model(family), make_sequences()
    seqs = seqs + [{"ids": seqs[0]["ids"][:4], "prompt_len": 4}]  # empty response
    acts, rows = capture_per_token(model, seqs, [0, 2], "residual", frame=frame, batch_size=3)
    pos = parse_position(frame if "[" in frame else f"{frame}[:]")
    refs = list(reference(family)) + [None]
    assert acts.dtype == np.float32 and acts.shape[1:] == (2, 32)
    assert [r.sample_idx for r in rows] == list(range(len(seqs))) and isinstance(rows[0], IndexRow)
    assert rows[-1].end == acts.shape[0]
    for seq, ref, row in zip(seqs, refs, rows):
        try:
            s, e = pos.span(seq["prompt_len"], len(seq["ids"]))
        except EmptySpanError:
            assert row.start == row.end
            continue
        assert row.end - row.start == e - s
        if ref is None:
            continue
        want = torch.stack([ref[("residual", k)][s:e] for k in (0, 2)], dim=1).numpy()
        assert_close(acts[row.start : row.end], want)


def test_peft_adapter_is_applied():
    seqs = make_sequences()
    base = capture_pooled(tiny_model("llama"), seqs, "all[:]", [2])
    lora = capture_pooled(tiny_model("peft_llama"), seqs, "all[:]", [2])
    assert not np.allclose(base, lora, atol=1e-3)  # same seed base weights, non-zero LoRA B


def test_bf16_model_pools_in_float32():
    model = tiny_model("llama")
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    seq = make_sequences()[2]
    ids = torch.tensor([seq["ids"]])
    with torch.inference_mode():
        hs = bf16(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    got = capture_pooled(bf16, [seq], "all[:]", [0, 1])
    assert got.dtype == np.float32
    want = torch.stack([hs[k + 1][0].float().mean(0) for k in (0, 1)]).numpy()
    assert_close(got[0], want, rtol=1e-6, atol=1e-7)
    assert decoder_layers(bf16)[0] is bf16.model.layers[0]
