"""The latent tables of a crosscoder version: one pass over the paired tokens.

Per latent: decoder norms per model, ``dec_norm_diff`` and its tag, encoder norms, decoder
cosine (:func:`transforms.dictionaries.decoder_table`); how often and how strongly it fires
and what it contributes to each model (:class:`~transforms.dictionaries.LatentActivationStats`);
Latent Scaling betas and ratios ν^ε, ν^r (:class:`~transforms.dictionaries.LatentScaling`,
Minder et al. 2025) for every latent. Plus the top activating tokens with their context
text, explained variance per model on these tokens, and the dec_norm_diff histogram.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from builders.shared.common import progress
from builders.shared.figures import png_bytes, subplots

if TYPE_CHECKING:
    from store import Store
    from transforms.dictionaries import CrossCoder

    from builders.stages.paired_activations import PairedActivations

log = logging.getLogger(__name__)

ANALYSIS_BATCH = 1024  # tokens encoded at once in the analysis pass


def write_latent_tables(writer: Any, store: "Store", paired: "PairedActivations", model: "CrossCoder", *,
                        top_k: int, tokenizer: Any, tagging: Any = None, quiet: bool = False) -> None:
    """Tables ``data`` and ``top_examples``, ``figures/dec_norm_diff.png`` and summary figures."""
    import numpy as np
    import torch

    from transforms.dictionaries import LatentActivationStats, LatentScaling, Tagging, decoder_table

    from builders.stages.paired_activations import token_index

    tagging = tagging or Tagging()
    W_dec = model.decoder.weight.detach().float()
    table = decoder_table(W_dec.numpy(), model.encoder.weight.detach().float().numpy(), tagging=tagging)
    samples = token_index(store, paired)
    row_sample, row_token = row_keys(samples, paired.n_tokens)
    stats = LatentActivationStats(model.dict_size, 2, top_k=top_k)
    scaling = LatentScaling(range(model.dict_size))
    squared_error = np.zeros(2)
    total, mean_sum, square_sum = 0, np.zeros((2, paired.d_model)), np.zeros(2)
    bar = progress(paired.n_tokens, "crosscoder latents", quiet)
    model.eval()
    with torch.no_grad():
        dec_norms = model.decoder_norms().float().numpy()
        for first, x in paired.ordered(store, ANALYSIS_BATCH):
            xn = model.normalize(torch.from_numpy(x))
            x_hat, f = model(xn)
            rows = slice(first, first + len(x))
            stats.add(f, dec_norms, keys=np.stack([row_sample[rows], row_token[rows]], axis=1))
            scaling.add(xn, x_hat, f, W_dec)
            xd = xn.double().numpy()
            squared_error += ((xd - x_hat.double().numpy()) ** 2).sum(axis=(0, 2))
            mean_sum += xd.sum(axis=0)
            square_sum += (xd ** 2).sum(axis=(0, 2))
            total += len(x)
            bar.update(len(x))
    bar.close()
    variance = square_sum - (mean_sum ** 2).sum(axis=1) / max(total, 1)
    explained = [float(1 - e / v) if v > 0 else None for e, v in zip(squared_error, variance)]
    activity = {r["latent"]: r for r in stats.rows()}
    scaled = {r["latent"]: r for r in scaling.result()}
    rows = [{**r, **_drop(activity[r["latent"]]), **_drop(scaled[r["latent"]])} for r in table]
    writer.write_table(rows)
    writer.write_table(example_rows(stats, samples, tokenizer), table="top_examples")
    writer.write_bytes("figures/dec_norm_diff.png", histogram([r["dec_norm_diff"] for r in rows], tagging))
    tags: dict[str, int] = {}
    for r in rows:
        tags[r["tag"]] = tags.get(r["tag"], 0) + 1
    writer.summary.update({"analysis_tokens": total, "analysis_explained_variance": explained, "tags": tags,
                           "never_active": sum(1 for r in rows if not r["n_active"])})


def _drop(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "latent"}


def row_keys(samples: list[dict[str, Any]], n_tokens: int) -> tuple[Any, Any]:
    """For each token row: its sample and its absolute position in the sample's ids."""
    import numpy as np

    row_sample = np.zeros(n_tokens, dtype=np.int64)
    row_token = np.zeros(n_tokens, dtype=np.int64)
    for s in samples:
        lo, hi = s["token_start"], s["token_end"]
        row_sample[lo:hi] = s["sample"]
        row_token[lo:hi] = s["span_start"] + np.arange(hi - lo)
    return row_sample, row_token


def example_rows(stats: Any, samples: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """The ``top_examples`` rows of ``stats``: latent, rank, value, sample, prompt and pair id, token, and
    the token and its context as text."""
    by_sample = {s["sample"]: s for s in samples}
    rows = []
    for r in stats.top_examples(token_ids={s["sample"]: s["token_ids"] for s in samples}):
        s = by_sample[r["sample"]]
        rows.append({"latent": r["latent"], "rank": r["rank"], "value": r["value"], "sample": r["sample"],
                     "prompt_id": s["prompt_id"], "pair_id": s["pair_id"], "token": r["token"],
                     "token_text": tokenizer.decode([r["token_id"]]),
                     "left": tokenizer.decode(list(r["left_ids"])), "right": tokenizer.decode(list(r["right_ids"]))})
    return rows


def histogram(values: list[float], tagging: Any) -> bytes:
    """The dec_norm_diff histogram (log counts), tag thresholds marked."""
    fig, ax = subplots(figsize=(6, 3.2))
    ax.hist(values, bins=50, range=(0, 1), color="#4c72b0", log=True)
    for x in (tagging.b_only, tagging.a_only, 0.5 - tagging.shared_width, 0.5 + tagging.shared_width):
        ax.axvline(x, color="#999999", lw=0.8, ls="--")
    ax.set_xlabel("dec_norm_diff  (0 = B only, 0.5 = shared, 1 = A only)")
    ax.set_ylabel("latents")
    fig.tight_layout()
    return png_bytes(fig)
