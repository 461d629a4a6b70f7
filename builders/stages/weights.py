"""Weight-space analysis of two variants (seed 001 phase 3): diff norms, logit lens, trait alignment.

    python -m builders.weights --a base --b instruct
    python -m builders.weights --a base --b instruct --vectors vectors-...-response__-residual --method mean_diff

Streams one tensor at a time from the variants' safetensors (peak memory near the largest
tensor, not two models). When B is A's model plus a LoRA adapter (catalog ``adapter:``, a
store reference to a finetune or a local PEFT folder), ``ΔW = (α/r)·B·A`` per module,
without merging. Tables:

- ``data``: per parameter ``diff_norm = ‖θ_B − θ_A‖_F``, ``base_norm = ‖θ_A‖_F``,
  ``relative``, with ``layer`` and ``component`` (embeddings, unembedding and final norm
  have no layer);
- ``layers``: per layer, the total diff norm and the norm of the residual-facing direction
  (mean column of ΔW_o_proj + ΔW_down_proj);
- ``logit_lens``: that direction through the final norm and the unembedding, top-k tokens
  both ways (word-like tokens only unless ``--no-token-filter``);
- ``alignment``: cosine between the direction and each given vector set, per layer, beside
  its random-direction baseline (mean and 95th percentile of ``|cos|`` over 1,000 seeded
  random unit directions, and ``p_random``, the share at least as aligned);
- ``directions``: per layer and writer (``matrix`` = ``o_proj`` / ``down_proj``), the top
  ``--singular-k`` left singular vectors of ΔW (``index`` 0 = largest), with
  ``singular_value``, ``energy_share`` = σ²/‖ΔW‖²_F and the unit ``vector`` (sign-fixed:
  largest-magnitude entry positive, so the cosine's sign is a convention, ``|cos|`` is not);
- ``directions_lens`` and ``directions_alignment``: the same logit lens and trait alignment
  (with its random baseline) for each singular direction.
The final norm of the lens is the model's own: RMSNorm, Gemma's ``(1+w)`` RMSNorm, or
LayerNorm with its bias (GPT-2 style). Tables with no rows (e.g. no residual writer
changed) are left out. Output dataset: ``weights-<experiment>-<A>-<B>``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog, Variant
from builders.shared.common import BuildError
from builders.stages.responses import model_identity
from builders.shared.variants import adapter_dir

log = logging.getLogger(__name__)

BUILDER = "builders.weights"
CODE_VERSION = "3"  # 2: random-direction baseline of the alignment; 3: singular directions, LayerNorm lens


def checkpoint_dir(variant: Variant) -> Path:
    """A local folder with the variant's model safetensors at its revision
    (:func:`transforms.models.checkpoint_folder`; hub models: the local HF cache)."""
    from transforms.models import ModelLoadError, ModelRef, checkpoint_folder

    try:
        return checkpoint_folder(ModelRef(variant.model.id, variant.model.revision))
    except ModelLoadError as err:  # offline, gated, missing: say which variant
        raise ModelLoadError(f"variant {variant.name!r}: {err}") from None


def analyze_weights(
    store: Store,
    catalog: Catalog,
    variant_a: str,
    variant_b: str,
    *,
    experiment: str | None = None,
    vectors: Sequence[str] = (),
    method: str = "mean_diff",
    top_k: int = 20,
    filter_tokens: bool = True,
    singular_k: int = 3,
    force: bool = False,
) -> BuildResult:
    from transforms.diffing import AdapterError, LoraAdapter

    exp = catalog.experiment(experiment)
    if variant_a == variant_b:
        raise BuildError(f"--a and --b are both {variant_a!r}: a variant compared with itself has no weight diff")
    if singular_k < 0:
        raise BuildError(f"--singular-k {singular_k}: must be 0 (off) or more")
    a, b = catalog.variant(exp.name, variant_a), catalog.variant(exp.name, variant_b)
    if a.adapter:
        raise BuildError(f"--a {variant_a}: the reference variant must be a plain model, not an adapter")
    adapter = adapter_dir(store, b)
    if adapter is not None and b.model.id != a.model.id:
        raise BuildError(f"--b {variant_b} is an adapter over {b.model.id}, but --a {variant_a} is {a.model.id}")
    vector_sets = [store.resolve(ref) for ref in vectors]
    for v in vector_sets:
        if v.kind != "vectors":
            raise BuildError(f"--vectors {v.ref} is a {v.kind} dataset, not vectors")
    # the weights are read from their files, not loaded in the variants' dtype
    identity = {"a": model_identity(catalog, exp.name, variant_a, store, with_dtype=False),
                "b": model_identity(catalog, exp.name, variant_b, store, with_dtype=False)}
    if identity["a"] == identity["b"]:
        raise BuildError(f"--b {variant_b} has the same weights as --a {variant_a} "
                         f"({a.model.id}, no adapter): nothing to compare")
    try:  # refuse an adapter this analysis cannot read before anything is built
        lora = LoraAdapter(adapter) if adapter is not None else None
    except AdapterError as err:
        raise BuildError(f"--b {variant_b}: {err}") from None
    params = {"experiment": exp.name, "a": variant_a, "b": variant_b, "vectors": [v.ref for v in vector_sets],
              "method": method, "top_k": top_k, "filter_tokens": filter_tokens, "singular_k": singular_k}
    spec = BuildSpec(name=names.weights(exp.name, variant_a, variant_b), kind="weights", builder=BUILDER,
                     code_version=CODE_VERSION, params=params,
                     parents={f"vectors{i}": v.ref for i, v in enumerate(vector_sets)}, identity=identity)

    def produce(writer: Any) -> None:
        from transforms.diffing import TensorReader

        folder_a = checkpoint_dir(a)
        base = TensorReader(folder_a)
        other = lora if lora is not None else TensorReader(checkpoint_dir(b))
        tables = weight_tables(store, base, other, folder_a, vector_sets, method, top_k, filter_tokens, singular_k)
        pair = {"variant_a": variant_a, "variant_b": variant_b}
        for name in ("layers", "directions"):
            tables[name] = [{**pair, **r} for r in tables[name]]
        for name, rows in tables.items():
            if rows or name == "data":  # an empty table has no schema to publish
                writer.write_table(rows, table=name)
        top = sorted(tables["layers"], key=lambda r: -r["diff_norm"])[:3]
        writer.summary.update({"params": len(tables["data"]), "top_layers": [r["layer"] for r in top],
                               "adapter": adapter is not None, "singular_directions": len(tables["directions"])})

    return store.build(spec, produce, force=force)


def weight_tables(store: Store, base: Any, other: Any, folder_a: Path, vector_sets: list, method: str,
                  top_k: int, filter_tokens: bool, singular_k: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The tables of the module docstring, by name, from streamed tensors."""
    import math

    from transforms.diffing import diff_norms
    from transforms.diffing import logit_lens_many, read_final_norm, unembedding_name

    from transforms.models import ModelDims, load_config, load_tokenizer

    from builders.stages.vectors import load_vectors

    rows, directions, singular = diff_norms(base, other, singular_k)
    by_layer: dict[int, float] = {}
    for r in rows:
        if r["layer"] is not None:
            by_layer[r["layer"]] = by_layer.get(r["layer"], 0.0) + r["diff_norm"] ** 2
    layer_rows = [{"layer": k, "diff_norm": math.sqrt(v),
                   "residual_direction_norm": float(directions[k].norm()) if k in directions else 0.0}
                  for k, v in sorted(by_layer.items())]
    config = load_config(str(folder_a))  # the folder already is the revision's files
    tokenizer = load_tokenizer(str(folder_a))
    unembed = base.read(unembedding_name(base))
    norm = read_final_norm(base, config)
    directions = {k: d for k, d in directions.items() if float(d.norm()) > 0}  # unchanged layers: no direction
    svd_rows = [{"layer": layer, "matrix": matrix, "index": i, "singular_value": sigma, "energy_share": share,
                 "vector": vec.tolist()}
                for (layer, matrix), found in sorted(singular.items()) for i, (sigma, share, vec) in enumerate(found)]

    keyed = [({"layer": layer}, directions[layer]) for layer in sorted(directions)]
    keyed += [({"layer": layer, "matrix": matrix, "index": i}, vec)
              for (layer, matrix), found in sorted(singular.items()) for i, (_, _, vec) in enumerate(found)]
    lenses = logit_lens_many([vec for _, vec in keyed], unembed, norm, lambda i: tokenizer.decode([i]),
                             top_k, filter_tokens)
    lens_rows, svd_lens = [], []
    for (key, _), picked in zip(keyed, lenses):
        out = svd_lens if "matrix" in key else lens_rows
        out += [{**key, "direction": d, "rank": i, **p} for d, tokens in picked.items() for i, p in enumerate(tokens)]
    del unembed
    width = ModelDims.from_config(config).d_model
    svd_by_row: dict[tuple[str, int], dict[int, Any]] = {}  # (writer, index) -> {layer: direction}
    for (layer, matrix), found in singular.items():
        for i, (_, _, vec) in enumerate(found):
            svd_by_row.setdefault((matrix, i), {})[layer] = vec.numpy()
    align_rows, svd_align = [], []
    for v in vector_sets:
        vecs, meta = load_vectors(store, v, method)
        if vecs.shape[1] != width:
            raise BuildError(f"--vectors {v.ref}: width {vecs.shape[1]}, the models' d_model is {width}")
        layers = json.loads(meta.get("layers", "null")) or list(range(vecs.shape[0]))
        align_rows += _alignment(v, vecs, layers, method, {k: d.numpy() for k, d in directions.items()}, {})
        for (matrix, i), by_layer_vec in sorted(svd_by_row.items()):
            svd_align += _alignment(v, vecs, layers, method, by_layer_vec, {"matrix": matrix, "index": i})
    svd_align.sort(key=lambda r: (r["vectors"], r["layer"], r["matrix"], r["index"]))
    return {"data": rows, "layers": layer_rows, "logit_lens": lens_rows, "alignment": align_rows,
            "directions": svd_rows, "directions_lens": svd_lens, "directions_alignment": svd_align}


def _alignment(v: Any, vecs: Any, layers: list[int], method: str, directions: dict[int, Any],
               key: dict[str, Any]) -> list[dict[str, Any]]:
    """Cosine of each layer's direction with the vector set's vector at that layer, beside the
    random-direction baseline (seeded by layer)."""
    from transforms.diffing import cosine_by_layer, random_baseline

    config = f"{v.params['prompt_set']}/{v.params['variant']}/{v.params['position']}/{method}"
    return [{"layer": layer, **key, "vectors": v.ref, "method": method, "cosine": cos,
             **random_baseline(directions[layer], cos, seed=layer), "vector_config": config}
            for layer, cos in cosine_by_layer(directions, vecs, layers).items()]
