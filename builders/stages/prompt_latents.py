"""What the user-model and detector stages (seed 000, Days 1-2) read: per-sample activations of
one variant and per-sample dictionary latents, keyed by (prompt id, rollout).

- :func:`pooled_samples`: the variant's activations at one layer, mean-pooled over a position
  (``capture_activations``, built if missing);
- :func:`latent_means`: a dictionary's latents encoded *per token* and then averaged over the
  position's span (encoding a pooled vector is not the mean of the codes: the encoder is not
  linear). An SAE reads its own variant's per-token activations; a crosscoder reads A's and
  B's on the same tokens (``paired_activations``: B replays A's responses), and each latent is
  one joint activation of both models, so a crosscoder's latents are reported once, for the
  pair, whichever of A/B ``--variant`` is;
- :func:`load_dictionary`: a published ``crosscoder-...`` or ``sae-...`` version;
- :func:`ensure_responses`: responses to read prompts from (built with few new tokens when
  missing: the user-model features live in the prompt).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from store import Manifest, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_config_dims

if TYPE_CHECKING:
    import numpy as np

    from builders.stages.paired_activations import PairedActivations

log = logging.getLogger(__name__)

DICTIONARY_KINDS = ("crosscoder", "sae")
ENCODE_BATCH = 512  # tokens encoded at once


@dataclass(frozen=True)
class Dictionary:
    """A loaded dictionary. ``variants``: the crosscoder's (A, B) or the SAE's one variant;
    ``model``: a :class:`~transforms.dictionaries.CrossCoder` or a
    :class:`~transforms.dictionaries.SparseAutoencoder`."""

    ref: str
    kind: str
    model: Any
    variants: tuple[str, ...]
    layer: int | None
    dict_size: int


@dataclass(frozen=True)
class SampleValues:
    """Per-sample values, row i = ``keys[i]`` = (prompt id, rollout); ``parents``: the dataset
    versions they were read from (parents of what is built on them)."""

    keys: list[tuple[str, int]]
    values_NK: "np.ndarray"
    parents: dict[str, str]

    def take(self, keys: list[tuple[str, int]]) -> "np.ndarray":
        """Rows in the order of ``keys`` (every key must be present)."""
        index = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise BuildError(f"no activations for prompt {missing[0][0]!r} (rollout {missing[0][1]}) in "
                             f"{', '.join(self.parents.values())}")
        return self.values_NK[[index[k] for k in keys]]


def check_layer(catalog: Catalog, experiment: str, variant: str, layer: int) -> int:
    """Refuse a layer the variant's model does not have (from its config, no weights); returns d_model."""
    entry = catalog.variant(experiment, variant)
    n_layers, d_model = model_config_dims(entry.model.id, entry.model.revision)
    if not 0 <= layer < n_layers:
        raise BuildError(f"--layer {layer}: {variant} ({entry.model.id}) has layers 0..{n_layers - 1}")
    return d_model


def load_dictionary(store: Store, ref: str, experiment: str, variant: str, layer: int) -> Dictionary:
    """A published ``crosscoder-...`` / ``sae-...`` version, checked against the run: same
    experiment and layer, and ``variant`` one of its variants."""
    kind = ref.split("-", 1)[0]
    if kind not in DICTIONARY_KINDS:
        raise BuildError(f"--dictionary {ref}: not a dictionary dataset (expected crosscoder-... or sae-...)")
    if ref.split("@")[0] not in store.datasets():
        raise BuildError(f"--dictionary {ref}: no such dataset in the store")
    manifest = store.resolve(ref)
    params = manifest.params
    if params.get("experiment") not in (None, experiment):
        raise BuildError(f"--dictionary {manifest.ref} is of experiment {params['experiment']!r}, not {experiment!r}")
    if params.get("layer") is not None and int(params["layer"]) != layer:
        raise BuildError(f"--dictionary {manifest.ref} reads layer {params['layer']}, not --layer {layer}")
    if kind == "crosscoder":
        from builders.stages.crosscoder import load_crosscoder_version

        model = load_crosscoder_version(store, manifest)
        variants: tuple[str, ...] = (params["a"], params["b"])
    else:
        from builders.stages.sae import load_sae_version

        model = load_sae_version(store, manifest)
        variants = (params.get("variant") or variant,)
    if variant not in variants:
        raise BuildError(f"--dictionary {manifest.ref} is of {' and '.join(variants)}, not of --variant {variant}")
    model.eval()
    return Dictionary(manifest.ref, kind, model, variants, params.get("layer"), int(model.dict_size))


