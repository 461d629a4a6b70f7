"""The local judge: a Hugging Face chat model in-process, exact probabilities of 0-100.

For a batch of judge prompts (left padded) it runs

1. one forward pass over the prompts, keeping the KV cache (logits of the last position
   only): the distribution of the first answer token. The prefix all prompts of a batch
   share (a template's instructions and scale, placed before the question) is computed
   once and its cache repeated per row, so a batch costs the shared prefix once plus
   each prompt's own tokens;
2. one forward pass over the whole digit tree (:mod:`transforms.judge.number_tree`) at
   once: the tree's tokens are fed as one extra "sequence" whose 4D attention mask lets
   each node see the prompt (not its padding) and its own ancestors only, with position
   ``len(prompt) - 1 + depth``. Every node's logits are then exactly those of a plain
   forward pass over ``prompt + path`` (the test checks this against brute force).

So scoring costs the prompt pass plus ~101 extra token positions per prompt (SmolLM2),
not 101 forward passes. Models whose attention cannot take a custom 4D mask (not
``sdpa``/``eager``) use ``method="brute"``: every path as its own sequence, batched.

Score = expected value of the 101 probabilities renormalized by their total; ``None``
when that total is below 0.25 (:func:`transforms.judge.base.score_from_probs`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from transforms.judge.base import MIN_NUMBER_MASS, OnResult, Score, score_from_probs
from transforms.judge.number_tree import (
    NumberTree,
    build_number_tree,
    classify_vocab,
    normalize_with_terminator,
    number_probs,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from transforms.models import ModelRef
    from transforms.models import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_LOCAL_JUDGE = "pkg:smollm2-135m-instruct"
DEFAULT_PREFILL = "Score: "
METHODS = ("auto", "tree", "brute")
_TREE_ATTENTION = ("sdpa", "eager")


def sliding_window(config: Any) -> int | None:
    """The sliding window if some layer uses one, else None."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window:
        return None
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool ``[B, Q, K]`` (True = attend) -> additive float mask ``[B, 1, Q, K]``."""
    import torch

    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def _scrub_nan(cache: Any) -> None:
    """Padding positions attend to nothing; should a kernel leave NaN in their keys or
    values, zero them (masked with a finite bias, 0 * NaN would still poison the sums)."""
    import torch

    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor) and torch.isnan(tensor).any():
                torch.nan_to_num_(tensor, nan=0.0)


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix every prompt shares, leaving each at least one own token."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(max(n, 0)):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


def tree_logprobs(model: Any, tree: NumberTree, prompts: list[list[int]],
                  pad_id: int, min_shared: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Root log-probs ``[B, V]``, per-node log-probs ``[B, N, V]`` and terminator mass
    ``[B, N]``, in two forward passes (three when the prompts share a prefix of at least
    ``min_shared`` tokens: the rubric before the question, computed once for the batch;
    the rest is left padded after it, pads masked, positions continuing the prefix; not
    for sliding-window models)."""
    import torch
    from transformers import DynamicCache

    from transforms.sequences import left_pad

    device = next(model.parameters()).device
    # Sliding-window masks are built from key indices, which pads between prefix and
    # suffix would shift: those models keep the plain left-padded batch.
    shared = common_prefix(prompts) if len(prompts) > 1 and sliding_window(model.config) is None else 0
    shared = shared if shared >= min_shared else 0
    cache = DynamicCache()  # no config: every layer keeps every key; windows are in our masks
    ids, mask = (x.to(device) for x in left_pad([p[shared:] for p in prompts], pad_id))
    batch = ids.shape[0]
    pos = (mask.cumsum(1) - 1).clamp(min=0) + shared
    if shared:
        prefix = torch.tensor([prompts[0][:shared]], device=device)
        model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None], past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(batch)
        mask = torch.cat([mask.new_ones(batch, shared), mask], dim=1)
        pos = torch.cat([torch.arange(shared, device=device)[None].expand(batch, shared), pos], dim=1)
    width = mask.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos[:, shared:], past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    root = out.logits[:, -1].float().log_softmax(-1)
    if tree.n_nodes == 0:
        return root, root.new_zeros(batch, 0, root.shape[-1]), root.new_zeros(batch, 0)
    cache = out.past_key_values
    _scrub_nan(cache)
    t = {k: v.to(device) for k, v in tree.tensors().items()}
    n = tree.n_nodes
    node_pos = pos[:, -1:] + t["depth"][None, :]  # [B, N]
    allowed = torch.cat([mask.bool()[:, None, :].expand(batch, n, width),
                         t["ancestors"][None].expand(batch, n, n)], dim=2)  # [B, N, T+N]
    dtype = next(model.parameters()).dtype
    attn: Any = _additive(allowed, dtype)
    window = sliding_window(model.config)
    if window is not None and int(node_pos.max()) + 1 > window:
        key_pos = torch.cat([pos, node_pos], dim=1)
        near = (node_pos[:, :, None] - key_pos[:, None, :]) < window
        sliding = _additive(allowed & near, dtype)
        types = getattr(model.config, "layer_types", None)
        attn = {"full_attention": attn, "sliding_attention": sliding} if types else sliding
    out = model(input_ids=t["token"][None].expand(batch, n), attention_mask=attn, position_ids=node_pos,
                past_key_values=cache, use_cache=True)
    node_logp, term = normalize_with_terminator(out.logits, t["digit_start"])
    return root, node_logp, term


