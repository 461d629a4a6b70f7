"""Batch sizes that fit the accelerator (``auto``), and work over slices retried at half the batch on
out-of-memory.
"""

from transforms.batching.sizes import (
    AUTO,
    CPU_BATCH,
    CPU_GENERATION_BATCH,
    OutOfMemory,
    auto_batch_size,
    halving_divisor,
    is_out_of_memory,
    parse_batch_size,
    power_of_two_dividing,
    resolve_batch_size,
    sequence_bytes,
    with_backoff,
)
from transforms.batching.slices import (
    run_slices,
)

__all__ = [
    "AUTO",
    "CPU_BATCH",
    "CPU_GENERATION_BATCH",
    "OutOfMemory",
    "auto_batch_size",
    "halving_divisor",
    "is_out_of_memory",
    "parse_batch_size",
    "power_of_two_dividing",
    "resolve_batch_size",
    "run_slices",
    "sequence_bytes",
    "with_backoff",
]
