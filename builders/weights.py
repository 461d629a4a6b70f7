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
  random unit directions, and ``p_random``, the share at least as aligned).
Output dataset: ``weights-<experiment>-<A>-<B>``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Store

from .catalog import Catalog, Variant
from .common import BuildError, add_variant_pair_args, base_parser, open_store_and_catalog, report, run
from .responses import model_identity
from .variants import adapter_dir

log = logging.getLogger(__name__)

BUILDER = "builders.weights"
CODE_VERSION = "2"  # 2: random-direction baseline of the alignment


def checkpoint_dir(variant: Variant) -> Path:
    """A local folder with the variant's model safetensors (hub models: the local HF cache)."""
    from transforms.models import ModelLoadError, ModelRef, resolve_checkpoint

    ref = ModelRef(variant.model.id, variant.model.revision)
    where = resolve_checkpoint(ref)
    if Path(where).is_dir():
        return Path(where)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref.id, revision=ref.revision, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as err:  # offline, gated, missing: say which model
        raise ModelLoadError(f"variant {variant.name!r}: cannot get the safetensors of {ref.id}: {err}") from None


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
    force: bool = False,
) -> BuildResult:
    from transforms.weight_diff import LoraAdapter

    exp = catalog.experiment(experiment)
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
    identity = {"a": model_identity(catalog, exp.name, variant_a, store),
                "b": model_identity(catalog, exp.name, variant_b, store)}
    params = {"experiment": exp.name, "a": variant_a, "b": variant_b, "vectors": [v.ref for v in vector_sets],
              "method": method, "top_k": top_k, "filter_tokens": filter_tokens}
    spec = BuildSpec(name=f"weights-{exp.name}-{variant_a}-{variant_b}", kind="weights", builder=BUILDER,
                     code_version=CODE_VERSION, params=params,
                     parents={f"vectors{i}": v.ref for i, v in enumerate(vector_sets)}, identity=identity)

    def produce(writer: Any) -> None:
        from transforms.safetensors_stream import TensorReader

        folder_a = checkpoint_dir(a)
        base = TensorReader(folder_a)
        other = LoraAdapter(adapter) if adapter is not None else TensorReader(checkpoint_dir(b))
        rows, layer_rows, lens_rows, align_rows = weight_tables(
            store, base, other, folder_a, vector_sets, method, top_k, filter_tokens)
        writer.write_table(rows)
        writer.write_table([{"variant_a": variant_a, "variant_b": variant_b, **r} for r in layer_rows], table="layers")
        writer.write_table(lens_rows, table="logit_lens")
        if align_rows:
            writer.write_table(align_rows, table="alignment")
        top = sorted(layer_rows, key=lambda r: -r["diff_norm"])[:3]
        writer.summary.update({"params": len(rows), "top_layers": [r["layer"] for r in top],
                               "adapter": adapter is not None})

    return store.build(spec, produce, force=force)


def weight_tables(store: Store, base: Any, other: Any, folder_a: Path, vector_sets: list, method: str,
                  top_k: int, filter_tokens: bool) -> tuple[list, list, list, list]:
    """The four tables (see the module docstring) from streamed tensors."""
    import math

    from transformers import AutoConfig, AutoTokenizer

    from transforms.weight_diff import cosine_by_layer, diff_norms, random_baseline, final_norm_name, logit_lens, norm_kind, unembedding_name

    from .vectors import load_vectors

    rows, directions = diff_norms(base, other)
    by_layer: dict[int, float] = {}
    for r in rows:
        if r["layer"] is not None:
            by_layer[r["layer"]] = by_layer.get(r["layer"], 0.0) + r["diff_norm"] ** 2
    layer_rows = [{"layer": k, "diff_norm": math.sqrt(v),
                   "residual_direction_norm": float(directions[k].norm()) if k in directions else 0.0}
                  for k, v in sorted(by_layer.items())]
    config = AutoConfig.from_pretrained(folder_a)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    eps = float(getattr(text, "rms_norm_eps", None) or getattr(text, "layer_norm_eps", 1e-6))
    tokenizer = AutoTokenizer.from_pretrained(folder_a)
    unembed = base.read(unembedding_name(base))
    norm_name = final_norm_name(base)
    norm_weight = base.read(norm_name) if norm_name else None
    kind = norm_kind(str(getattr(text, "model_type", "")))
    lens_rows = []
    directions = {k: d for k, d in directions.items() if float(d.norm()) > 0}  # unchanged layers: no direction
    for layer in sorted(directions):
        lens = logit_lens(directions[layer], unembed, norm_weight, kind, eps, lambda i: tokenizer.decode([i]),
                          top_k, filter_tokens)
        for direction, picked in lens.items():
            lens_rows += [{"layer": layer, "direction": direction, "rank": i, **p} for i, p in enumerate(picked)]
    del unembed
    align_rows = []
    width = int(unembed_width) if (unembed_width := getattr(text, "hidden_size", None)) else None
    for v in vector_sets:
        vecs, meta = load_vectors(store, v, method)
        layers = json.loads(meta.get("layers", "null")) or list(range(vecs.shape[0]))
        if width is not None and vecs.shape[1] != width:
            raise BuildError(f"--vectors {v.ref}: width {vecs.shape[1]}, the models' d_model is {width}")
        for layer, cos in cosine_by_layer({k: d.numpy() for k, d in directions.items()}, vecs, layers).items():
            align_rows.append({"layer": layer, "vectors": v.ref, "method": method, "cosine": cos,
                               **random_baseline(directions[layer].numpy(), cos, seed=layer),
                               "vector_config": f"{v.params['prompt_set']}/{v.params['variant']}/{v.params['position']}/{method}"})
    return rows, layer_rows, lens_rows, align_rows


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.weights", "Weight diff norms, logit lens and trait alignment of two variants.")
    add_variant_pair_args(parser, "reference variant (e.g. base)",
                          "compared variant (e.g. instruct, or an adapter variant)")
    parser.add_argument("--vectors", action="append", default=[], metavar="REF", help="vector set to align (repeatable)")
    parser.add_argument("--method", default="mean_diff")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--no-token-filter", action="store_true", help="keep rare / garbage tokens in the logit lens")
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    report(analyze_weights(store, catalog, args.a, args.b, experiment=args.experiment, vectors=args.vectors,
                           method=args.method, top_k=args.top_k, filter_tokens=not args.no_token_filter,
                           force=args.force))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