def checked_run(store: Store, catalog: Catalog, experiment: str | None, variant: str, layer: int, position: str,
                dictionary: str | None) -> tuple[str, "Dictionary | None"]:
    """What the seed 000 prompt stages check before any work: experiment, variant, position,
    layer, and the dictionary (loaded). Returns the experiment's name and the dictionary."""
    from transforms.sequences import parse_position

    exp = catalog.experiment(experiment)
    catalog.variant(exp.name, variant)
    try:
        parse_position(position)
    except ValueError as err:
        raise BuildError(f"--position: {err}") from None
    check_layer(catalog, exp.name, variant, layer)
    return exp.name, (load_dictionary(store, dictionary, exp.name, variant, layer) if dictionary else None)


def ensure_responses(store: Store, catalog: Catalog, experiment: str, variant: str, prompt_set: str,
                     max_new_tokens: int, quiet: bool) -> Manifest:
    """The variant's latest responses to the set when they answer the set's current prompts,
    else new ones with ``max_new_tokens``. The prompt set is checked (and a bad file refused in
    one line) before any model loads."""
    from builders.stages.prompts import ensure_prompt_set
    from builders.stages.responses import generate_responses

    prompts = ensure_prompt_set(store, catalog, prompt_set)
    name = names.responses(experiment, variant, prompt_set)
    if name in store.datasets():
        latest = store.latest(name)
        if latest.parents.get("prompts") == prompts.ref:
            return latest
    return generate_responses(store, catalog, variant, prompt_set, experiment, {"max_new_tokens": max_new_tokens},
                              quiet=quiet).manifest


def prompt_info(store: Store, responses: Manifest) -> dict[str, dict[str, Any]]:
    """prompt id -> ``{"pair_id", "polarity", "category", "extra"}`` from the prompts version the
    responses answer."""
    prompts = store.resolve(responses.parents["prompts"])
    out = {}
    for row in store.read_table(prompts).select("prompt_id", "pair_id", "polarity", "note", "extra").to_dicts():
        extra = json.loads(row["extra"]) if row["extra"] else {}
        out[str(row["prompt_id"])] = {"pair_id": row["pair_id"], "polarity": row["polarity"],
                                      "category": extra.get("category") or row["note"], "extra": extra}
    return out


def pooled_samples(store: Store, catalog: Catalog, experiment: str, variant: str, prompt_set: str, layer: int,
                   position: str, *, batch_size: int | str = "auto", quiet: bool = False) -> SampleValues:
    """The variant's activations at ``layer`` pooled over ``position``, [N, d_model] float64;
    samples whose span is empty are left out."""
    import numpy as np

    from builders.stages.activations import capture_activations

    acts = capture_activations(store, catalog, variant, prompt_set, position, str(layer), experiment=experiment,
                               batch_size=batch_size, quiet=quiet).manifest
    rows = store.read_table(acts).select("prompt_id", "rollout", "n_tokens").to_dicts()
    values = np.asarray(store.open_array(acts, "acts")[:, 0, :], dtype=np.float64)
    keep = [i for i, r in enumerate(rows) if r["n_tokens"] > 0]
    return SampleValues([(str(rows[i]["prompt_id"]), int(rows[i]["rollout"])) for i in keep], values[keep],
                        {"activations": acts.ref})


