"""Capture activations of one variant over stored responses, replaying their token ids.

    python -m builders.activations --variant base --prompts sycophancy_natural --position "response[:5]"
    python -m builders.activations --variant instruct --prompts general --position "response[:]" --per-token
    python -m builders.activations --variant base --prompts general --replay-from instruct

Layer k = output of decoder block k = Hugging Face ``hidden_states[k+1]``. Positions:
``prompt[a:b]``, ``response[a:b]``, ``all[a:b]`` (Python slices inside the frame, mean
pooled; ``prompt[-1]`` is the state that produces the first response token).

Pooled output: Zarr array ``acts`` ``[sample, layer, d_model]`` float32, chunks one layer
and one work unit (``--unit-size`` samples) deep; ``--per-token``: ``acts``
``[token, layer, d_model]`` (tokens in sample order) plus the index columns
``token_start``/``token_end`` in the sample table. Units run in this process or on Ray
(``--executor ray``, see builders/shared/executors.py) with the same version and bytes; finished
units are kept, so an interrupted run resumes. ``--batch-size`` N or ``auto`` (8 on the
CPU), halved on out-of-memory as in builders/stages/responses.py. ``--replay-from A`` runs ``--variant``
over variant A's response token ids, its prompt formatted its own way (seed 001 step 4c);
both variants' tokenizers must share a vocabulary (token -> id mapping); eos, pad and chat
template may differ and are then recorded (see builders/stages/replay.py). Output dataset:
``activations-<experiment>-<variant>-<prompt set>-<position>-<component>[-replay_<A>][-per_token]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from store import BuildResult, BuildSpec, Store

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import (BuildError, model_config_dims)
from builders.shared.executors import Executor, run_units, set_threads
from builders.shared.unit_meta import UnitMeta, run_batch_sizes, run_devices
from builders.shared.units import (ArraySpec, Unit, UnitOutput, plain_type, plan_units, report_progress, round_unit_size,
                                   run_batched, store_address)
from builders.shared.variants import variant_model
from builders.stages.replay import (ResponseSequence, replay_record, response_sequence, responses_tokenizer,
                                    variant_tokenizer)
from builders.stages.responses import model_identity

log = logging.getLogger(__name__)

BUILDER = "builders.activations"
CODE_VERSION = "2"  # 2: work units (a table shard each), token rows in sample order
COMPONENTS = ("residual", "attn_out", "mlp_out")
TOKEN_CHUNK = 1024  # tokens per chunk of a per-token array
ACTIVATIONS_UNIT = 256  # samples per work unit (= per chunk of a pooled array), rounded up to whole batches


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
    batch_size: int | str = "auto",
    force: bool = False,
    quiet: bool = False,
    unit_size: int = ACTIVATIONS_UNIT,
    executor: Executor | None = None,
) -> BuildResult:
    """Build (or find up to date) activations of ``variant`` over stored responses.

    Samples are cut into work units of ``unit_size`` (whole batches; one table shard each,
    and for pooled output one Zarr chunk deep along the sample axis) that run on
    ``executor`` (default: in this process) with the same result. ``batch_size``: a size or
    ``auto`` (from the free accelerator memory, 8 on the CPU), halved on out-of-memory; the
    request is in the version id, the sizes used in the manifest summary."""
    from transforms.batching import parse_batch_size
    from transforms.sequences import parse_position

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
    try:
        batch_size = parse_batch_size(batch_size)
    except ValueError as err:
        raise BuildError(f"--batch-size: {err}") from None
    try:
        unit_size = round_unit_size(unit_size, batch_size)
    except ValueError as err:
        raise BuildError(f"--unit-size: {err}") from None
    source = store.resolve(names.responses(exp.name, source_variant, prompt_set))
    identity = model_identity(catalog, exp.name, variant, store)
    tokenizer = None
    if replay_from:  # checked before anything is built
        tokenizer, record = _replay_tokenizer(store, catalog, exp.name, variant, replay_from, source)
        if record is not None:
            identity["replay_tokenizers"] = record
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set, "position": str(pos),
              "layers": str(layers), "component": component, "replay_from": replay_from,
              "per_token": per_token, "batch_size": batch_size, "unit_size": unit_size}
    spec = BuildSpec(
        name=names.activations(exp.name, variant, prompt_set, pos.slug, component, replay_from, per_token),
        kind="activations", builder=BUILDER, code_version=CODE_VERSION, params=params,
        parents={"responses": source.ref}, identity=identity,
    )

    def produce(writer) -> None:
        _capture(store, catalog, writer, spec, source, pos, quiet, executor, tokenizer)

    return store.build(spec, produce, force=force)


def _replay_tokenizer(store: Store, catalog: Catalog, experiment: str, variant: str, replay_from: str,
                      source: Any) -> tuple[Any, dict[str, Any] | None]:
    """The variant's tokenizer (no weights) for replay and what differs from the one that
    made the responses; refused unless the two share a vocabulary."""
    from transforms.models import tokenizer_traits

    entry = catalog.variant(experiment, variant)
    tokenizer = variant_tokenizer(entry)
    record = replay_record(responses_tokenizer(store, catalog, source, experiment, replay_from),
                           tokenizer_traits(tokenizer), f"the responses in {source.ref}",
                           f"--replay-from {replay_from}: variant {variant!r} ({entry.model.id})")
    return tokenizer, record


def _capture(store: Store, catalog: Catalog, writer: Any, spec: BuildSpec, source: Any, pos: Any, quiet: bool,
             executor: Executor | None, tokenizer: Any) -> None:
    """Plan units on the driver (no model weights here), run them, finalize the version."""
    import dataclasses

    from transforms.capture import parse_layers

    from builders.shared.units import finalize

    params = spec.params
    entry = catalog.variant(params["experiment"], params["variant"])
    frame = store.read_table(source)
    responses = frame.to_dicts()
    if not responses:
        raise BuildError(f"{source.ref} has no responses to capture")
    n_layers, d_model = model_config_dims(entry.model.id, entry.model.revision)
    try:  # checked from the config, before any weights load
        layer_ids = parse_layers(params["layers"], n_layers)
    except ValueError as err:
        raise BuildError(f"--layers: {err}") from None
    # stored ids as they are, or (a replay: ``tokenizer`` set) this model's prompt formatting + the other
    # variant's response ids
    sequences = [response_sequence(r, tokenizer) for r in responses]
    spans = _spans(sequences, pos)
    per_token = params["per_token"]
    counts = [end - start for start, end in spans]
    units = plan_units(len(sequences), params["unit_size"], counts if per_token else None)
    if per_token:
        total = sum(counts)
        array = ArraySpec("acts", (total, len(layer_ids), d_model), (min(TOKEN_CHUNK, max(total, 1)), 1, d_model),
                          ("token", "layer", "d_model"))
    else:
        array = ArraySpec("acts", (len(sequences), len(layer_ids), d_model),
                          (min(params["unit_size"], len(sequences)), 1, d_model), ("sample", "layer", "d_model"))
    job = ActivationsJob(
        label=f"activations {params['variant']}/{params['prompt_set']}", store_url=store_address(store),
        scratch=store.partial_dir(spec), entry=entry, sequences=sequences,
        sources=[{k: r[k] for k in ("prompt_id", "pair_id", "polarity", "rollout", "variant", "formatted_prompt")}
                 for r in responses],
        spans=spans, position=params["position"], layer_ids=layer_ids, params=params, array=array,
        threads=(executor or Executor()).threads, schema=_schema(frame.to_arrow().schema, per_token))
    metas = run_units(executor, job, store.location, job.scratch, units, quiet)
    attrs = {"layers": layer_ids, "position": params["position"], "component": params["component"],
             "layer_convention": "layer k = output of decoder block k = hidden_states[k+1]",
             "model_id": metas[0].stats["model_id"], "model_revision": metas[0].stats["model_revision"]}
    finalize(writer, store.location, job.scratch, metas, [dataclasses.replace(array, attributes=attrs)])
    if not per_token:
        _layer_stats(writer, store.location, job.scratch, metas, layer_ids)
    writer.summary.update({"samples": len(sequences), "layers": layer_ids, "d_model": d_model,
                           "empty_spans": sum(n == 0 for n in counts), "device": run_devices(metas),
                           "batch_sizes": run_batch_sizes(metas)})


def _schema(source_schema: Any, per_token: bool) -> Any:
    import pyarrow as pa

    text, count = pa.string(), pa.int64()
    fields = [
        ("sample", count), ("prompt_id", plain_type(source_schema, "prompt_id")),
        ("pair_id", plain_type(source_schema, "pair_id")), ("polarity", plain_type(source_schema, "polarity")),
        ("rollout", count), ("prompt_set", text), ("variant", text), ("source_variant", text),
        ("formatted_prompt", text), ("source_formatted_prompt", text), ("used_chat_template", pa.bool_()),
        ("token_ids", pa.list_(count)), ("prompt_len", count), ("total_len", count), ("span_start", count),
        ("span_end", count), ("n_tokens", count),
    ]
    if per_token:
        fields += [("token_start", count), ("token_end", count)]
    return pa.schema(fields)


def _spans(sequences: list[ResponseSequence], pos: Any) -> list[tuple[int, int]]:
    """Absolute [start, end) of the position in every sequence; (0, 0) when empty."""
    from transforms.sequences import EmptySpanError

    spans = []
    for seq in sequences:
        try:
            spans.append(pos.span(seq.prompt_len, len(seq.ids)))
        except EmptySpanError:
            spans.append((0, 0))
    return spans


@dataclass(frozen=True)
class ActivationsJob:
    """One activations build as work units; pickled to Ray workers (plain data only)."""

    label: str
    store_url: str
    scratch: str
    entry: Any  # catalog Variant
    sequences: list[ResponseSequence]
    sources: list[dict[str, Any]]  # the responses' columns the rows keep
    spans: list[tuple[int, int]]
    position: str
    layer_ids: list[int]
    params: dict[str, Any]
    array: ArraySpec
    threads: int
    schema: Any  # pyarrow.Schema of the rows

    def run_unit(self, unit: Unit) -> UnitMeta:
        """Capture the unit's samples (see :meth:`_capture`). ``auto`` resolves here, from the
        free memory and the unit's longest span end; on out-of-memory the unit starts over
        in a fresh attempt folder at a smaller batch."""
        from transforms.batching import power_of_two_dividing, resolve_batch_size

        set_threads(self.threads)
        store = Store(self.store_url)
        loaded = variant_model(store, self.entry)
        if loaded.d_model != self.array.shape[2]:
            raise BuildError(f"{loaded.model_id}: d_model {loaded.d_model}, config says {self.array.shape[2]}")
        longest = max((end for _, end in self.spans[unit.start:unit.end]), default=1)  # what the forward runs
        unit_size = self.params["unit_size"]
        requested = resolve_batch_size(self.params["batch_size"], loaded.model, max(1, longest),
                                       limit=power_of_two_dividing(unit_size))

        def attempt(batch_size: int) -> UnitMeta:
            out = UnitOutput(store.location, self.scratch, unit)
            try:
                return self._capture(loaded, out, unit, batch_size)
            except Exception:
                out.discard()  # a retry writes every row again, into its own attempt
                raise

        meta, _ = run_batched(self.scratch, f"{self.label} {unit.name}", requested, unit_size, attempt)
        return meta

    def _capture(self, loaded: Any, out: UnitOutput, unit: Unit, batch_size: int) -> UnitMeta:
        """Pooled rows or per-token rows of ``acts`` (in sample order, at the rows the plan
        gave the unit), the table shard, and (pooled) the per-sample norms for the layer
        statistics, all in ``out``; returns the unit's metadata."""
        import numpy as np
        import pyarrow as pa

        from transforms.sequences import parse_position

        pos = parse_position(self.position)
        sequences = self.sequences[unit.start:unit.end]
        params = self.params
        offsets = {}  # sample (unit-local) -> first token row
        if params["per_token"]:
            from transforms.capture import iter_per_token

            row = unit.token_start
            for i, (start, end) in enumerate(self.spans[unit.start:unit.end]):
                offsets[i] = row
                row += end - start
            rows = out.array_rows(self.array, unit.token_start, unit.token_end)
            for chunk in iter_per_token(loaded.model, sequences, self.layer_ids, params["component"], pos,
                                        batch_size):
                for t in chunk:
                    rows.write(offsets[t.sample_idx], t.acts_TLD)
                report_progress(len(chunk))
            rows.close()
        else:
            from transforms.capture import iter_pooled

            acts = np.empty((len(sequences), *self.array.shape[1:]), dtype=np.float32)
            for idx, acts_BLD in iter_pooled(loaded.model, sequences, pos, self.layer_ids, params["component"],
                                             batch_size, None, on_empty="nan"):
                acts[idx] = acts_BLD
                report_progress(len(idx))
            out.write_array(self.array, unit.start, acts)
            out.save_npy("norms.npy", np.linalg.norm(acts, axis=-1))  # [sample, layer]
        out.write_table(pa.Table.from_pylist(
            [self._row(unit.start + i, offsets.get(i)) for i in range(len(sequences))], schema=self.schema))
        return out.finish(model_id=loaded.model_id, model_revision=loaded.revision, device=loaded.device,
                          batch_size=batch_size)

    def _row(self, sample: int, token_start: int | None) -> dict[str, Any]:
        resp, seq = self.sources[sample], self.sequences[sample]
        start, end = self.spans[sample]
        row = {"sample": sample, "prompt_id": resp["prompt_id"], "pair_id": resp["pair_id"],
               "polarity": resp["polarity"], "rollout": resp["rollout"], "prompt_set": self.params["prompt_set"],
               "variant": self.params["variant"], "source_variant": resp["variant"],
               "formatted_prompt": seq.formatted_prompt, "source_formatted_prompt": resp["formatted_prompt"],
               "used_chat_template": seq.used_chat_template, "token_ids": seq.ids,
               "prompt_len": seq.prompt_len, "total_len": len(seq.ids),
               "span_start": start, "span_end": end, "n_tokens": end - start}
        if token_start is not None:
            row["token_start"], row["token_end"] = token_start, token_start + end - start
        return row


def _layer_stats(writer: Any, location: Any, scratch: str, metas: list[UnitMeta], layer_ids: list[int]) -> None:
    """Per-layer activation norms: the first thing a researcher plots (from the units'
    per-sample norms, in unit order)."""
    import numpy as np

    from builders.shared.units import load_npy

    norms = np.concatenate([load_npy(location, f"{scratch}/{m.folder}/norms.npy")
                            for m in sorted(metas, key=lambda m: m.unit)])  # [sample, layer]
    rows = [{"layer": layer, "mean_norm": float(np.nanmean(norms[:, j])), "std_norm": float(np.nanstd(norms[:, j]))}
            for j, layer in enumerate(layer_ids)]
    writer.write_table(rows, table="layer_stats")
