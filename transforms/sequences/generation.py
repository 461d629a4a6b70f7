"""Batched generation with left padding, deterministic per batch.

Batches are planned from the inputs alone (sorted by prompt length, then prompt id and
rollout) and each batch is seeded from ``(seed, batch index)``, so a resumed run that
skips finished batches produces exactly what an uninterrupted run produces.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is suppressed until this many tokens were generated
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int | str = 8  # or "auto": resolved where the model is loaded (transforms.batching.sizes)

    def __post_init__(self) -> None:
        from transforms.batching import parse_batch_size

        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))  # "16" -> 16, "AUTO" -> "auto"
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row_settings(self) -> dict[str, Any]:
        """What each generated row records: every setting but the batch size, which is run
        info (an out-of-memory retry lowers it; the size used is in the unit's metadata and
        the manifest summary), so a retried run writes the rows of a small-batch run."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


@dataclass(frozen=True)
class Generated:
    response_ids: list[int]  # generated tokens, without padding and without the final EOS
    finish_reason: str  # "eos" or "length"


def batch_seed(seed: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def plan_batches(lengths: Sequence[int], keys: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length; depends on the inputs only."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    found: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            found.add(eos)
        elif isinstance(eos, (list, tuple)):
            found.update(int(e) for e in eos)
    return found


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
                   config: GenerationConfig, batch_index: int) -> list[Generated]:
    """Generate for one batch of prompt token ids (left padded), seeded by batch index."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(prompts, pad_id)
    eos = stop_ids(model, tokenizer)
    torch.manual_seed(batch_seed(config.seed, batch_index))
    sampling = config.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens, "min_new_tokens": config.min_new_tokens or None, "do_sample": sampling, "pad_token_id": pad_id,
        "eos_token_id": sorted(eos) or None,
    }
    if sampling:
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
    else:  # no sampling knobs from the model's generation_config leak into greedy runs
        kwargs.update(temperature=None, top_p=None, top_k=None)
    device = model.get_input_embeddings().weight.device  # built on the CPU, fed where the model is
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    results = []
    for row in out[:, ids.shape[1]:].cpu().tolist():  # one transfer per batch
        cut = next((i for i, tok in enumerate(row) if tok in eos), None)
        if cut is None:
            results.append(Generated(row, "length"))
        else:
            results.append(Generated(row[:cut], "eos"))
    return results