def latent_means(store: Store, catalog: Catalog, experiment: str, variant: str, prompt_set: str, layer: int,
                 position: str, dictionary: Dictionary, *, generation: dict[str, Any] | None = None,
                 batch_size: int | str = "auto", quiet: bool = False) -> SampleValues:
    """Per sample, the mean over the span's tokens of each latent's activation, [N, F] float64
    (module docstring: per token, then averaged; a crosscoder encodes A and B together).
    A crosscoder trained on this set, position and layer is read on its own training tokens
    (:func:`dictionary_tokens`); otherwise ``generation`` gives the settings of A's responses,
    the same the caller's pooled activations read (left out, the catalog's defaults would
    answer the set anew, with other tokens)."""
    if dictionary.kind == "crosscoder":
        from builders.stages.paired_activations import paired_activations, token_index

        a, b = dictionary.variants
        paired = dictionary_tokens(store, catalog, dictionary, prompt_set, position, layer) or paired_activations(
            store, catalog, experiment, a, b, prompt_set, layer, position=position, generation=generation,
            batch_size=batch_size, quiet=quiet)
        index = token_index(store, paired)
        model = dictionary.model
        batches = ((lo, model.encode(model.normalize(_tensor(x)))) for lo, x in paired.ordered(store, ENCODE_BATCH))
        parents = paired.parents
        rows = store.read_table(paired.a).select("prompt_id", "rollout").to_dicts()
    else:
        from builders.stages.activations import capture_activations

        acts = capture_activations(store, catalog, variant, prompt_set, position, str(layer), experiment=experiment,
                                   per_token=True, batch_size=batch_size, quiet=quiet).manifest
        table = store.read_table(acts)
        index = table.select("token_start", "token_end").to_dicts()
        rows = table.select("prompt_id", "rollout").to_dicts()
        batches = ((lo, dictionary.model.encode(_tensor(x))) for lo, x in _token_batches(store, acts))
        parents = {"activations": acts.ref}
    means = _span_means(batches, [(r["token_start"], r["token_end"]) for r in index], dictionary.dict_size)
    keep = [i for i, r in enumerate(index) if r["token_end"] > r["token_start"]]
    return SampleValues([(str(rows[i]["prompt_id"]), int(rows[i]["rollout"])) for i in keep], means[keep], parents)


def dictionary_tokens(store: Store, catalog: Catalog, dictionary: Dictionary, prompt_set: str, position: str,
                      layer: int) -> "PairedActivations | None":
    """The crosscoder's own training activations when it read
    ``prompt_set``'s current prompts at ``position`` and ``layer`` and its A responses are A's
    latest (the ones the caller's pooled activations read): its latents are then encoded on the
    tokens it learnt from, whatever generation settings the caller has (a second answer set
    would be other tokens). None otherwise: another set, position or layer, newer answers, or
    its activations not in this store (a version pulled without its parents)."""
    from builders.stages.paired_activations import pair_manifests
    from builders.stages.prompts import ensure_prompt_set
    from store import StoreError

    manifest = store.resolve(dictionary.ref)
    p = manifest.params
    if p.get("prompt_set") != prompt_set or p.get("position") != position or p.get("layer") is None \
            or int(p["layer"]) != layer or not {"activations_a", "activations_b"} <= set(manifest.parents):
        return None
    try:
        acts_a, acts_b = (store.resolve(manifest.parents[k]) for k in ("activations_a", "activations_b"))
        responses = store.resolve(acts_a.parents["responses"])
    except (StoreError, KeyError):
        return None
    name = responses.name
    if responses.parents.get("prompts") != ensure_prompt_set(store, catalog, prompt_set).ref \
            or store.latest(name).ref != responses.ref:
        return None  # the set changed, or newer answers are what the pooled activations read
    return pair_manifests(store, acts_a, acts_b, layer)


def _tensor(x: "np.ndarray") -> Any:
    import torch

    return torch.from_numpy(x).float()


def _token_batches(store: Store, acts: Manifest) -> Iterator[tuple[int, "np.ndarray"]]:
    """(first row, [B, d_model]) of a one-layer per-token array, chunk by chunk."""
    import numpy as np

    array = store.open_array(acts, "acts")
    for lo in range(0, array.shape[0], ENCODE_BATCH):
        yield lo, np.asarray(array[lo:lo + ENCODE_BATCH, 0, :], dtype=np.float32)


def _span_means(batches: Iterator[tuple[int, Any]], spans: list[tuple[int, int]], n_latents: int) -> "np.ndarray":
    """Mean code per sample from (first token row, codes [B, F]) batches; token rows are in
    sample order, sample i owning rows [start_i, end_i). Empty spans give NaN."""
    import numpy as np
    import torch

    n_rows = max((end for _, end in spans), default=0)
    owner = torch.full((n_rows,), -1, dtype=torch.long)
    for i, (start, end) in enumerate(spans):
        owner[start:end] = i
    sums = torch.zeros(len(spans), n_latents, dtype=torch.float64)
    with torch.inference_mode():
        for lo, codes in batches:
            who = owner[lo:lo + codes.shape[0]]
            sums.index_add_(0, who, codes.double())
    counts = np.array([end - start for start, end in spans], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums.numpy() / counts[:, None]
