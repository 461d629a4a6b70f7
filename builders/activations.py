"""Capture activations of one variant over stored responses, replaying their token ids.

    python -m builders.activations --variant base --prompts sycophancy_natural --position "response[:5]"
    python -m builders.activations --variant instruct --prompts general --position "response[:]" --per-token
    python -m builders.activations --variant base --prompts general --replay-from instruct

Layer k = output of decoder block k = Hugging Face ``hidden_states[k+1]``. Positions:
``prompt[a:b]``, ``response[a:b]``, ``all[a:b]`` (Python slices inside the frame, mean
pooled; ``prompt[-1]`` is the state that produces the first response token).

Pooled output: Zarr array ``acts`` ``[sample, layer, d_model]`` float32, chunks one layer
deep; ``--per-token``: ``acts`` ``[token, layer, d_model]`` plus the index columns
``token_start``/``token_end`` in the sample table. ``--replay-from A`` runs ``--variant``
over variant A's response token ids, its prompt formatted its own way (seed 001 step 4c);
both variants must share a tokenizer. Output dataset:
``activations-<experiment>-<variant>-<prompt set>-<position>-<component>[-replay_<A>][-per_token]``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Store

from .catalog import Catalog
from .common import (BuildError, add_experiment_args, base_parser, model_layer_count,
                     open_store_and_catalog, progress, report, run)
from .responses import dataset_name as responses_name
from .responses import format_row, model_identity
from .variants import variant_model

log = logging.getLogger(__name__)

BUILDER = "builders.activations"
CODE_VERSION = "1"
COMPONENTS = ("residual", "attn_out", "mlp_out")
TOKEN_CHUNK = 1024  # tokens per chunk of a per-token array
SAMPLE_CHUNK = 8192  # samples per chunk of a pooled array


def dataset_name(experiment: str, variant: str, prompt_set: str, position_slug: str, component: str,
                 replay_from: str | None, per_token: bool) -> str:
    name = f"activations-{experiment}-{variant}-{prompt_set}-{position_slug}-{component}"
    if replay_from:
        name += f"-replay_{replay_from}"
    return name + ("-per_token" if per_token else "")


def capture_activations(
    store: Store,
    catalog: Catalog,
    variant: str,
    prompt_set: str,
    position: str,
    layers: str = "all",
    component: str = "residual",
    experiment: str | None = None,
    replay_from: str | None = None,
    per_token: bool = False,
    batch_size: int = 8,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    """Build (or find up to date) activations of ``variant`` over stored responses."""
    from transforms.positions import parse_position

    exp = catalog.experiment(experiment)
    catalog.variant(exp.name, variant)
    source_variant = replay_from or variant
    catalog.variant(exp.name, source_variant)
    try:
        pos = parse_position(position)
    except ValueError as err:
        raise BuildError(f"--position: {err}") from None
    if component not in COMPONENTS:
        raise BuildError(f"--component: unknown component {component!r} (known: {', '.join(COMPONENTS)})")
    if batch_size < 1:
        raise BuildError(f"--batch-size must be >= 1, got {batch_size}")
    source = store.resolve(responses_name(exp.name, source_variant, prompt_set))
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "position": str(pos),
              "layers": str(layers), "component": component, "replay_from": replay_from,
              "per_token": per_token, "batch_size": batch_size}
    spec = BuildSpec(
        name=dataset_name(exp.name, variant, prompt_set, pos.slug, component, replay_from, per_token),
        kind="activations", builder=BUILDER, code_version=CODE_VERSION, params=params,
        parents={"responses": source.ref}, identity=model_identity(catalog, exp.name, variant, store),
    )

    def produce(writer) -> None:
        _capture(store, catalog, writer, spec, source, pos, quiet)

    return store.build(spec, produce, force=force)


def _sequences(loaded: Any, responses: list[dict[str, Any]], replay: bool) -> list[dict[str, Any]]:
    """Token ids to replay: stored ids as they are, or (replay) this model's own prompt
    formatting followed by the other variant's response ids."""
    if not replay:
        return [{"ids": list(r["token_ids"]), "prompt_len": r["prompt_len"],
                 "formatted_prompt": r["formatted_prompt"], "used_chat_template": r["used_chat_template"]}
                for r in responses]
    out = []
    for r in responses:
        formatted = format_row(loaded.tokenizer, r["prompt"], r["system_prompt"], r["prompt_style"])
        response_ids = list(r["token_ids"][r["prompt_len"]:])
        out.append({"ids": formatted.ids + response_ids, "prompt_len": len(formatted.ids),
                    "formatted_prompt": formatted.text, "used_chat_template": formatted.used_chat_template})
    return out


