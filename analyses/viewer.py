"""The trait-dynamics viewer: one self-contained HTML page built from store tables.

    python -m analyses.viewer --projections projections-demo-instruct-general

Shows per-token lines per trait vector for one prompt and response (modes raw / cosine /
centered, a smoothing window, the token under the cursor, the prompt/response boundary);
a prompt picker for hundreds of prompts (search, filter by note or label, pagination);
steering heatmaps (layer × perturbation ratio: delta, coherence) and the steered responses
with their scores. No network, no server: the data is embedded in the page. Published as
``viewer-<projections dataset>`` (``index.html``); the command prints where to open it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from builders.shared import names
from store import BuildResult, BuildSpec, Manifest, Store

from .lineage import prompts_of

log = logging.getLogger(__name__)

BUILDER = "analyses.viewer"
CODE_VERSION = "2"  # 2: prompts pinned to the projections' lineage and recorded as a parent
TEMPLATE = Path(__file__).with_name("viewer_template.html")


def _r(value: Any) -> float | None:
    return None if value is None or value != value else round(float(value), 4)


def sample_data(store: Store, projections: Manifest,
                prompts: Manifest | None) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Per sample: tokens, boundary, prompt metadata (from exactly ``prompts``) and
    scores[layer][vector][mode]."""
    import polars as pl

    frame = store.read_table(projections).sort(["sample", "layer", "vector", "token_index"])
    meta: dict[str, dict[str, Any]] = {}
    if prompts is not None:
        for row in store.read_table(prompts).to_dicts():
            meta[str(row["prompt_id"])] = row
    samples = []
    for (sample,), rows in frame.group_by("sample", maintain_order=True):
        first_layer = rows.filter(pl.col("layer") == rows["layer"][0])
        one_vector = first_layer.filter(pl.col("vector") == first_layer["vector"][0])
        token_index = one_vector["token_index"].to_list()
        response = one_vector["is_response"].to_list()
        boundary = next((i for i, r in enumerate(response) if r), len(response))
        scores: dict[str, dict[str, dict[str, list]]] = {}
        for (layer, vector), part in rows.group_by(["layer", "vector"], maintain_order=True):
            scores.setdefault(str(layer), {})[vector] = {
                mode: [_r(v) for v in part[column].to_list()]
                for mode, column in (("raw", "score"), ("cosine", "cosine"), ("centered", "centered"))}
        prompt_id = str(rows["prompt_id"][0])
        info = meta.get(prompt_id, {})
        note = info.get("note") or info.get("polarity") or ""
        samples.append({"id": sample, "prompt_id": prompt_id, "note": note, "prompt": info.get("prompt") or "",
                        "tokens": one_vector["token"].to_list(), "token_index": token_index, "boundary": boundary,
                        "scores": scores})
    samples.sort(key=lambda s: (0, int(s["prompt_id"]), s["id"]) if s["prompt_id"].isdigit() else (1, 0, s["id"]))
    layers = sorted(frame["layer"].unique().to_list())
    vectors = sorted(frame["vector"].unique().to_list())
    return samples, layers, vectors


def steering_runs(store: Store) -> list[Manifest]:
    """The latest version of every steering dataset: what the page shows, resolved once."""
    latest = [store.latest(name) for name in store.datasets()]
    return [m for m in latest if m.kind == "steering"]


def steering_data(store: Store, versions: Sequence[Manifest],
                  limit: int = 2000) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Heatmaps (layer × perturbation ratio, 2 significant digits) and steered responses of
    exactly the steering versions ``versions``."""
    heatmaps, steered = [], []
    for manifest in versions:
        runs = [r for r in store.read_table(manifest).to_dicts()
                if r["kind"] == "add" and r["layer"] is not None and r["perturbation_ratio"] is not None]
        if runs:
            layers = sorted({r["layer"] for r in runs})
            ratios = sorted({float(f"{r['perturbation_ratio']:.2g}") for r in runs})
            grid = {k: [[None] * len(ratios) for _ in layers] for k in ("delta", "coherence")}
            for r in runs:
                i, j = layers.index(r["layer"]), ratios.index(float(f"{r['perturbation_ratio']:.2g}"))
                grid["delta"][i][j] = _r(r["delta"])
                grid["coherence"][i][j] = _r(r["coherence_mean"])
            title = f"{runs[0]['vector_config']} on {runs[0]['application']} ({manifest.params.get('mode')})"
            heatmaps.append({"title": title, "layers": layers, "ratios": ratios, **grid})
        labels = {r["run_id"]: r["label"] for r in store.read_table(manifest).to_dicts()}
        for row in store.read_table(manifest, "responses").to_dicts()[:limit]:
            steered.append({"config": f"{manifest.name.removeprefix('steering-')}: {labels.get(row['run_id'], '')}",
                            "question": row["question"], "response": row["response"],
                            "trait": _r(row["trait"]), "coherence": _r(row["coherence"])})
    return heatmaps, steered


def render_html(data: dict[str, Any]) -> str:
    """The page: the template with ``data`` embedded as JSON (``</`` escaped)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return TEMPLATE.read_text(encoding="utf-8").replace("__DATA__", payload)


def build_viewer(store: Store, projections: str, force: bool = False) -> BuildResult:
    manifest = store.resolve(projections)
    if manifest.kind != "projections":
        raise ValueError(f"{manifest.ref} is a {manifest.kind} dataset, not projections")
    # every input resolved once here: these exact versions are the parents and what is read
    prompts = prompts_of(store, manifest)
    steering = steering_runs(store)
    parents = {"projections": manifest.ref, **({"prompts": prompts.ref} if prompts else {}),
               **{m.name: m.ref for m in steering}}
    spec = BuildSpec(name=names.viewer(manifest.name), kind="viewer", builder=BUILDER, code_version=CODE_VERSION,
                     params={"template": hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()[:16]},
                     parents=parents, identity={})

    def produce(writer: Any) -> None:
        samples, layers, vectors = sample_data(store, manifest, prompts)
        heatmaps, steered = steering_data(store, steering)
        data = {"title": f"{manifest.name} — per-token trait projections", "samples": samples, "layers": layers,
                "vectors": vectors, "heatmaps": heatmaps, "steered": steered}
        writer.write_bytes("index.html", render_html(data).encode("utf-8"))
        writer.summary.update({"samples": len(samples), "layers": layers, "vectors": vectors,
                               "heatmaps": len(heatmaps), "steered": len(steered)})

    return store.build(spec, produce, force=force)


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import analysis_parser, run

    parser = analysis_parser("python -m analyses.viewer", __doc__.split("\n")[0])
    parser.add_argument("--projections", required=True, metavar="DATASET")
    return run(_main, parser, argv)


def _main(args: argparse.Namespace) -> int:
    store = Store(args.store)
    result = build_viewer(store, args.projections, force=args.force)
    print(f"{'built' if result.built else 'up to date'}: {result.manifest.ref}")
    print(f"open: {store.location.uri(store.path(result.manifest, 'index.html'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
