"""The feature tables of an SAE version: one pass over the variant's tokens.

Whatever the SAE's origin (trained here, Gemma Scope, SAELens) it is run as a
:class:`~transforms.dictionaries.SparseAutoencoder` on raw activations in model units, so the
tables mean the same for all of them:

- ``data``: per feature ``latent``, ``decoder_norm`` and ``encoder_norm`` (as stored, i.e. in
  the space the SAE was trained in), ``n_active``, ``frequency``, ``mean_active``, ``mean_all``,
  ``max_activation`` (:class:`~transforms.dictionaries.LatentActivationStats`) and
  ``mean_contribution``: mean over active tokens of the norm of what the feature adds to the
  reconstruction, in model units (f · ‖d‖ / input_scale);
- ``top_examples``: the tokens each feature fires most on, with context text (the crosscoder's
  rows, so one reader serves both);
- summary: explained variance, mean L0, features never active, the activations' RMS norm
  (``rms_norm``: what a decomposition scales a vector to before encoding it);
- ``figures/frequency.png``: the histogram of log10 feature frequencies.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from builders.shared.common import progress
from builders.shared.figures import png_bytes, subplots

if TYPE_CHECKING:
    from store import Store
    from transforms.dictionaries import SparseAutoencoder

    from builders.stages.paired_activations import StreamedActivations

log = logging.getLogger(__name__)

ANALYSIS_BATCH = 1024  # tokens encoded at once


def write_feature_tables(writer: Any, store: "Store", acts: "StreamedActivations", sae: "SparseAutoencoder", *,
                         top_k: int, tokenizer: Any, quiet: bool = False) -> None:
    """Tables ``data`` and ``top_examples``, the frequency histogram and summary entries."""
    import numpy as np
    import torch

    from transforms.dictionaries import LatentActivationStats

    from builders.stages.crosscoder_latents import example_rows, row_keys
    from builders.stages.paired_activations import token_index

    if acts.n_models != 1:
        raise ValueError(f"an SAE reads one model's activations, the source has {acts.n_models}")
    samples = token_index(store, acts)
    row_sample, row_token = row_keys(samples, acts.n_tokens)
    dec_norms = sae.W_dec.detach().double().norm(dim=1).numpy()
    enc_norms = sae.W_enc.detach().double().norm(dim=0).numpy()
    stats = LatentActivationStats(sae.dict_size, 1, top_k=top_k)
    squared_error = square_sum = active_sum = 0.0
    mean_sum = np.zeros(acts.d_model)
    bar = progress(acts.n_tokens, "sae features", quiet)
    sae.eval()
    with torch.no_grad():
        for first, x in acts.ordered(store, ANALYSIS_BATCH):
            x_BD = torch.from_numpy(np.ascontiguousarray(x[:, 0]))
            f = sae.encode(x_BD)
            x_hat = sae.decode(f)
            rows = slice(first, first + len(x))
            stats.add(f, (dec_norms / sae.input_scale)[None], keys=np.stack([row_sample[rows], row_token[rows]], 1))
            xd = x_BD.double().numpy()
            squared_error += float(((xd - x_hat.double().numpy()) ** 2).sum())
            mean_sum += xd.sum(axis=0)
            square_sum += float((xd ** 2).sum())
            active_sum += float((f > 0).sum())
            bar.update(len(x))
    bar.close()
    n = max(stats.n_tokens, 1)
    variance = square_sum - float((mean_sum ** 2).sum()) / n
    rows_out = []
    for r in stats.rows():
        j = r["latent"]
        contribution = r.pop("mean_contribution_0")
        rows_out.append({"latent": j, "decoder_norm": float(dec_norms[j]), "encoder_norm": float(enc_norms[j]),
                         **{k: v for k, v in r.items() if k != "latent"}, "mean_contribution": contribution})
    writer.write_table(rows_out)
    writer.write_table(example_rows(stats, samples, tokenizer), table="top_examples")
    frequencies = [r["frequency"] or 0.0 for r in rows_out]
    writer.write_bytes("figures/frequency.png", frequency_histogram(frequencies, stats.n_tokens))
    writer.summary.update({
        "analysis_tokens": stats.n_tokens,
        "analysis_explained_variance": float(1 - squared_error / variance) if variance > 0 else None,
        "l0": active_sum / n,
        "never_active": sum(1 for r in rows_out if not r["n_active"]),
        "rms_norm": float(np.sqrt(square_sum / n)),
        "dict_size": sae.dict_size, "d_model": sae.d_model,
    })


def frequency_histogram(frequencies: list[float], n_tokens: int) -> bytes:
    """Histogram of log10 feature frequency; never-active features counted at the left edge."""
    import math

    floor = math.log10(1.0 / max(n_tokens, 1)) - 0.5  # below the rarest possible firing
    values = [math.log10(f) if f > 0 else floor for f in frequencies]
    fig, ax = subplots(figsize=(6, 3.2))
    ax.hist(values, bins=50, range=(floor - 0.1, 0.0), color="#4c72b0", log=True)
    ax.set_xlabel(f"log10 feature frequency  (never active at {floor:.1f})")
    ax.set_ylabel("features")
    fig.tight_layout()
    return png_bytes(fig)