def _capture(store: Store, catalog: Catalog, writer: Any, spec: BuildSpec, source: Any, pos: Any, quiet: bool) -> None:
    from transforms.layers import parse_layers

    params = spec.params
    entry = catalog.variant(params["experiment"], params["variant"])
    responses = store.read_table(source).to_dicts()
    if not responses:
        raise BuildError(f"{source.ref} has no responses to capture")
    try:  # checked from the config, before the weights load
        layer_ids = parse_layers(params["layers"], model_layer_count(entry.model.id, entry.model.revision))
    except ValueError as err:
        raise BuildError(f"--layers: {err}") from None
    loaded = variant_model(store, entry)
    replay = params["replay_from"] is not None
    if replay:
        theirs = {r["tokenizer_fingerprint"] for r in responses}
        if theirs != {loaded.tokenizer_fingerprint}:
            raise BuildError(
                f"--replay-from {params['replay_from']}: variant {params['variant']!r} ({loaded.model_id}) does not share "
                f"a tokenizer with the responses in {source.ref}; replay needs identical token ids")
    sequences = _sequences(loaded, responses, replay)
    d_model = loaded.d_model
    attrs = {"layers": layer_ids, "position": params["position"], "component": params["component"],
             "layer_convention": "layer k = output of decoder block k = hidden_states[k+1]",
             "model_id": loaded.model_id, "model_revision": loaded.revision}
    spans = _spans(sequences, pos)
    bar = progress(len(sequences), f"activations {params['variant']}/{params['prompt_set']}", quiet)
    capture = _write_per_token if params["per_token"] else _write_pooled
    token_index = capture(writer, loaded, sequences, spans, pos, layer_ids, params, attrs, bar)
    bar.close()

    rows = []
    for i, (resp, seq) in enumerate(zip(responses, sequences)):
        start, end = spans[i]
        row = {"sample": i, "prompt_id": resp["prompt_id"], "pair_id": resp["pair_id"], "polarity": resp["polarity"],
               "rollout": resp["rollout"], "prompt_set": params["prompt_set"], "variant": params["variant"],
               "source_variant": resp["variant"], "formatted_prompt": seq["formatted_prompt"],
               "source_formatted_prompt": resp["formatted_prompt"], "used_chat_template": seq["used_chat_template"],
               "token_ids": seq["ids"], "prompt_len": seq["prompt_len"], "total_len": len(seq["ids"]),
               "span_start": start, "span_end": end, "n_tokens": end - start}
        if params["per_token"]:
            row["token_start"], row["token_end"] = token_index[i]
        rows.append(row)
    writer.write_table(rows)
    writer.summary.update({"samples": len(rows), "layers": layer_ids, "d_model": d_model,
                           "empty_spans": sum(r["n_tokens"] == 0 for r in rows)})


def _spans(sequences: list[dict[str, Any]], pos: Any) -> list[tuple[int, int]]:
    """Absolute [start, end) of the position in every sequence; (0, 0) when empty."""
    from transforms.positions import EmptySpanError

    spans = []
    for seq in sequences:
        try:
            spans.append(pos.span(seq["prompt_len"], len(seq["ids"])))
        except EmptySpanError:
            spans.append((0, 0))
    return spans


