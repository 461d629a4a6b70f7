"""Activation similarity of two variants on A's response tokens (seed 001 phase 4, step 4c-4d).

    python -m builders.similarity --a instruct --b finetuned --prompts general

A's responses (built if missing) are replayed through B: B reads the prompt formatted its
own way (a base model without a chat template gets plain text) followed by exactly A's
response token ids. The build stops with a clear error when the two vocabularies differ
(the ids would mean different text) or a replayed response's ids differ from A's. Both
formattings are recorded per prompt.

Tables: ``data`` per layer (mean over prompts of ``cos(mean response act A, mean B)``,
std, prompts); ``positions`` per response position and layer (mean cosine, clipped to
positions ≥ ``--min-share`` of the prompts reach, with the count); ``prompts`` per prompt
and layer, plus each prompt's formatting. ``--batch-size`` (default ``auto``: 8 on the
CPU, from the free memory on CUDA) is halved for a batch that runs out of memory; the
summary's ``batch_sizes`` lists the sizes used.
Output dataset: ``similarity-<experiment>-<A>-<B>-<set>``.
"""
from __future__ import annotations

import logging
from typing import Any

from store import BuildResult, BuildSpec, Store
from transforms.batching import parse_batch_size

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import (BuildError, model_layer_count, progress)
from builders.stages.replay import ReplayPair, replay_batch_size, replay_source

log = logging.getLogger(__name__)

BUILDER = "builders.similarity"
CODE_VERSION = "1"


def compute_similarity(loaded_a: Any, loaded_b: Any, sequences: list[ReplayPair], layers: list[int],
                       batch_size: int, min_share: float, quiet: bool) -> tuple[list, list, list, list[int]]:
    """(layer rows, position rows, per-prompt rows, batch sizes used), a batch of prompts at
    a time; a batch that runs out of memory is redone at half the size (both models)."""
    from transforms.batching import run_slices
    from transforms.capture import iter_per_token
    from transforms.diffing import SimilarityStats

    stats = SimilarityStats(layers)
    bar = progress(len(sequences), "similarity", quiet)

    def chunk_stats(lo: int, hi: int, size: int) -> None:
        chunk = sequences[lo:hi]
        acts = {}
        for side, loaded in (("a", loaded_a), ("b", loaded_b)):
            for batch in iter_per_token(loaded.model, [s.side(side) for s in chunk], layers, "residual", "response", size):
                for item in batch:
                    acts[(side, item.sample_idx)] = item.acts_TLD
        # only now, with both sides captured, does the chunk enter the statistics
        for i, seq in enumerate(chunk):
            a, b = acts[("a", i)], acts[("b", i)]
            if a.shape != b.shape:
                raise BuildError(f"prompt {seq.prompt_id}: response spans differ ({a.shape[0]} vs {b.shape[0]} tokens)")
            stats.add(f"{seq.prompt_id}:{seq.rollout}", a, b)
        bar.update(len(chunk))

    try:
        used = run_slices(len(sequences), batch_size, chunk_stats, what="similarity")
    finally:
        bar.close()
    formatting = {f"{s.prompt_id}:{s.rollout}": s for s in sequences}
    prompt_rows = []
    for r in stats.per_prompt:
        s = formatting[r["prompt_id"]]
        prompt_rows.append({**r, "a_chat": s.a.used_chat_template, "b_chat": s.b.used_chat_template,
                            "same_prompt_ids": s.same_prompt_ids, "b_formatted": s.b.formatted_prompt})
    return stats.layer_rows(), stats.position_rows(min_share), prompt_rows, used


def activation_similarity(
    store: Store,
    catalog: Catalog,
    variant_a: str,
    variant_b: str,
    prompt_set: str,
    *,
    experiment: str | None = None,
    layers: str = "all",
    min_share: float = 0.8,
    batch_size: int | str = "auto",
    generation: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    from transforms.capture import parse_layers

    exp = catalog.experiment(experiment)
    a, b = catalog.variant(exp.name, variant_a), catalog.variant(exp.name, variant_b)
    try:
        batch_request = parse_batch_size(batch_size)
    except ValueError as err:
        raise BuildError(f"--batch-size: {err}") from None
    if not 0 < min_share <= 1:
        raise BuildError(f"--min-share must be in (0, 1], got {min_share}")
    n_a, n_b = model_layer_count(a.model.id, a.model.revision), model_layer_count(b.model.id, b.model.revision)
    if n_a != n_b:
        raise BuildError(f"{variant_a} has {n_a} layers, {variant_b} has {n_b}: per-layer similarity needs the same depth")
    try:
        layer_ids = parse_layers(layers, n_a)
    except ValueError as err:
        raise BuildError(f"--layers: {err}") from None
    source = replay_source(store, catalog, exp.name, variant_a, variant_b, prompt_set, generation, quiet)
    params = {"experiment": exp.name, "a": variant_a, "b": variant_b, "prompt_set": prompt_set,
              "layers": layer_ids, "min_share": min_share}
    spec = BuildSpec(name=names.similarity(exp.name, variant_a, variant_b, prompt_set), kind="similarity",
                     builder=BUILDER, code_version=CODE_VERSION, params=params, parents={"responses": source.responses.ref},
                     identity=source.identity)

    def produce(writer: Any) -> None:
        loaded_a, loaded_b, sequences = source.load(store, catalog)
        size = replay_batch_size(batch_request, loaded_a, loaded_b, sequences)
        layer_rows, position_rows, prompt_rows, used = compute_similarity(loaded_a, loaded_b, sequences, layer_ids,
                                                                          size, min_share, quiet)
        tag = {"variant_a": variant_a, "variant_b": variant_b}
        writer.write_table([{**tag, **r} for r in layer_rows])
        writer.write_table([{**tag, **r} for r in position_rows], table="positions")
        writer.write_table(prompt_rows, table="prompts")
        writer.summary.update({"prompts": len(sequences),
                               "same_prompt_formatting": sum(s.same_prompt_ids for s in sequences),
                               "min_layer_cosine": min((r["mean_cosine"] for r in layer_rows
                                                        if r["mean_cosine"] is not None), default=None),
                               "batch_sizes": used})

    return store.build(spec, produce, force=force)
