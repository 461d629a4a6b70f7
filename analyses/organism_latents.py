"""Seed 000 on the planted organism: are the crosscoder's B-specific latents the planted trait?

    python -m analyses.organism_latents --crosscoder crosscoder-demo-instruct-finetuned-... \\
        --vectors vectors-demo-instruct-optimism_instruction-response__-residual [--clamping clamping-...]

Two independent checks of what the crosscoder found between A (instruct) and B (the LoRA
organism):

1. **Geometry.** The top-N B-specific latents (tag ``b_only``, lowest ``dec_norm_diff``, Latent
   Scaling ν^ε < 0.5: the selection the clamping stage uses) — do their B decoder directions
   align with the trait vector extracted from the *instruct* model at the same layer more than
   N random active latents of the same crosscoder do (span share of the vector, permutation
   p), and more than random directions (|cos| 95th percentile)? See
   :mod:`transforms.dictionaries.alignment`.
2. **Behaviour** (when a clamping run is given): the trait and coherence deltas of zeroing those
   latents on B, next to the frequency-matched random-latent control.

Published as ``analysis-<crosscoder name>``: tables ``data`` (one row: the alignment and, when
present, the clamping deltas), ``latents`` (the selected latents' cosines), ``report.md``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

from builders.shared import names
from store import BuildResult, BuildSpec, Store

from builders.shared.common import BuildError

from analyses.cli import analysis_parser, run

log = logging.getLogger(__name__)

BUILDER = "analyses.organism_latents"
CODE_VERSION = "1"


def organism_latents(store: Store, crosscoder: str, vectors: str, *, method: str = "mean_diff", top: int = 8,
                     clamping: str | None = None, n_random: int = 1000, seed: int = 0,
                     force: bool = False) -> BuildResult:
    """Publish the geometry (and behaviour) checks for one crosscoder version."""
    cc = store.resolve(crosscoder)
    if cc.kind != "crosscoder":
        raise ValueError(f"--crosscoder {cc.ref} is a {cc.kind} dataset")
    vec = store.resolve(vectors)
    clamp = store.resolve(clamping) if clamping else None
    params = {"method": method, "top": top, "n_random": n_random, "seed": seed}
    parents = {"crosscoder": cc.ref, "vectors": vec.ref, **({"clamping": clamp.ref} if clamp else {})}
    spec = BuildSpec(name=names.analysis(cc.name), kind="analysis", builder=BUILDER, code_version=CODE_VERSION,
                     params=params, parents=parents, identity={})

    def produce(writer: Any) -> None:
        row, latents = alignment_row(store, cc, vec, method, top, n_random, seed)
        if clamp is not None:
            row.update(clamping_deltas(store.read_table(clamp).to_dicts()))
        writer.write_table([row])
        writer.write_table(latents, table="latents")
        writer.write_bytes("report.md", report(cc, vec, row).encode())
        writer.summary.update({k: row[k] for k in ("span_fraction", "null_span_mean", "p_value",
                                                   "mean_abs_cosine", "pool_mean_abs_cosine")})
        writer.summary.update({k: v for k, v in row.items() if k.startswith("zero_")})

    return store.build(spec, produce, force=force)


def most_b_specific(rows: list[dict[str, Any]], n: int) -> tuple[list[int], str]:
    """The latents to test: the ``b_only`` ones with ν^ε < 0.5 (the clamping stage's
    ``--top-b-only`` rule) when any qualify, else the ``n`` active latents with the lowest
    dec_norm_diff (the most B-leaning the crosscoder has; their tags say how far from B-only)."""
    from builders.stages.clamping import top_b_only

    try:
        return top_b_only(rows, n), "b_only"
    except BuildError:
        active = sorted((r for r in rows if r.get("n_active")), key=lambda r: (r["dec_norm_diff"], r["latent"]))
        if not active:
            raise BuildError("the crosscoder has no active latent") from None
        return [int(r["latent"]) for r in active[:n]], "lowest_dec_norm_diff"


def alignment_row(store: Store, cc: Any, vec: Any, method: str, top: int, n_random: int,
                  seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import numpy as np

    from transforms.dictionaries import latent_alignment

    from builders.stages.crosscoder import load_crosscoder_version
    from builders.stages.vectors import load_vectors

    layer = int(cc.params["layer"])
    vectors_LD, _ = load_vectors(store, vec, method)
    if layer >= len(vectors_LD):
        raise ValueError(f"{vec.ref} has {len(vectors_LD)} layers, the crosscoder reads layer {layer}")
    rows = store.read_table(cc).to_dicts()
    chosen, selection = most_b_specific(rows, top)
    pool = [int(r["latent"]) for r in rows if r.get("n_active")]
    model = load_crosscoder_version(store, cc)
    decoder_b = model.decoder.weight[1].detach().double().numpy()
    vector = vectors_LD[layer].astype(np.float64)
    result = latent_alignment(decoder_b, vector, chosen, pool, n_random=n_random, seed=seed)
    # a shift B adds everywhere can sit in the decoder biases rather than in any latent
    bias = model.decoder.bias.detach().double().numpy()
    bias_diff = (bias[1] / float(model.input_scale[1])) - (bias[0] / float(model.input_scale[0]))
    by_latent = {int(r["latent"]): r for r in rows}
    latents = [{**r, **{k: by_latent[r["latent"]].get(k) for k in ("tag", "dec_norm_diff", "nu_error", "frequency")}}
               for r in result.rows()]
    row = {"layer": layer, "vectors": vec.ref, "method": method, "selection": selection, "n_selected": len(chosen),
           "pool": len(pool), "b_only_latents": sum(r["tag"] == "b_only" for r in rows),
           "min_dec_norm_diff": min(r["dec_norm_diff"] for r in rows),
           "mean_abs_cosine": result.mean_abs_cosine, "pool_mean_abs_cosine": result.pool_mean_abs_cosine,
           "random_direction_abs_cosine_p95": result.random_direction_abs_cosine_p95,
           "span_fraction": result.span_fraction, "null_span_mean": result.null_span_mean,
           "null_span_p95": result.null_span_p95, "p_value": result.p_value,
           "bias_difference_cosine": float(bias_diff @ vector / (np.linalg.norm(bias_diff) * np.linalg.norm(vector)))}
    return row, latents


def clamping_deltas(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The zero-ablation rows of the chosen latents and of the random control (``control``
    column of a clamping run): trait and coherence deltas against the unclamped baseline."""
    out: dict[str, Any] = {}
    for row in rows:
        if row.get("control") == "baseline":
            out["baseline_trait_mean"] = row.get("trait_mean")
            out["baseline_coherence_mean"] = row.get("coherence_mean")
        elif row.get("mode") == "zero":
            side = row["control"]
            out[f"zero_{side}_trait_delta"] = row.get("delta")
            out[f"zero_{side}_coherence_delta"] = row.get("coherence_delta")
            out[f"zero_{side}_trait_mean"] = row.get("trait_mean")
    return out


