"""Trait vectors read through a dictionary's features (issue 15 item 10).

    python -m builders.decompose --dictionary sae-demo-instruct-general-L12-l1 \\
        --vectors vectors-demo-instruct-sycophancy-response__-residual
    python -m builders.decompose --dictionary crosscoder-demo-base-chat-general-L13-imported \\
        --model-index 1 --vectors vectors-demo-chat-sycophancy-response__-residual

For each method's vector at the dictionary's layer (a vectors dataset holds one per layer):
the top features by decoder cosine and by encoding the vector
(:func:`~transforms.dictionaries.decompose_vector`), each with the first three of its top
activating contexts from the dictionary's ``top_examples`` table, and the fraction of the vector
explained by the top features' decoder rows. One row per vector × method × ranking × rank, and
``figures/top_cosines.png``.

Encoding: the vector is rescaled to a typical activation norm at the layer first (the SAE's
``rms_norm`` from its summary, else sqrt(d) · target_rms / input_scale of a trained dictionary,
else the vector's own norm; ``--scale`` overrides), because encoders and thresholds were fitted
on activations of that size, not on a unit direction or a small difference of means.

A crosscoder is read through one model's slice (``--model-index``; default the model whose
variant the vectors were extracted from): the cosines are with that model's decoder rows (what
each latent writes into that model), and encoding feeds the vector to that model's encoder with
the other models' inputs at zero, as if only that model's stream carried it. Real paired tokens
never look like that, so the encoding ranking of a crosscoder is a probe of the encoder weights,
not a latent activation one could observe; the cosine ranking is the robust one. A BatchTopK
threshold is compared with the code scaled by the latent's summed decoder norms, as in training.

Output dataset: ``decomposition-<dictionary>[-m<index>]-<vectors without "vectors-">``.
"""
from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store

from builders.shared import names
from builders.shared.common import BuildError
from builders.shared.figures import png_bytes, subplots

if TYPE_CHECKING:
    from transforms.dictionaries import SparseAutoencoder

log = logging.getLogger(__name__)

BUILDER = "builders.decompose"
CODE_VERSION = "1"
DICTIONARY_KINDS = ("sae", "crosscoder")
CONTEXTS = 3  # top activating contexts shown per feature


