"""Batch sizes that fit the accelerator, and a retry at half the batch when one does not.

``auto`` (the catalog default) resolves where the model is loaded:

- on the CPU and on MPS (which reports no free memory) it is :data:`CPU_BATCH` (generation:
  :data:`CPU_GENERATION_BATCH`), so CPU builds do not depend on the machine;
- on CUDA it is the free memory after the model is loaded, times :data:`SAFETY`, divided
  by an estimate of one sequence's peak memory (KV cache, one layer's working set with
  eager attention scores, the hidden states a capture keeps, float32 logits) for the
  longest sequence -- rounded down to a power of two and capped, so that halving stays
  on whole batches of the unit.

:func:`with_backoff` runs a piece of work at a batch size and, on an out-of-memory error,
frees the cache and runs it again from scratch at half the batch: the result is exactly
what a run at the smaller batch from the start gives. A batch of 1 that does not fit is
a one-line :class:`OutOfMemory` error.
"""
from __future__ import annotations

import gc
import logging
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

AUTO = "auto"
CPU_BATCH = 8  # ``auto`` off CUDA: the batch size CPU builds always used
# Generating a token reads every weight once for the whole batch, so on the CPU a step costs
# about the same for 8 or 32 rows: 32 generates twice as fast (benchmarks/generation_batch.py).
CPU_GENERATION_BATCH = 32
MAX_AUTO_BATCH = 64
SAFETY = 0.6  # of the free memory: the estimate ignores allocator fragmentation and kernels' scratch

T = TypeVar("T")
BatchRequest = int | str  # a positive int, or AUTO


class OutOfMemory(RuntimeError):
    """Work that does not fit even with a batch of one sequence."""


def parse_batch_size(value: Any) -> BatchRequest:
    """``value`` as a batch request: a positive int or ``"auto"``; else a one-line ValueError."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        size = int(value)
        if isinstance(value, float) and value != size:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"batch size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise ValueError(f"batch size must be >= 1 or 'auto', got {size}")
    return size


def power_of_two_at_most(n: int) -> int:
    """The largest power of two <= ``n`` (``n`` >= 1)."""
    return 1 << (max(1, int(n)).bit_length() - 1)


def power_of_two_dividing(n: int) -> int:
    """The largest power of two that divides ``n`` (``n`` >= 1): an ``auto`` batch of a unit
    of ``n`` samples is at most this, so every batch starts at a multiple of its size."""
    n = int(n)
    return n & -n if n > 0 else 1


def sequence_bytes(config: Any, tokens: int, dtype_bytes: int, *, new_tokens: int = 0) -> int:
    """An upper estimate of one sequence's peak memory in a forward pass (or a generation of
    ``new_tokens`` more) through a model of ``config`` in a dtype of ``dtype_bytes``."""
    text = getattr(config, "text_config", None) or config
    d = int(text.hidden_size)
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or d // heads)
    inter = int(getattr(text, "intermediate_size", None) or 4 * d)
    vocab = int(text.vocab_size)
    t = int(tokens) + int(new_tokens)
    kv_cache = 2 * layers * kv_heads * head_dim * t * dtype_bytes
    working = t * (6 * d + 3 * inter) * dtype_bytes + heads * t * t * 4  # scores may be float32
    hidden = (layers + 1) * t * d * 4  # what a capture or output_hidden_states may keep, float32
    logits = vocab * 4 * (t if new_tokens == 0 else 2)
    return kv_cache + working + hidden + logits


def auto_batch_size(model: Any, max_tokens: int, *, new_tokens: int = 0, limit: int = MAX_AUTO_BATCH,
                    free_bytes: int | None = None, cpu_batch: int = CPU_BATCH) -> int:
    """The ``auto`` batch size for sequences of up to ``max_tokens`` (plus ``new_tokens``
    generated) on ``model``'s device: see the module docstring. ``free_bytes`` overrides
    the measured free memory (tests, or a budget shared with other work); ``cpu_batch`` is
    the size off CUDA (a stage whose CPU builds always used another size keeps it)."""
    import torch

    limit = power_of_two_at_most(max(1, limit))
    param = next(model.parameters())
    if free_bytes is None:
        if param.device.type != "cuda":
            return min(cpu_batch, limit)
        free_bytes = torch.cuda.mem_get_info(param.device)[0]
    per = sequence_bytes(model.config, max(1, max_tokens), param.element_size(), new_tokens=new_tokens)
    fits = int(free_bytes * SAFETY // per)
    size = power_of_two_at_most(min(max(1, fits), limit))
    log.info("auto batch size %d (%.1f GiB free, ~%.1f MiB per sequence of %d tokens)",
             size, free_bytes / 2**30, per / 2**20, max_tokens + new_tokens)
    return size


def resolve_batch_size(request: BatchRequest, model: Any, max_tokens: int, *, new_tokens: int = 0,
                       limit: int = MAX_AUTO_BATCH, cpu_batch: int = CPU_BATCH) -> int:
    """A forced size as it is; ``auto`` through :func:`auto_batch_size`."""
    if request == AUTO:
        return auto_batch_size(model, max_tokens, new_tokens=new_tokens, limit=limit, cpu_batch=cpu_batch)
    return int(request)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying so (MPS, older CUDA paths)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def halving_divisor(n: int) -> Callable[[int], int]:
    """A ``smaller`` for :func:`with_backoff`: the largest divisor of ``n`` at most half the
    size, so every batch still starts at a multiple of its size inside a unit of ``n``
    (the plain half for powers of two; 12 -> 6 -> 3 -> 1 for a unit of 12)."""
    n = max(1, int(n))

    def smaller(size: int) -> int:
        half = max(1, size // 2)
        return max(d for d in range(1, half + 1) if n % d == 0)

    return smaller


def with_backoff(work: Callable[[int], T], batch_size: int, *, what: str,
                 smaller: Callable[[int], int] | None = None) -> tuple[T, int]:
    """``(work(size), size)`` for the first size of ``batch_size``, its half, ... that fits
    (``smaller(size)`` picks the next size instead of the half, e.g. :func:`halving_divisor`).

    ``work`` must start from scratch at each call (it is retried whole), so the result is
    the one a run at the final size gives."""
    size = int(batch_size)
    while True:
        failed: str | None = None
        try:
            return work(size), size
        except Exception as exc:  # noqa: BLE001 -- anything but out-of-memory is re-raised
            if not is_out_of_memory(exc):
                raise
            failed = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        # outside the except block: the traceback's frames (and their tensors) are gone
        _release_memory()
        if size <= 1:
            raise OutOfMemory(f"{what}: out of memory with a batch of 1 ({failed})")
        retry = max(1, min(size - 1, smaller(size))) if smaller else size // 2
        log.warning("%s: out of memory at batch %d, retrying at %d", what, size, retry)
        size = retry