def report(cc: Any, vec: Any, row: dict[str, Any]) -> str:
    aligned = row["p_value"] < 0.05
    picked = ("the b_only latents with nu_error < 0.5" if row["selection"] == "b_only" else
              f"no latent is b_only (lowest dec_norm_diff {row['min_dec_norm_diff']:.3f}), so the "
              f"{row['n_selected']} most B-leaning active latents (lowest dec_norm_diff)")
    lines = [f"# B-specific latents of {cc.ref}", "",
             f"Layer {row['layer']}; trait vector {vec.ref} ({row['method']}); {picked}, against "
             f"{row['pool']} active latents.", "",
             f"- share of the trait vector in their decoder span: {row['span_fraction']:.3f} "
             f"(random subsets of the same size: mean {row['null_span_mean']:.3f}, p95 {row['null_span_p95']:.3f}; "
             f"permutation p = {row['p_value']:.3g})",
             f"- mean |cos| with the vector: {row['mean_abs_cosine']:.3f} (other active latents "
             f"{row['pool_mean_abs_cosine']:.3f}; random directions p95 {row['random_direction_abs_cosine_p95']:.3f})",
             f"- cosine of the decoder-bias difference (B - A, raw units) with the vector: "
             f"{row['bias_difference_cosine']:+.3f}",
             f"- verdict: {'aligned beyond chance' if aligned else 'NOT aligned beyond chance (negative result)'}"]
    if "zero_chosen_trait_delta" in row:
        lines += ["", "Zeroing them on B (trait judge, coherence judge; deltas vs the unclamped B):",
                  f"- chosen latents: trait {_fmt(row.get('zero_chosen_trait_delta'))}, "
                  f"coherence {_fmt(row.get('zero_chosen_coherence_delta'))}",
                  f"- frequency-matched random latents: trait {_fmt(row.get('zero_random_trait_delta'))}, "
                  f"coherence {_fmt(row.get('zero_random_coherence_delta'))}"]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def build_parser() -> argparse.ArgumentParser:
    parser = analysis_parser("python -m analyses.organism_latents", __doc__.splitlines()[0])
    parser.add_argument("--crosscoder", required=True, help="crosscoder dataset (A = instruct, B = the organism)")
    parser.add_argument("--vectors", required=True, help="vectors dataset of the trait (one vector per layer)")
    parser.add_argument("--method", default="mean_diff")
    parser.add_argument("--top", type=int, default=8, help="how many B-specific latents")
    parser.add_argument("--clamping", help="clamping dataset of those latents on B (optional)")
    parser.add_argument("--n-random", type=int, default=1000)
    return parser


def main(args: argparse.Namespace) -> int:
    from builders.shared.common import report as print_report

    store = Store(args.store) if args.store else Store()
    print_report(organism_latents(store, args.crosscoder, args.vectors, method=args.method, top=args.top,
                                  clamping=args.clamping, n_random=args.n_random, force=args.force))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