def decompose_vectors(
    store: Store,
    dictionary: str,
    vectors: str,
    *,
    methods: Sequence[str] = ("mean_diff",),
    model_index: int | None = None,
    top_n: int = 10,
    scale: float | None = None,
    force: bool = False,
) -> BuildResult:
    """Decompose the vectors of ``vectors`` (one per method) at the dictionary's layer and publish."""
    from builders.stages.vectors import load_vectors

    dict_manifest, vec_manifest = store.resolve(dictionary), store.resolve(vectors)
    if dict_manifest.kind not in DICTIONARY_KINDS:
        raise BuildError(f"--dictionary {dict_manifest.ref} is a {dict_manifest.kind} dataset, "
                         f"not one of {', '.join(DICTIONARY_KINDS)}")
    if not methods:
        raise BuildError("--method: no vector method given")
    if top_n < 1:
        raise BuildError(f"--top-n must be at least 1, got {top_n}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise BuildError(f"--scale must be a positive number, got {scale}")
    model_index = resolve_model_index(dict_manifest, vec_manifest, model_index)
    layer = int(dict_manifest.params["layer"])
    loaded = {method: load_vectors(store, vec_manifest, method) for method in methods}
    picked = {method: vector_at(vectors_LD, metadata, layer, f"{vec_manifest.ref} {method}")
              for method, (vectors_LD, metadata) in loaded.items()}
    sae = dictionary_sae(store, dict_manifest, model_index)
    for method, vector in picked.items():
        if vector.shape[0] != sae.d_model:
            raise BuildError(f"{vec_manifest.ref} {method}: vectors of width {vector.shape[0]}, "
                             f"{dict_manifest.ref} reads width {sae.d_model}")
    encode_at, scale_source = encoding_scale(dict_manifest, sae, model_index, scale)
    params = {"dictionary": dict_manifest.ref, "vectors": vec_manifest.ref, "methods": list(methods),
              "model_index": model_index, "top_n": top_n, "scale": scale, "layer": layer}
    spec = BuildSpec(name=names.decomposition(dict_manifest.name, vec_manifest.name,
                                              model_index if dict_manifest.kind == "crosscoder" else None),
                     kind="decomposition", builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents={"dictionary": dict_manifest.ref, "vectors": vec_manifest.ref}, identity={})

    def produce(writer: Any) -> None:
        from transforms.dictionaries import decompose_vector

        contexts = feature_contexts(store, dict_manifest)
        rows: list[dict[str, Any]] = []
        explained: dict[str, float] = {}
        for method, vector in picked.items():
            result = decompose_vector(sae, vector, top_n=top_n, scale=encode_at)
            explained[method] = result.explained_fraction
            coefficient = dict(zip((s.feature for s in result.by_cosine), result.coefficients))
            for score in (*result.by_cosine, *result.by_encoding):
                top = contexts.get(score.feature, ([], None))
                rows.append({"vectors": vec_manifest.name, "method": method, "layer": layer,
                             "ranking": score.rank_by, "rank": score.rank + 1, "latent": score.feature,
                             "cosine": score.cosine, "activation": score.activation, "score": score.score,
                             "coefficient": coefficient.get(score.feature) if score.rank_by == "cosine" else None,
                             "explained_fraction": result.explained_fraction, "vector_norm": result.vector_norm,
                             "scale": result.scale, "top_activation": top[1], "contexts": top[0]})
        writer.write_table(rows)
        writer.write_bytes("figures/top_cosines.png", cosine_bars(rows))
        writer.summary.update({"layer": layer, "explained_fraction": explained, "scale_from": scale_source,
                               "dictionary_kind": dict_manifest.kind, "dict_size": sae.dict_size})

    return store.build(spec, produce, force=force)


def resolve_model_index(dictionary: Manifest, vectors: Manifest, model_index: int | None) -> int | None:
    """None for an SAE; for a crosscoder the given index, else the model whose variant made the vectors."""
    if dictionary.kind == "sae":
        if model_index not in (None, 0):
            raise BuildError(f"--model-index {model_index}: {dictionary.ref} is an SAE (one model)")
        return None
    if model_index is not None:
        if model_index not in (0, 1):
            raise BuildError(f"--model-index {model_index}: a crosscoder of two models has 0 (a) and 1 (b)")
        return model_index
    variants = [dictionary.params.get("a"), dictionary.params.get("b")]
    variant = vectors.params.get("variant")
    if variant in variants:
        return variants.index(variant)
    raise BuildError(f"{vectors.ref} is of variant {variant!r}, not one of {dictionary.ref}'s {variants}: "
                     "pass --model-index 0 or 1")


def vector_at(vectors_LD: Any, metadata: dict[str, str], layer: int, where: str) -> Any:
    """The row of ``vectors_LD`` at ``layer`` (float64), from the file's ``layers`` metadata."""
    import numpy as np

    layers = json.loads(metadata["layers"]) if "layers" in metadata else list(range(len(vectors_LD)))
    if layer not in layers:
        raise BuildError(f"{where}: no vector at layer {layer} (layers {layers[0]}..{layers[-1]})")
    return np.asarray(vectors_LD[layers.index(layer)], dtype=np.float64)


def dictionary_sae(store: Store, manifest: Manifest, model_index: int | None) -> "SparseAutoencoder":
    """An SAE version as it is; a crosscoder version as the SAE of one model's slice."""
    from builders.stages.crosscoder import load_crosscoder_version
    from builders.stages.sae import load_sae_version

    if manifest.kind == "sae":
        return load_sae_version(store, manifest)
    return crosscoder_slice(load_crosscoder_version(store, manifest), int(model_index or 0))


def crosscoder_slice(crosscoder: Any, index: int) -> "SparseAutoencoder":
    """Model ``index``'s encoder and decoder as an SAE (others' inputs at zero; see the module
    docstring). A calibrated BatchTopK threshold t keeps f · Σ_m ‖d_m‖ > t, i.e. f > t / Σ_m ‖d_m‖."""
    from types import SimpleNamespace

    from transforms.dictionaries import sae_from_crosscoder

    one = slice(index, index + 1)
    threshold = getattr(crosscoder, "threshold", None)
    if threshold is not None and float(threshold) >= 0:
        threshold = float(threshold) / crosscoder.latent_scale().detach().clamp_min(1e-30)
    view = SimpleNamespace(
        encoder=SimpleNamespace(weight=crosscoder.encoder.weight[one], bias=crosscoder.encoder.bias),
        decoder=SimpleNamespace(weight=crosscoder.decoder.weight[one], bias=crosscoder.decoder.bias[one]),
        k=crosscoder.k, threshold=threshold, input_scale=crosscoder.input_scale[one])
    return sae_from_crosscoder(view, threshold_on_scaled_code=False)


def encoding_scale(manifest: Manifest, sae: "SparseAutoencoder", model_index: int | None,
                   override: float | None) -> tuple[float | None, str]:
    """The norm a vector is rescaled to before encoding, and where it came from."""
    if override is not None:
        return float(override), "--scale"
    if manifest.summary.get("rms_norm"):
        return float(manifest.summary["rms_norm"]), "dictionary rms_norm"
    target = (manifest.params.get("training") or {}).get("target_rms")
    if target:  # the trainer set input_scale = target_rms / RMS per dimension on these tokens
        return math.sqrt(sae.d_model) * float(target) / sae.input_scale, "sqrt(d) * target_rms / input_scale"
    log.warning("%s: no typical activation norm known; vectors are encoded at their own norm", manifest.ref)
    return None, "vector norm"


def feature_contexts(store: Store, manifest: Manifest) -> dict[int, tuple[list[str], float | None]]:
    """Per feature: its first contexts as ``left«token»right`` text, and its top activation."""
    if "top_examples" not in manifest.tables:
        return {}
    frame = store.read_table(manifest, "top_examples").sort(["latent", "rank"])
    out: dict[int, tuple[list[str], float | None]] = {}
    for r in frame.filter(frame["rank"] <= CONTEXTS).to_dicts():
        texts, top = out.get(r["latent"], ([], None))
        texts.append(f"{r['left']}«{r['token_text']}»{r['right']}")
        out[r["latent"]] = (texts, r["value"] if top is None else top)
    return out


def cosine_bars(rows: list[dict[str, Any]]) -> bytes:
    """One panel per method: the signed cosines of the top features by cosine."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = subplots(len(methods), 1, figsize=(6, 1.0 + 2.2 * len(methods)), squeeze=False)
    for ax, method in zip(axes[:, 0], methods):
        top = [r for r in rows if r["method"] == method and r["ranking"] == "cosine"]
        ax.bar(range(len(top)), [r["cosine"] for r in top],
               color=["#4c72b0" if r["cosine"] >= 0 else "#c44e52" for r in top])
        ax.set_xticks(range(len(top)), [str(r["latent"]) for r in top], fontsize=7)
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_ylabel("cosine")
        ax.set_title(f"{method}: top features by decoder cosine", fontsize=9)
    axes[-1, 0].set_xlabel("feature")
    fig.tight_layout()
    return png_bytes(fig)