def _write_pooled(writer: Any, loaded: Any, sequences: list[dict[str, Any]], spans: list[tuple[int, int]], pos: Any,
                  layer_ids: list[int], params: dict[str, Any], attrs: dict[str, Any], bar: Any) -> None:
    """Mean over the span: ``acts`` [sample, layer, d_model], chunks one layer deep."""
    import numpy as np

    from transforms.capture import iter_pooled

    acts = np.empty((len(sequences), len(layer_ids), loaded.d_model), dtype=np.float32)
    for idx, acts_BLD in iter_pooled(loaded.model, sequences, pos, layer_ids, params["component"],
                                     params["batch_size"], bar, on_empty="nan"):
        acts[idx] = acts_BLD
    array = writer.create_array("acts", acts.shape, (min(SAMPLE_CHUNK, len(sequences)), 1, loaded.d_model),
                                ("sample", "layer", "d_model"), attributes=attrs)
    array[:] = acts
    _layer_stats(writer, acts, layer_ids)


def _write_per_token(writer: Any, loaded: Any, sequences: list[dict[str, Any]], spans: list[tuple[int, int]],
                     pos: Any, layer_ids: list[int], params: dict[str, Any], attrs: dict[str, Any],
                     bar: Any) -> dict[int, tuple[int, int]]:
    """Every token of the span: ragged ``acts`` [token, layer, d_model], streamed to disk in
    whole chunks (each written once); returns sample -> [token_start, token_end)."""
    import numpy as np

    from transforms.capture import iter_per_token

    total = sum(end - start for start, end in spans)
    shape = (total, len(layer_ids), loaded.d_model)
    array = writer.create_array("acts", shape, (min(TOKEN_CHUNK, max(total, 1)), 1, loaded.d_model),
                                ("token", "layer", "d_model"), attributes=attrs)
    token_index: dict[int, tuple[int, int]] = {}
    pending = np.zeros((0, *shape[1:]), np.float32)
    offset = flushed = 0
    for chunk in iter_per_token(loaded.model, sequences, layer_ids, params["component"], pos, params["batch_size"], bar):
        for t in chunk:
            token_index[t.sample_idx] = (offset, offset + t.acts_TLD.shape[0])
            offset += t.acts_TLD.shape[0]
        pending = np.concatenate([pending, *(t.acts_TLD for t in chunk)], axis=0)
        whole = (pending.shape[0] // TOKEN_CHUNK) * TOKEN_CHUNK
        if whole:
            array[flushed:flushed + whole] = pending[:whole]
            flushed += whole
            pending = pending[whole:]
    if offset > flushed:
        array[flushed:offset] = pending
    return token_index


def _layer_stats(writer: Any, acts: Any, layer_ids: list[int]) -> None:
    """Per-layer activation norms: the first thing a researcher plots."""
    import numpy as np

    norms = np.linalg.norm(acts, axis=-1)  # [sample, layer]
    rows = [{"layer": layer, "mean_norm": float(np.nanmean(norms[:, j])), "std_norm": float(np.nanstd(norms[:, j]))}
            for j, layer in enumerate(layer_ids)]
    writer.write_table(rows, table="layer_stats")


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.activations", "Capture activations over stored responses.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, action="append", metavar="SET", help="prompt set (repeatable)")
    parser.add_argument("--position", default=None, help='e.g. "response[:5]", "prompt[-1]", "all[:]"')
    parser.add_argument("--layers", default=None, help="all, 12, 9-19, 30%%-60%%, 0-30:5, or a comma list")
    parser.add_argument("--component", default=None, choices=COMPONENTS)
    parser.add_argument("--per-token", action="store_true", help="store every token of the position, not the mean")
    parser.add_argument("--replay-from", metavar="VARIANT", help="replay this variant's responses through --variant")
    parser.add_argument("--batch-size", type=int, default=None)
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    defaults = catalog.stage_defaults("activations")
    for prompt_set in args.prompts:
        report(capture_activations(
            store, catalog, args.variant, prompt_set,
            position=args.position or defaults.get("position", "response[:]"),
            layers=args.layers or str(defaults.get("layers", "all")),
            component=args.component or defaults.get("component", "residual"),
            experiment=args.experiment, replay_from=args.replay_from, per_token=args.per_token,
            batch_size=args.batch_size or int(defaults.get("batch_size", 8)), force=args.force, quiet=args.quiet,
        ))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
