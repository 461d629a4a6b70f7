"""Compare two variants against trait vectors on the same tokens (seed 001 phase 4 / persona shift).

    python -m builders.compare --a instruct --b finetuned --prompts sycophancy_instruction \\
        --vectors vectors-demo-instruct-sycophancy_instruction-response__-residual [--controls REF ...] [--judge-responses --trait-judge sentiment]

B replays A's responses (as in :mod:`builders.stages.similarity`); both are mean-pooled over
``--position`` at every layer the vectors have. Per vector set and layer: the cosine of
the mean activation diff ``B − A`` with the trait vector; the finetuning shift (mean of the
per-sample projection differences onto ``v̂``); paired and unpaired Cohen's d of the
projections; specificity against ``--random`` seeded random unit directions (share at
least as aligned) and against the ``--controls`` vector sets (other traits).
``--judge-responses`` also judges both variants' own responses, so the shift sits next to B's judged trait
expression. ``report.md`` says, with the numbers, whether B moved toward the trait.
Output dataset: ``compare-<experiment>-<A>-<B>-<set>``.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Store
from transforms.batching import parse_batch_size, with_backoff

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.shared.judges import JudgeChoice
from builders.stages.replay import replay_batch_size, replay_source
from builders.stages.vectors import load_vectors

log = logging.getLogger(__name__)

BUILDER = "builders.compare"
CODE_VERSION = "3"  # 3: the prompts version the replay reads is a parent


def _vector_layers(store: Store, ref: str, method: str) -> tuple[Any, dict[int, Any], dict[str, Any]]:
    manifest = store.resolve(ref)
    if manifest.kind != "vectors":
        raise BuildError(f"{manifest.ref} is a {manifest.kind} dataset, not vectors")
    vecs, meta = load_vectors(store, manifest, method)
    layers = json.loads(meta.get("layers", "null")) or list(range(vecs.shape[0]))
    return manifest, {int(k): vecs[i] for i, k in enumerate(layers)}, meta


def judged_means(store: Store, ref: str | None) -> float | None:
    """Mean trait score of the judgments version ``ref`` (exactly the one recorded as parent)."""
    if ref is None:
        return None
    scores = [r["trait_score"] for r in store.read_table(store.resolve(ref)).to_dicts() if r["trait_score"] is not None]
    return sum(scores) / len(scores) if scores else None


def compare_rows(acts_a: Any, acts_b: Any, layers: list[int], vector_sets: list[tuple[Any, dict[int, Any]]],
                 controls: list[tuple[Any, dict[int, Any]]], n_random: int, seed: int) -> tuple[list, list]:
    """(per vector set and layer rows, per control rows)."""
    import numpy as np

    from transforms.diffing import (cohens_d_paired, cohens_d_unpaired, diff_cosine, projections, random_directions, random_specificity)

    randoms = random_directions(n_random, acts_a.shape[-1], seed) if n_random else None
    rows, control_rows = [], []
    for j, layer in enumerate(layers):
        a, b = acts_a[:, j], acts_b[:, j]
        diff = b.astype(np.float64).mean(0) - a.astype(np.float64).mean(0)
        for manifest, by_layer in vector_sets:
            if layer not in by_layer:
                continue
            v = by_layer[layer]
            pa, pb = projections(a, v), projections(b, v)
            row = {"vectors": manifest.ref, "trait_set": manifest.params.get("prompt_set"), "layer": layer,
                   "diff_cosine": diff_cosine(a, b, v), "shift": float((pb - pa).mean()),
                   "proj_a": float(pa.mean()), "proj_b": float(pb.mean()),
                   "d_paired": cohens_d_paired(pa, pb), "d_unpaired": cohens_d_unpaired(pa, pb),
                   "diff_norm": float(np.linalg.norm(diff))}
            if randoms is not None:
                observed, random_mean, share = random_specificity(diff, v, randoms)
                row.update({"random_mean_abs_cos": random_mean, "random_share_as_aligned": share})
            cos_controls = []
            for control, c_layers in controls:
                if layer in c_layers:
                    cos = diff_cosine(a, b, c_layers[layer])
                    cos_controls.append(abs(cos))
                    control_rows.append({"vectors": manifest.ref, "control": control.ref, "layer": layer,
                                         "diff_cosine": cos})
            row["max_abs_control_cos"] = max(cos_controls) if cos_controls else None
            rows.append(row)
    return rows, control_rows


def shift_report(rows: list[dict[str, Any]], a: str, b: str, a_trait: float | None, b_trait: float | None) -> str:
    """A short markdown verdict per vector set, with the numbers."""
    lines = [f"# {b} vs {a}: trait projection shift", ""]
    for ref in sorted({r["vectors"] for r in rows}):
        mine = [r for r in rows if r["vectors"] == ref]
        positive = sum(r["shift"] > 0 for r in mine)
        top = max(mine, key=lambda r: abs(r["d_paired"]) if r["d_paired"] == r["d_paired"] else -1)
        verdict = ("moved toward the trait" if positive > len(mine) / 2 else "did NOT move toward the trait")
        lines += [f"## {ref}", "",
                  f"- {b} {verdict}: the projection shift is positive at {positive} of {len(mine)} layers.",
                  f"- Largest effect: layer {top['layer']}, shift {top['shift']:+.4g}, paired d {top['d_paired']:+.3f}, "
                  f"unpaired d {top['d_unpaired']:+.3f}, cos(B−A, v) {top['diff_cosine']:+.3f}"
                  + (f" (random directions as aligned: {top['random_share_as_aligned']:.1%})"
                     if top.get("random_share_as_aligned") is not None else ""), ""]
    if a_trait is not None or b_trait is not None:
        fmt = lambda x: "not judged" if x is None else f"{x:.1f}"  # noqa: E731
        lines += [f"Judged trait expression (own responses): {a} {fmt(a_trait)}, {b} {fmt(b_trait)}.", ""]
    return "\n".join(lines)


def compare_variants(
    store: Store,
    catalog: Catalog,
    variant_a: str,
    variant_b: str,
    prompt_set: str,
    vectors: Sequence[str],
    *,
    experiment: str | None = None,
    method: str = "mean_diff",
    controls: Sequence[str] = (),
    position: str = "response[:]",
    n_random: int = 1000,
    seed: int = 0,
    judges: JudgeChoice | None = None,
    generation: dict[str, Any] | None = None,
    batch_size: int | str = "auto",
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    from transforms.sequences import parse_position

    exp = catalog.experiment(experiment)
    catalog.variant(exp.name, variant_a), catalog.variant(exp.name, variant_b)  # unknown variant: error now
    if not vectors:
        raise BuildError("--vectors: give at least one vector set to compare against")
    try:
        batch_request = parse_batch_size(batch_size)
    except ValueError as err:
        raise BuildError(f"--batch-size: {err}") from None
    try:
        pos = parse_position(position)
    except ValueError as err:
        raise BuildError(f"--position: {err}") from None
    vector_sets = [_vector_layers(store, ref, method)[:2] for ref in vectors]
    control_sets = [_vector_layers(store, ref, method)[:2] for ref in controls]
    source = replay_source(store, catalog, exp.name, variant_a, variant_b, prompt_set, generation, quiet)
    # the replay reads the prompt set's style from the responses' own prompts version
    parents = {"responses": source.responses.ref, "prompts": source.responses.parents["prompts"],
               **{f"vectors{i}": m.ref for i, (m, _) in enumerate(vector_sets)},
               **{f"control{i}": m.ref for i, (m, _) in enumerate(control_sets)}}
    if judges is not None:
        from builders.stages.judgments import judge_responses

        for variant in (variant_a, variant_b):
            parents[f"judgments_{variant}"] = judge_responses(store, catalog, variant, prompt_set, exp.name, judges,
                                                              generation=generation, quiet=quiet).manifest.ref
    params = {"experiment": exp.name, "a": variant_a, "b": variant_b, "prompt_set": prompt_set, "method": method,
              "position": str(pos), "random": n_random, "seed": seed,
              "judges": None if judges is None else judges.as_dict()}
    spec = BuildSpec(name=names.compare(exp.name, variant_a, variant_b, prompt_set), kind="compare", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents=parents,
                     identity=source.identity)

    def produce(writer: Any) -> None:
        import numpy as np

        from transforms.capture import capture_pooled

        loaded_a, loaded_b, sequences = source.load(store, catalog)
        layers = sorted(set().union(*(set(v) for _, v in vector_sets)) & set(range(loaded_a.n_layers)))
        width = {len(next(iter(v.values()))) for _, v in vector_sets + control_sets}
        if width != {loaded_a.d_model}:
            raise BuildError(f"vector widths {sorted(width)} do not match d_model {loaded_a.d_model} of {variant_a}")
        def capture_both(n: int) -> tuple[Any, Any]:
            # the capture sorts by length, longest first, so a batch too large fails at once:
            # the pair of captures is the retried piece (both sides at one size, as from the start)
            return tuple(capture_pooled(loaded.model, [s.side(side) for s in sequences], pos, layers, batch_size=n,
                                        on_empty="nan") for side, loaded in (("a", loaded_a), ("b", loaded_b)))

        (acts_a, acts_b), used = with_backoff(capture_both, replay_batch_size(batch_request, loaded_a, loaded_b, sequences),
                                              what="compare: activation capture")
        keep = ~(np.isnan(acts_a).any(axis=(1, 2)) | np.isnan(acts_b).any(axis=(1, 2)))
        rows, control_rows = compare_rows(acts_a[keep], acts_b[keep], layers, vector_sets, control_sets, n_random, seed)
        writer.write_table(rows)
        if control_rows:
            writer.write_table(control_rows, table="controls")
        a_mean = judged_means(store, parents.get(f"judgments_{variant_a}"))
        b_mean = judged_means(store, parents.get(f"judgments_{variant_b}"))
        text = shift_report(rows, variant_a, variant_b, a_mean, b_mean)
        writer.write_bytes("report.md", text.encode())
        writer.summary.update({"samples": int(keep.sum()), "a_trait": a_mean, "b_trait": b_mean,
                               "batch_sizes": [used]})

    return store.build(spec, produce, force=force)
