"""Memory-aware batch sizes and the out-of-memory retry (transforms/batching/sizes.py)."""
from __future__ import annotations

import pytest
import torch

from transforms.batching import (AUTO, CPU_BATCH, OutOfMemory, auto_batch_size, is_out_of_memory, parse_batch_size, power_of_two_dividing, sequence_bytes, with_backoff)


def test_parse_batch_size_takes_auto_or_a_positive_int() -> None:
    assert parse_batch_size("auto") == AUTO and parse_batch_size(" AUTO ") == AUTO
    assert parse_batch_size("16") == 16 and parse_batch_size(4) == 4
    for bad in ("0", "-2", "eight", 2.5, None):
        with pytest.raises(ValueError, match="batch size"):
            parse_batch_size(bad)


def test_power_of_two_dividing_keeps_batches_on_unit_boundaries() -> None:
    assert [power_of_two_dividing(n) for n in (64, 96, 100, 7, 1)] == [64, 32, 4, 1, 1]


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def test_auto_is_the_cpu_batch_off_cuda_and_scales_with_free_memory() -> None:
    model = _tiny_llama()
    assert auto_batch_size(model, 100) == CPU_BATCH
    assert auto_batch_size(model, 100, cpu_batch=16) == 16
    assert auto_batch_size(model, 100, limit=4) == 4
    per = sequence_bytes(model.config, 100, 4)
    # room for ~10 sequences after the safety margin -> the power of two below
    assert auto_batch_size(model, 100, free_bytes=int(per * 10 / 0.6)) == 8
    assert auto_batch_size(model, 100, free_bytes=per) == 1  # never zero
    assert auto_batch_size(model, 100, free_bytes=10**15) == 64  # capped
    longer = auto_batch_size(model, 2000, free_bytes=int(per * 64 / 0.6))
    assert longer < 64  # longer sequences, fewer per batch


def test_sequence_estimate_for_llama_8b_is_in_the_right_range() -> None:
    from transformers import LlamaConfig

    # Llama 3.1 8B's shape: 32 layers, d 4096, 32 heads / 8 KV heads, MLP 14336, vocab 128256
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    kv = 2 * 32 * 8 * 128 * 1024 * 2  # the KV cache of 1024 bf16 tokens: 128 MiB
    est = sequence_bytes(config, 1024, 2)
    assert kv < est < 20 * kv


def test_backoff_halves_until_it_fits_and_reports_the_size() -> None:
    calls = []

    def work(size: int) -> str:
        calls.append(size)
        if size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"done at {size}"

    assert with_backoff(work, 8, what="capture") == ("done at 2", 2)
    assert calls == [8, 4, 2]


def test_backoff_at_batch_one_is_one_line_and_other_errors_pass_through() -> None:
    def never(size: int) -> None:
        raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")

    with pytest.raises(OutOfMemory, match=r"^capture unit-00003: out of memory with a batch of 1 \(MPS") as err:
        with_backoff(never, 4, what="capture unit-00003")
    assert "\n" not in str(err.value)

    def broken(size: int) -> None:
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        with_backoff(broken, 4, what="x")
    assert is_out_of_memory(torch.OutOfMemoryError("x")) and not is_out_of_memory(RuntimeError("shape mismatch"))
