"""Per-token activations of two variants on identical tokens, streamed from the store.

A crosscoder (or any paired analysis) reads variant A's per-token activations and variant
B's activations over *the same tokens*: B replays A's responses (``--replay-from A``), so
row ``t`` of both arrays is the same response token. Both datasets are built here when
missing (``capture_activations`` with ``per_token=True``), then read chunk by chunk: a
trainer never holds more than two Zarr chunks of each side plus one batch, however many
tokens the store has. ``VariantActivations`` is the same reader over one variant (SAEs);
both share ``StreamedActivations``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, model_config_dims
from builders.stages.activations import capture_activations
from builders.stages.responses import generate_responses

if TYPE_CHECKING:
    import numpy as np

    from store import Manifest, Store

log = logging.getLogger(__name__)

# Tokens the input scale (target RMS) is estimated from: whole chunks drawn at random (seeded),
# so a large store is not read one extra time before training; the scale is stored with the
# weights, so every later use of the crosscoder sees the same one.
SCALE_SAMPLE_TOKENS = 1 << 15


class StreamedActivations:
    """What every per-token reader shares: rows ``[lo, hi)`` of one or more per-token arrays
    at one layer side by side, ``[tokens, n_models, d_model]``, read Zarr chunk by chunk.
    Subclasses (frozen dataclasses) give ``sources``, ``n_tokens``, ``d_model``, ``chunk_rows``."""

    n_tokens: int
    d_model: int
    chunk_rows: int

    @property
    def sources(self) -> tuple[tuple["Manifest", int], ...]:
        """(activations version, index of the layer along its layer axis), one per model."""
        raise NotImplementedError

    @property
    def n_models(self) -> int:
        return len(self.sources)

    def chunks(self) -> list[tuple[int, int]]:
        """Row ranges ``[lo, hi)``, one per Zarr chunk."""
        return [(lo, min(lo + self.chunk_rows, self.n_tokens)) for lo in range(0, self.n_tokens, self.chunk_rows)]

    def read(self, store: "Store", lo: int, hi: int) -> "np.ndarray":
        """Rows ``[lo, hi)`` as float32 ``[tokens, n_models, d_model]`` (model axis in ``sources`` order)."""
        return self._read(self._arrays(store), lo, hi)

    def _arrays(self, store: "Store") -> list[tuple[Any, int]]:
        return [(store.open_array(manifest, "acts"), index) for manifest, index in self.sources]

    @staticmethod
    def _read(arrays: list[tuple[Any, int]], lo: int, hi: int) -> "np.ndarray":
        import numpy as np

        return np.stack([np.asarray(array[lo:hi, index, :], dtype=np.float32) for array, index in arrays], axis=1)

    def read_chunks(self, store: "Store", order: Sequence[int]) -> Iterator[tuple[int, "np.ndarray"]]:
        """(first row, rows) of the chunks in ``order``, the next chunk read (decompressed) in a
        background thread while the caller works on the current one: training waits on Zarr only
        when a step is faster than a read."""
        from concurrent.futures import ThreadPoolExecutor

        arrays, chunks = self._arrays(store), self.chunks()
        if not order:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-prefetch") as pool:
            pending = pool.submit(self._read, arrays, *chunks[order[0]])
            for k, i in enumerate(order):
                rows = pending.result()
                if k + 1 < len(order):
                    pending = pool.submit(self._read, arrays, *chunks[order[k + 1]])
                yield chunks[i][0], rows

    def ordered(self, store: "Store", batch_size: int) -> Iterator[tuple[int, "np.ndarray"]]:
        """(first row, batch ``[B, n_models, d]``) in token order, for analysis passes."""
        for lo, chunk in self.read_chunks(store, range(len(self.chunks()))):
            for start in range(0, len(chunk), batch_size):
                yield lo + start, chunk[start:start + batch_size]

    def shuffled(self, store: "Store", batch_size: int, seed: int) -> "ShuffledBatches":
        return ShuffledBatches(self, store, batch_size, seed)

    def scale_sample(self, store: "Store", max_tokens: int = SCALE_SAMPLE_TOKENS, seed: int = 0) -> Iterator["np.ndarray"]:
        """Whole chunks drawn at random (seeded) until they hold ``max_tokens`` rows (every chunk
        when the store has no more), read in row order: what the input scale is estimated from."""
        import numpy as np

        chunks = self.chunks()
        picked, rows = [], 0
        for i in np.random.default_rng([seed, 0x5CA1E]).permutation(len(chunks)):
            if rows >= max_tokens:
                break
            picked.append(int(i))
            rows += chunks[i][1] - chunks[i][0]
        for _, chunk in self.read_chunks(store, sorted(picked)):
            yield chunk


@dataclass(frozen=True)
class PairedActivations(StreamedActivations):
    """Variant A's and B's per-token activations at ``layer``, row ``t`` the same token."""

    a: "Manifest"
    b: "Manifest"
    layer: int
    layer_index_a: int  # index of ``layer`` along each array's layer axis
    layer_index_b: int
    n_tokens: int
    d_model: int
    chunk_rows: int  # rows per Zarr chunk (what one read fetches)

    @property
    def parents(self) -> dict[str, str]:
        return {"activations_a": self.a.ref, "activations_b": self.b.ref}

    @property
    def sources(self) -> tuple[tuple["Manifest", int], ...]:
        return ((self.a, self.layer_index_a), (self.b, self.layer_index_b))


@dataclass(frozen=True)
class VariantActivations(StreamedActivations):
    """One variant's per-token activations at ``layer`` (an SAE's training data)."""

    manifest: "Manifest"
    layer: int
    layer_index: int
    n_tokens: int
    d_model: int
    chunk_rows: int

    @property
    def parents(self) -> dict[str, str]:
        return {"activations": self.manifest.ref}

    @property
    def sources(self) -> tuple[tuple["Manifest", int], ...]:
        return ((self.manifest, self.layer_index),)


@dataclass(frozen=True)
class ShuffledBatches:
    """``batches(epoch)``: chunks in a seeded random order, rows shuffled inside a window
    of two chunks; every row exactly once per epoch; the last short batch is kept."""

    source: StreamedActivations
    store: "Store"
    batch_size: int
    seed: int

    def __call__(self, epoch: int) -> Iterator["np.ndarray"]:
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        chunks = self.source.chunks()
        carry = np.empty((0, self.source.n_models, self.source.d_model), dtype=np.float32)
        for _, rows in self.source.read_chunks(self.store, [int(i) for i in rng.permutation(len(chunks))]):
            window = np.concatenate([carry, rows])
            window = window[rng.permutation(len(window))]
            whole = len(window) - len(window) % self.batch_size
            for start in range(0, whole, self.batch_size):
                yield window[start:start + self.batch_size]
            carry = window[whole:]
        if len(carry):
            yield carry


def paired_activations(store: "Store", catalog: Catalog, experiment: str, variant_a: str, variant_b: str,
                       prompt_set: str, layer: int, *, position: str = "response[:]", batch_size: int | str = "auto",
                       generation: dict[str, Any] | None = None, quiet: bool = False) -> PairedActivations:
    """A's per-token activations over its own responses and B's over the same tokens
    (replayed), built if missing (A's responses too, with ``generation`` settings);
    refused when the two cannot be paired."""
    from builders.stages.responses import generate_responses

    exp = catalog.experiment(experiment)
    entries = {v: catalog.variant(exp.name, v) for v in (variant_a, variant_b)}
    if variant_a == variant_b:
        raise BuildError(f"--a and --b are both {variant_a!r}: a paired analysis needs two variants")
    dims = {v: model_config_dims(e.model.id, e.model.revision) for v, e in entries.items()}
    (_, width_a), (_, width_b) = dims[variant_a], dims[variant_b]
    if width_a != width_b:
        raise BuildError(f"{variant_a} has d_model {width_a}, {variant_b} has {width_b}: "
                         "paired activations need the same width")
    for variant, (n_layers, _) in dims.items():
        if not 0 <= layer < n_layers:
            raise BuildError(f"--layer {layer}: {variant} has layers 0..{n_layers - 1}")
    common = {"experiment": exp.name, "prompt_set": prompt_set, "position": position, "layers": str(layer),
              "per_token": True, "batch_size": batch_size, "quiet": quiet}
    generate_responses(store, catalog, variant_a, prompt_set, exp.name, generation, quiet=quiet)
    a = capture_activations(store, catalog, variant_a, **common).manifest
    b = capture_activations(store, catalog, variant_b, replay_from=variant_a, **common).manifest
    return pair_manifests(store, a, b, layer)


def pair_manifests(store: "Store", a: "Manifest", b: "Manifest", layer: int) -> PairedActivations:
    """Check that two per-token activation versions cover the same tokens at ``layer``."""
    if not (a.params.get("per_token") and b.params.get("per_token")):
        raise BuildError(f"{a.ref} / {b.ref}: paired activations need per-token datasets")
    arrays = {m.ref: store.open_array(m, "acts") for m in (a, b)}
    index = {}
    for ref, array in arrays.items():
        layers = list(array.attrs.get("layers", []))
        if layer not in layers:
            raise BuildError(f"{ref} has layers {layers}, not {layer}")
        index[ref] = layers.index(layer)
    arr_a, arr_b = arrays[a.ref], arrays[b.ref]
    if arr_a.shape[0] != arr_b.shape[0] or arr_a.shape[2] != arr_b.shape[2]:
        raise BuildError(f"{a.ref} has {arr_a.shape[0]} tokens of width {arr_a.shape[2]}, {b.ref} has "
                         f"{arr_b.shape[0]} of width {arr_b.shape[2]}: not the same tokens")
    rows_a = store.read_table(a).select("prompt_id", "rollout", "n_tokens", "token_start").to_dicts()
    rows_b = store.read_table(b).select("prompt_id", "rollout", "n_tokens", "token_start").to_dicts()
    for ra, rb in zip(rows_a, rows_b, strict=False):
        if ra != rb:
            raise BuildError(f"{a.ref} / {b.ref}: sample {ra['prompt_id']} (rollout {ra['rollout']}) covers "
                             f"different tokens ({ra['n_tokens']} vs {rb['n_tokens']})")
    if len(rows_a) != len(rows_b):
        raise BuildError(f"{a.ref} has {len(rows_a)} samples, {b.ref} has {len(rows_b)}")
    return PairedActivations(a=a, b=b, layer=layer, layer_index_a=index[a.ref], layer_index_b=index[b.ref],
                             n_tokens=int(arr_a.shape[0]), d_model=int(arr_a.shape[2]),
                             chunk_rows=int(arr_a.chunks[0]))


def variant_activations(store: "Store", catalog: Catalog, experiment: str, variant: str, prompt_set: str,
                        layer: int, *, position: str = "response[:]", batch_size: int | str = "auto",
                        generation: dict[str, Any] | None = None, quiet: bool = False) -> VariantActivations:
    """``variant``'s per-token activations over its own responses at ``layer``, built if missing
    (its responses too, with ``generation`` settings)."""
    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    n_layers, _ = model_config_dims(entry.model.id, entry.model.revision)
    if not 0 <= layer < n_layers:
        raise BuildError(f"--layer {layer}: {variant} has layers 0..{n_layers - 1}")
    generate_responses(store, catalog, variant, prompt_set, exp.name, generation, quiet=quiet)
    manifest = capture_activations(store, catalog, variant, experiment=exp.name, prompt_set=prompt_set,
                                   position=position, layers=str(layer), per_token=True, batch_size=batch_size,
                                   quiet=quiet).manifest
    if not manifest.params.get("per_token"):
        raise BuildError(f"{manifest.ref}: an SAE needs a per-token dataset")
    array = store.open_array(manifest, "acts")
    layers = list(array.attrs.get("layers", []))
    if layer not in layers:
        raise BuildError(f"{manifest.ref} has layers {layers}, not {layer}")
    return VariantActivations(manifest=manifest, layer=layer, layer_index=layers.index(layer),
                              n_tokens=int(array.shape[0]), d_model=int(array.shape[2]),
                              chunk_rows=int(array.chunks[0]))


def token_index(store: "Store", paired: StreamedActivations) -> list[dict[str, Any]]:
    """Per sample of the first source's table (A's): prompt id, pair id, polarity, token ids,
    span and its token rows: what turns a token row back into text (top activating contexts)."""
    columns = ("sample", "prompt_id", "pair_id", "polarity", "token_ids", "span_start", "token_start", "token_end")
    return store.read_table(paired.sources[0][0]).select(*columns).to_dicts()
