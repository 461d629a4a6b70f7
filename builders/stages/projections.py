"""Per-token projections of a prompt set's activations onto many trait vectors (seed 004).

    python -m builders.projections --variant instruct --prompts general \\
        --vectors vectors-demo-instruct-sycophancy_instruction-response__-residual:mean_diff --layers 9,12
    python -m builders.projections --variant instruct --prompts general --vectors <ref> --layers best+2
    python -m builders.projections ... --live        # scored inside the model while it generates

Stored mode reads per-token activations (``all[:]``, built if missing) and scores every
prompt and response token; live mode generates with :class:`transforms.capture.LiveProjector`
hooked in, so only scores leave the model (every token fed to the model: the prompt and
each generated token but the last). ``--layers``: explicit (``9,12``, ``30%-60%``) or
relative to each vector set's best steering layer (``best``, ``best+2``, ``best-1``: from
its steering runs at coherence ≥ ``--floor``). Scores: raw ``h·v̂``, cosine, centered by
the vector's stored centroid projection (``center_proj``), and ``‖h‖``.
Live generation batches (``--batch-size``, default the catalog's responses setting;
``auto`` is 8 on the CPU) are halved on out-of-memory (summary ``batch_sizes``).
Table: sample, prompt id, token index and text, prompt/response, layer, vector, scores.
Output dataset: ``projections-<experiment>-<variant>-<set>[-live]``.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store
from transforms.batching import parse_batch_size

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError, progress
from builders.shared.variants import variant_model
from builders.stages.responses import generate_responses, model_identity
from builders.stages.vectors import load_vectors

log = logging.getLogger(__name__)

BUILDER = "builders.projections"
CODE_VERSION = "4"  # 4: live scores float32 from the model dtype; 3: --layers best steering runs are parents; 2: live prompts in the set style
CPU_BATCH = 8  # live ``batch_size: auto`` off CUDA: the batch CPU builds always used
_RELATIVE = re.compile(r"^best([+-]\d+)?$")


def parse_vector_spec(store: Store, spec: str) -> tuple[Manifest, str]:
    """``REF[:method]`` (default mean_diff) -> (vectors manifest, method)."""
    ref, _, method = spec.partition(":")
    manifest = store.resolve(ref)
    if manifest.kind != "vectors":
        raise BuildError(f"--vectors {spec}: {manifest.ref} is a {manifest.kind} dataset, not vectors")
    return manifest, method or "mean_diff"


def best_steering_layer(store: Store, vectors: Manifest, method: str, floor: float,
                        variant: str | None = None) -> tuple[int, list[Manifest]]:
    """The layer of the largest trait gain at coherence ≥ ``floor`` over this vector set's
    steering runs (those applied to ``variant`` when there are any), and the runs read."""
    runs = [store.latest(n) for n in store.datasets()]
    runs = [m for m in runs if m.kind == "steering" and m.params.get("method") == method
            and m.params.get("vectors", "").split("@")[0] == vectors.name]
    if any(m.params.get("application") == variant for m in runs):
        runs = [m for m in runs if m.params.get("application") == variant]
    best = None
    for latest in runs:
        for row in store.read_table(latest).to_dicts():
            if row["kind"] == "add" and row["layer"] is not None and row["delta"] is not None \
                    and (row["coherence_mean"] or 0) >= floor:
                gain = row["direction"] * row["delta"]
                if best is None or gain > best[0]:
                    best = (gain, row["layer"])
    if best is None:
        raise BuildError(f"--layers best: no steering run of {vectors.name} ({method}) reaches coherence ≥ {floor:g}; "
                         f"run python -m builders.steering first or give layers explicitly")
    return int(best[1]), runs


def resolve_layers(store: Store, spec: str, vector_sets: list[tuple[Manifest, str]], n_layers: int, floor: float,
                   variant: str | None = None) -> tuple[dict[tuple[str, str], list[int]], list[Manifest]]:
    """Layers per vector set: the same explicit list for all, or each one's ``best±k``; and
    the steering runs read to choose them (parents of what uses these layers)."""
    from transforms.capture import parse_layers

    m = _RELATIVE.match(spec.strip())
    out = {}
    read: dict[str, Manifest] = {}
    for manifest, method in vector_sets:
        if m:
            best, runs = best_steering_layer(store, manifest, method, floor, variant)
            read.update((r.ref, r) for r in runs)
            layer = best + int(m.group(1) or 0)
            if not 0 <= layer < n_layers:
                raise BuildError(f"--layers {spec}: layer {layer} for {manifest.name} is outside 0-{n_layers - 1}")
            out[(manifest.ref, method)] = [layer]
        else:
            try:
                out[(manifest.ref, method)] = parse_layers(spec, n_layers)
            except ValueError as err:
                raise BuildError(f"--layers: {err}") from None
    return out, sorted(read.values(), key=lambda r: r.ref)


def build_stacks(store: Store, vector_sets: list[tuple[Manifest, str]], layers_of: dict, d_model: int) -> list:
    """One :class:`VectorStack` per layer with every vector scored there (name ``<set>:<method>``)."""
    from transforms.capture import VectorStack

    per_layer: dict[int, list[tuple[str, Any, float]]] = {}
    for manifest, method in vector_sets:
        vecs, meta = load_vectors(store, manifest, method)
        if vecs.shape[1] != d_model:
            raise BuildError(f"--vectors {manifest.ref}: width {vecs.shape[1]}, the model's d_model is {d_model}")
        rows = json.loads(meta.get("layers", "null")) or list(range(vecs.shape[0]))
        centers = {(r["layer"]): r["center_proj"] for r in store.read_table(manifest).to_dicts() if r["method"] == method}
        name = f"{manifest.params.get('prompt_set', manifest.name)}:{method}"
        for layer in layers_of[(manifest.ref, method)]:
            if layer not in rows:
                raise BuildError(f"--vectors {manifest.ref} has no layer {layer}")
            per_layer.setdefault(layer, []).append((name, vecs[rows.index(layer)], float(centers.get(layer) or 0.0)))
    return [VectorStack.build(layer, vecs) for layer, vecs in sorted(per_layer.items())]


def _stored_rows(store: Store, acts_manifest: Manifest, stacks: list, decode: Any) -> list[dict[str, Any]]:
    from transforms.capture import project, score_rows

    array = store.open_array(acts_manifest, "acts")
    layer_pos = {int(k): j for j, k in enumerate(array.attrs["layers"])}
    rows = []
    for sample in store.read_table(acts_manifest).sort("sample").to_dicts():
        lo, hi = sample["token_start"], sample["token_end"]
        if hi == lo:
            continue
        block = array[lo:hi]  # [T, L, D]
        for stack in stacks:
            scores = project(block[:, layer_pos[stack.layer]], stack)
            for row in score_rows(f"{sample['prompt_id']}:{sample['rollout']}", sample["token_ids"], sample["span_start"],
                                  stack, scores, decode, sample["prompt_len"]):
                rows.append({"prompt_id": sample["prompt_id"], **row})
    return rows


def _live_rows(loaded: Any, prompt_rows: list[dict[str, Any]], style: str, stacks: list, gen: Any,
               quiet: bool) -> tuple[list[dict], list[int]]:
    """(score rows, batch sizes used). ``gen.batch_size`` ``auto`` is :data:`CPU_BATCH` off
    CUDA, else from the free memory; a generation batch that runs out of memory is redone
    at half the size, seeded as a run at that size from the start seeds it."""
    from transforms.batching import run_slices
    from transforms.batching import resolve_batch_size
    from transforms.sequences import generate_batch
    from transforms.capture import LiveProjector, score_rows

    from builders.stages.responses import format_row

    decode = lambda i: loaded.tokenizer.decode([i])  # noqa: E731
    prompts_all = [list(format_row(loaded.tokenizer, r["prompt"], r.get("system_prompt"), style).ids)
                   for r in prompt_rows]
    size = resolve_batch_size(parse_batch_size(gen.batch_size), loaded.model, max(map(len, prompts_all), default=1),
                              new_tokens=gen.max_new_tokens, cpu_batch=CPU_BATCH)
    rows: list[dict] = []
    bar = progress(len(prompt_rows), "live projections", quiet)

    def generate(lo: int, hi: int, size: int) -> None:
        batch, prompts = prompt_rows[lo:hi], prompts_all[lo:hi]
        projector = LiveProjector(stacks)  # a retry starts with empty scores
        with projector.attach(loaded.model):
            outs = generate_batch(loaded.model, loaded.tokenizer, prompts, gen, lo // size)
        width = max(len(p) for p in prompts)
        for i, (r, prompt, out) in enumerate(zip(batch, prompts, outs)):
            ids = prompt + list(out.response_ids)
            n = len(ids) - 1  # the last generated token is never fed back through the model
            for stack in stacks:
                raw, norms = projector.per_row(stack.layer, i)
                raw, norms = raw[width - len(prompt):][:n], norms[width - len(prompt):][:n]
                scores = {"raw": raw, "norm": norms, "cosine": raw / norms[:, None],
                          "centered": raw - stack.baselines_K[None, :]}
                for row in score_rows(f"{r['prompt_id']}:0", ids, 0, stack, scores, decode, len(prompt)):
                    rows.append({"prompt_id": r["prompt_id"], **row})
        bar.update(len(batch))

    try:
        used = run_slices(len(prompt_rows), size, generate, what="live projections")
    finally:
        bar.close()
    return rows, used


def build_projections(
    store: Store,
    catalog: Catalog,
    variant: str,
    prompt_set: str,
    vectors: Sequence[str],
    *,
    experiment: str | None = None,
    layers: str = "best",
    floor: float = 70.0,
    live: bool = False,
    generation: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    from builders.stages.activations import capture_activations
    from builders.shared.common import model_layer_count
    from builders.stages.prompts import ensure_prompt_set

    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)
    if not vectors:
        raise BuildError("--vectors: give at least one vector set (REF[:method])")
    vector_sets = [parse_vector_spec(store, spec) for spec in vectors]
    layers_of, steering = resolve_layers(store, layers, vector_sets,
                                         model_layer_count(entry.model.id, entry.model.revision), floor, variant)
    all_layers = sorted({k for ks in layers_of.values() for k in ks})
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "live": live,
              "vectors": [f"{m.ref}:{method}" for m, method in vector_sets],
              "layers": {f"{ref}:{method}": ks for (ref, method), ks in layers_of.items()}}
    parents = {**{f"vectors{i}": m.ref for i, (m, _) in enumerate(vector_sets)},
               **{f"steering{i}": m.ref for i, m in enumerate(steering)}}  # what chose the layers ("best")
    gen = None
    if live:
        from transforms.sequences import GenerationConfig

        defaults = {**catalog.stage_defaults("responses"), **{k: v for k, v in (generation or {}).items() if v is not None}}
        try:
            gen = GenerationConfig(**{k: defaults[k] for k in ("max_new_tokens", "temperature", "top_p", "seed",
                                                               "batch_size") if k in defaults})
            parse_batch_size(gen.batch_size)
        except (TypeError, ValueError) as err:
            raise BuildError(f"live generation settings: {err}") from None
        params["generation"] = gen.as_dict()
        parents["prompts"] = ensure_prompt_set(store, catalog, prompt_set).ref
    else:
        generate_responses(store, catalog, variant, prompt_set, exp.name, generation, quiet=quiet)
        acts = capture_activations(store, catalog, variant, prompt_set, "all[:]", ",".join(map(str, all_layers)),
                                   "residual", exp.name, per_token=True, force=False, quiet=quiet).manifest
        parents["activations"] = acts.ref
    spec = BuildSpec(name=names.projections(exp.name, variant, prompt_set, live),
                     kind="projections", builder=BUILDER, code_version=CODE_VERSION, params=params, parents=parents,
                     identity=model_identity(catalog, exp.name, variant, store))

    def produce(writer: Any) -> None:
        loaded = variant_model(store, entry)
        stacks = build_stacks(store, vector_sets, layers_of, loaded.d_model)
        if live:
            prompts = store.resolve(parents["prompts"])
            style = json.loads(store.read_bytes(prompts, "prompt_set.json"))["style"]  # as the responses builder
            rows, used = _live_rows(loaded, store.read_table(prompts).to_dicts(), style, stacks, gen, quiet)
            writer.summary["batch_sizes"] = used
        else:
            rows = _stored_rows(store, store.resolve(parents["activations"]), stacks,
                                lambda i: loaded.tokenizer.decode([i]))
        writer.write_table(rows)
        writer.summary.update({"tokens": len({(r["sample"], r["token_index"]) for r in rows}),
                               "layers": all_layers, "vectors": sorted({r["vector"] for r in rows}),
                               "device": loaded.device})

    return store.build(spec, produce, force=force)