def brute_logprobs(model: Any, tree: NumberTree, prompt: list[int], pad_id: int,
                   batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same as :func:`tree_logprobs` for one prompt, one sequence per node (no KV tricks)."""
    import torch

    device = next(model.parameters()).device
    paths = tree.ancestors()
    seqs = [prompt] + [prompt + [tree.token_N[v] for v in path] for path in paths]
    keep = tree.max_depth + 1
    rows: list[torch.Tensor] = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):  # right padding: a row's own positions are untouched
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        kept = min(keep, width)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=kept).logits
        last = torch.tensor([len(s) - 1 - (width - kept) for s in chunk])
        rows.append(logits[torch.arange(len(chunk)), last].float().cpu())
    logp, term = normalize_with_terminator(torch.cat(rows), tree.tensors()["digit_start"])
    return logp[:1], logp[1:][None], term[1:][None]


class LocalJudge:
    """A judge running a Hugging Face causal LM in-process (CPU), exact 0-100 probabilities.

    ``model``: a :class:`~transforms.models.LoadedModel` or a model ref/id to load
    (default SmolLM2-135M-Instruct, offline). Prompts are formatted with
    :func:`transforms.tokenization.format_prompt` (chat template when the tokenizer has
    one; ``system`` optional). ``prefill`` is text the answer starts with (appended after
    the formatted prompt, tokenized together with it): small chat models rarely answer
    with a bare number (SmolLM2-135M puts ~10% on digits as its first token), but after
    ``"Score: "`` they put >99% there. The default ends with a space because SmolLM2,
    Llama 3, Gemma, Qwen and Mistral tokenize the space before a number as its own token;
    for tokenizers that merge it into the number (GPT-2 " 42") use ``"Score:"`` (the
    first token may carry leading whitespace). ``prefill=""`` sends the prompt as is.
    ``method``: ``"tree"`` (two passes per batch), ``"brute"`` (a pass per digit path) or
    ``"auto"`` (tree when the attention takes a 4D mask). ``byte_digits``: also expand
    paths through byte-fallback digit tokens (see :mod:`transforms.judge.number_tree`).
    """

    def __init__(
        self,
        model: LoadedModel | ModelRef | str = DEFAULT_LOCAL_JUDGE,
        batch_size: int | str = "auto",
        *,
        system: str | None = None,
        chat: bool | None = None,
        prefill: str = DEFAULT_PREFILL,
        min_mass: float = MIN_NUMBER_MASS,
        method: str = "auto",
        byte_digits: bool = False,
    ) -> None:
        from transforms.batching import parse_batch_size

        batch_size = parse_batch_size(batch_size)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not hasattr(model, "tokenizer"):
            from transforms.models import load_model

            model = load_model(model)  # type: ignore[arg-type]
        self.loaded: LoadedModel = model  # type: ignore[assignment]
        self.batch_size = batch_size  # a request: an int, or "auto" resolved per call
        self.batch_sizes: set[int] = set()  # the sizes used, for a builder's summary
        self.system = system
        self.chat = chat
        self.prefill = prefill
        self.min_mass = min_mass
        impl = getattr(self.loaded.model.config, "_attn_implementation", None)
        if method == "auto":
            method = "tree" if impl in _TREE_ATTENTION else "brute"
            if method == "brute":
                logger.warning("attention %r takes no custom 4D mask: local judge falls back to brute force "
                               "(one pass per digit path)", impl)
        self.method = method
        self.byte_digits = byte_digits
        self._tree: NumberTree | None = None

    @property
    def model_id(self) -> str:
        """``local:<model id>[@revision][+system:<hash>][+prefill:<hash>][+chat:on|off]
        [+min_mass:<m>][+byte_digits]`` (what changes scores; defaults leave no mark, so
        keys cached before a field existed stay valid)."""
        base = f"local:{self.loaded.model_id}"
        if self.loaded.revision:
            base += f"@{self.loaded.revision}"
        for name, text in (("system", self.system), ("prefill", self.prefill)):
            if text:
                base += f"+{name}:" + hashlib.sha256(text.encode()).hexdigest()[:8]
        if self.chat is not None:
            base += "+chat:" + ("on" if self.chat else "off")
        if self.min_mass != MIN_NUMBER_MASS:
            base += f"+min_mass:{self.min_mass:g}"
        return base + ("+byte_digits" if self.byte_digits else "")

    @property
    def tree(self) -> NumberTree:
        if self._tree is None:
            vocab_size = int(self.loaded.model.get_output_embeddings().weight.shape[0])
            self._tree = build_number_tree(classify_vocab(self.loaded.tokenizer, vocab_size, self.byte_digits))
        return self._tree

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of the formatted judge prompts plus the prefill (what the model reads)."""
        from transforms.sequences import assert_no_double_bos, bos_token_id, format_prompt

        tok = self.loaded.tokenizer
        out: list[list[int]] = []
        for prompt in prompts:
            formatted = format_prompt(tok, prompt, self.system, chat=self.chat)
            ids = formatted.ids
            if self.prefill:  # tokenize text + prefill together: no merge split at the seam
                special = not formatted.used_chat_template
                ids = [int(i) for i in tok(formatted.text + self.prefill, add_special_tokens=special)["input_ids"]]
                bos = bos_token_id(tok)
                if formatted.ids[:1] == [bos] and ids[:1] != [bos]:
                    ids = [bos] + ids
                assert_no_double_bos(ids, tok)
            out.append(ids)
        return out

    def number_probs(self, prompts: list[str], on_batch: Any = None) -> np.ndarray:
        """P(answer = n), ``[len(prompts), 101]`` float64, rows in prompt order.

        ``on_batch(indices, probs_rows)`` is called after each batch. Batches are consecutive
        slices of the prompts sorted by length; one that runs out of memory is redone as
        slices of half the size (:func:`transforms.batch_slices.run_slices`): the same
        batches, shared prefixes included, as a judge with that batch size from the start."""
        import numpy as np
        import torch

        from transforms.batching import run_slices
        from transforms.batching import CPU_BATCH, resolve_batch_size
        from transforms.sequences import plan_batches

        ids = self.encode(prompts)
        tok = self.loaded.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        result = np.zeros((len(prompts), 101), dtype=np.float64)
        if not ids:
            return result
        tree = self.tree
        order = plan_batches([len(i) for i in ids], [f"{i:09d}" for i in range(len(ids))], len(ids))[0]
        # the tree pass reads prompt + every node and keeps logits for every node
        size = resolve_batch_size(self.batch_size, self.loaded.model, len(ids[order[0]]) + tree.n_nodes,
                                  cpu_batch=CPU_BATCH)
        t0 = time.perf_counter()

        def score(lo: int, hi: int, size: int) -> None:
            batch = order[lo:hi]
            if self.method == "tree":
                parts = tree_logprobs(self.loaded.model, tree, [ids[i] for i in batch], pad_id)
                probs = number_probs(tree, *(p.cpu() for p in parts)).numpy()
            else:
                probs = np.concatenate([
                    number_probs(tree, *brute_logprobs(self.loaded.model, tree, ids[i], pad_id, size * 2)).numpy()
                    for i in batch])
            if not np.isfinite(probs).all():
                raise FloatingPointError(f"local judge produced non-finite probabilities for prompts {batch}")
            result[batch] = probs
            if on_batch is not None:
                on_batch(batch, probs)

        with torch.inference_mode():
            self.batch_sizes.update(run_slices(len(order), size, score, what=f"local judge {self.model_id}"))
        logger.info("local judge %s: %d prompts in %.2fs (%s, %d tree nodes)", self.model_id, len(prompts),
                    time.perf_counter() - t0, self.method, tree.n_nodes)
        return result

    def score_prompts(self, prompts: list[str], on_result: OnResult | None = None) -> list[Score]:
        """One score per prompt (``None`` below the number-mass threshold)."""
        scores: list[Score] = [None] * len(prompts)

        def done(batch: list[int], probs: Any) -> None:
            for i, row in zip(batch, probs):
                scores[i] = score_from_probs(row, self.min_mass)
                if on_result is not None:
                    on_result(i, scores[i])

        self.number_probs(prompts, on_batch=done)
        return scores
