"""Extract trait vectors from contrasting responses' activations, every layer at once.

    python -m builders.vectors --matrix                    # the experiment's extraction matrix
    python -m builders.vectors --prompts sycophancy_natural --variant base --position "response[:5]" \\
        --methods mean_diff,probe,pca,gradient,random

For each config: responses → activations (built if missing) → [``--vetted``: only the
responses whose judgments pass the filters, see :mod:`builders.stages.vector_vetting`] → a seeded
train/val split by prompt group (a pair id keeps a pair together, a prompt id keeps all
rollouts of a prompt together), stratified by polarity (stored as ids) → vectors per method
on the train split (the probe cross-validates its penalty over the same prompt groups) → an
evaluation table per layer and method on the val split, ``small_sample`` where fewer than 10
responses were held out, ``info`` the method's per-layer diagnostics as JSON (the probe's C
and how it was chosen). Vectors are stored in safetensors (``vectors/<method>.safetensors``,
tensor ``vectors`` [layer, d_model] float32) with the model, layer convention, position,
component, method, norms, parents and per-layer ``info`` in metadata.
Output dataset: ``vectors-<experiment>-<variant>-<prompt set>-<position>-<component>``,
with ``-vetted`` appended for ``--vetted`` (the judgments version is then a parent).
"""
from __future__ import annotations

import json
import math
import logging
from typing import Any

from store import BuildResult, BuildSpec, Manifest, Store

from builders.stages.activations import capture_activations
from builders.shared import names
from builders.shared.catalog import Catalog, ExtractionConfig
from builders.shared.common import BuildError
from builders.stages.responses import generate_responses
from builders.stages.vector_vetting import Vetting, resolve_judgments, vet_samples

log = logging.getLogger(__name__)

BUILDER = "builders.vectors"
CODE_VERSION = "2"  # 2: prompt-grouped stratified split, centred probe with grouped-CV C, --vetted
ALL_METHODS = ("mean_diff", "probe", "gradient", "pca", "random")
METHOD_VERSIONS = {"gradient": 2}


def finite_json(obj: Any) -> str:
    """JSON with non-finite floats as null: ``NaN`` is not JSON, and DuckDB's ``json_extract``
    refuses it."""
    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), allow_nan=False)


def extract_vectors(
    store: Store,
    catalog: Catalog,
    config: ExtractionConfig,
    experiment: str | None = None,
    component: str = "residual",
    val_fraction: float = 0.2,
    seed: int = 0,
    generation: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
    vetted: bool = False,
    vet_trait_threshold: float = 50.0,
    vet_coherence_floor: float = 50.0,
    judgments: str | None = None,
    replay_from: str | None = None,
) -> BuildResult:
    """Build one extraction config (all its methods) into one vectors version. ``vetted``:
    only responses whose judgments (``judgments``, default the latest of the config's)
    pass: positives trait ≥ ``vet_trait_threshold``, negatives ≤, coherence ≥ the floor.
    ``replay_from``: the variant's activations over variant A's responses (name suffix
    ``-replay_<A>``): what differs is then the model's representation, not its answers."""
    from transforms.sequences import parse_position

    exp = catalog.experiment(experiment)
    unknown = [m for m in config.methods if m not in ALL_METHODS]
    if unknown:
        raise BuildError(f"--methods: unknown method(s) {', '.join(unknown)} (known: {', '.join(ALL_METHODS)})")
    if not 0 < val_fraction < 1:
        raise BuildError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    try:
        pos = parse_position(config.position)
    except ValueError as err:
        raise BuildError(f"--position: {err}") from None
    vetting = Vetting(vet_trait_threshold, vet_coherence_floor, judgments) if vetted else None
    if vetting is not None:
        vetting.check()  # before any generation: a bad threshold costs nothing
    if replay_from and vetted:  # the judgments would be of A's responses, not the variant's
        raise BuildError("--vetted and --replay-from cannot be combined")
    generate_responses(store, catalog, replay_from or config.variant, config.prompt_set, exp.name, generation,
                       quiet=quiet)
    acts = capture_activations(store, catalog, config.variant, config.prompt_set, str(pos), "all", component,
                               exp.name, replay_from=replay_from, quiet=quiet).manifest
    params = {"experiment": exp.name, "variant": config.variant, "prompt_set": config.prompt_set,
              "position": str(pos), "component": component, "methods": sorted(config.methods),
              "val_fraction": val_fraction, "seed": seed}
    # methods whose output changed after CODE_VERSION 2, marked only where used, so the catalog's
    # versions keep their ids: gradient 2 = closed-form shrinkage LDA (was an Adam ascent)
    changed = {m: v for m, v in METHOD_VERSIONS.items() if m in config.methods}
    if changed:
        params["method_versions"] = changed
    if replay_from:  # only then, so other version ids stay as they were
        params["replay_from"] = replay_from
    parents = {"activations": acts.ref}
    judged = None
    if vetting is not None:
        judged = resolve_judgments(store, vetting, exp.name, config.variant, config.prompt_set, acts)
        params["vetting"] = vetting.params()
        parents["judgments"] = judged.ref  # the judgments read enter the version id
    spec = BuildSpec(name=names.vectors(exp.name, config.variant, config.prompt_set, pos.slug, component, vetted,
                                        replay_from),
                     kind="vectors", builder=BUILDER, code_version=CODE_VERSION, params=params,
                     parents=parents, identity=dict(acts.identity))
    return store.build(spec, lambda writer: _extract(store, writer, acts, params, vetting, judged), force=force)


def _extract(store: Store, writer: Any, acts_manifest: Manifest, params: dict[str, Any],
             vetting: Vetting | None = None, judged: Manifest | None = None) -> None:
    import numpy as np
    from safetensors.numpy import save

    from transforms.vectors import SMALL_SAMPLE
    from transforms.vectors import evaluate, extract, split_train_val

    table = store.read_table(acts_manifest).sort("sample")
    acts = store.open_array(acts_manifest, "acts")
    layers = list(acts.attrs["layers"])
    acts_NLD = acts[:]
    polarity = table["polarity"].to_list()
    if set(polarity) - {"pos", "neg"}:
        raise BuildError(f"{acts_manifest.ref}: vectors need a trait prompt set with pos/neg rows")
    keep = ~np.isnan(acts_NLD).any(axis=(1, 2))  # empty spans (e.g. response[:5] of an empty response)
    if not keep.all():
        log.warning("%d samples have an empty %s span and are left out", int((~keep).sum()), params["position"])
    prompt_ids = table["prompt_id"].to_list()
    sample_ids = [f"{p}:{r}" for p, r in zip(prompt_ids, table["rollout"].to_list())]
    pair_ids = table["pair_id"].to_list()
    labels = np.array([1 if p == "pos" else 0 for p in polarity], dtype=np.int64)
    if vetting is not None and judged is not None:
        passed, writer.summary["vetting"] = vet_samples(store, judged, sample_ids, polarity, vetting,
                                                        usable=keep.tolist())
        keep &= np.asarray(passed, dtype=bool)
    index = [i for i in range(len(sample_ids)) if keep[i]]
    if len({labels[i] for i in index}) < 2:
        raise BuildError(f"{acts_manifest.ref}: both polarities are needed, found only one")
    # Units: the pair id, else the prompt id (rollouts of one prompt are near copies: split
    # across train and val they leak the prompt); stratified by polarity.
    train_ids, val_ids = split_train_val([sample_ids[i] for i in index], [pair_ids[i] for i in index],
                                         params["val_fraction"], params["seed"],
                                         labels=labels[index], groups=[prompt_ids[i] for i in index])
    position_of = {sid: i for i, sid in enumerate(sample_ids)}
    train = [position_of[s] for s in train_ids]
    val = [position_of[s] for s in val_ids]

    evaluation = []
    for method in params["methods"]:
        result = extract(method, acts_NLD[train], labels[train], pair_ids=[pair_ids[i] for i in train],
                         seed=params["seed"], groups=[prompt_ids[i] for i in train])
        vectors_LD = np.asarray(result.vectors_LD, dtype=np.float32)
        rows = evaluate(vectors_LD, acts_NLD[train], labels[train], acts_NLD[val], labels[val])
        for row, layer, info in zip(rows, layers, result.info):
            evaluation.append({**row, "layer": layer, "method": method, "info": finite_json(info)})
        metadata = {
            "model_id": str(acts_manifest.identity.get("model_id")),
            "model_revision": str(acts_manifest.identity.get("model_revision")),
            "layer_convention": "layer k = output of decoder block k = hidden_states[k+1]",
            "layers": json.dumps(layers), "position": params["position"], "component": params["component"],
            "method": method, "norms": json.dumps([float(n) for n in np.linalg.norm(vectors_LD, axis=-1)]),
            "parents": json.dumps({"activations": acts_manifest.ref,
                                   **({"judgments": judged.ref} if judged is not None else {})}),
            "variant": params["variant"],
            "prompt_set": params["prompt_set"], "info": finite_json(result.info),
        }
        writer.write_bytes(f"vectors/{method}.safetensors", save({"vectors": vectors_LD}, metadata=metadata))
    writer.write_table(evaluation)
    split_rows = [{"sample_id": s, "split": "train"} for s in train_ids] + [{"sample_id": s, "split": "val"} for s in val_ids]
    writer.write_table(split_rows, table="split")
    best = {}
    for method in params["methods"]:
        rows = [r for r in evaluation if r["method"] == method]
        top = max(rows, key=lambda r: (r.get("val_auroc") or 0.0))
        best[method] = {"layer": top["layer"], "val_auroc": top.get("val_auroc"),
                        "small_sample": top["small_sample"]}
    writer.summary.update({"train": len(train), "val": len(val), "layers": layers, "best_by_val_auroc": best})
    if len(val) < SMALL_SAMPLE:
        log.warning("only %d validation responses: validation metrics are flagged small_sample", len(val))


def load_vectors(store: Store, ref: str | Manifest, method: str) -> tuple[Any, dict[str, str]]:
    """``(vectors_LD numpy float32, metadata)`` of one method of a vectors version."""
    from safetensors.numpy import load

    manifest = store.resolve(ref) if isinstance(ref, str) else ref
    path = f"vectors/{method}.safetensors"
    if path not in manifest.files:
        have = sorted(p.split("/")[-1].removesuffix(".safetensors") for p in manifest.files if p.startswith("vectors/"))
        raise BuildError(f"{manifest.ref} has no {method!r} vectors (methods: {', '.join(have)})")
    data = store.read_bytes(manifest, path)
    return load(data)["vectors"], safetensors_metadata(data)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """``__metadata__`` of a safetensors file's bytes (header: u64 length + JSON)."""
    length = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8:8 + length]).get("__metadata__", {}))
