"""Generate responses for a prompt set with one variant of an experiment.

    python -m builders.responses --variant instruct --prompts sycophancy_instruction
    python -m builders.responses --variant base --prompts sycophancy_natural --max-new-tokens 16

Batched generation with left padding; greedy by default, sampled with ``--temperature``.
Rows keep prompt id, pair id, polarity, rollout, the formatted prompt, the response, the
full token ids and the prompt length taken from the ids. The rows, in (prompt id, rollout)
order, are cut into work units of ``--unit-size`` rows (whole batches; one Parquet shard
each) that run in this process or on Ray (``--executor ray``, see builders/shared/executors.py)
with the same result. An interrupted run resumes: finished units and batches are kept in
a scratch folder of the version and not generated again. ``--batch-size`` is a size or
``auto`` (the catalog default: from the free accelerator memory and the unit's longest
prompt, 32 on the CPU); a unit that runs out of memory starts over at half the batch and
writes the bytes of a run at that size from the start. The request is in the version id;
the sizes used are run info (each unit's metadata, ``summary.batch_sizes``): greedy tokens
do not depend on the batch, sampled ones are seeded per batch index, so a sampled run that
must give the same rows on every machine names its size.
Output dataset: ``responses-<experiment>-<variant>-<prompt set>``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from store import BuildResult, BuildSpec, Manifest, Store
from store.atomic import write_atomic

from builders.shared import names
from builders.shared.catalog import Catalog
from builders.shared.common import BuildError
from builders.shared.executors import Executor, run_units, set_threads
from builders.shared.unit_meta import UnitMeta, run_batch_sizes, run_devices
from builders.shared.units import (Unit, UnitOutput, plain_type, plan_units, report_progress, round_unit_size, run_batched,
                                   store_address)
from builders.shared.variants import check_runs, variant_model
from builders.stages.prompts import ensure_prompt_set

log = logging.getLogger(__name__)

BUILDER = "builders.responses"
CODE_VERSION = "4"  # 2: work units, one Parquet shard per unit; 3: vocabulary fingerprint, tokenizer traits;
# 4: batch size "auto" and the out-of-memory retry, no batch size in the generation_config column


def model_identity(catalog: Catalog, experiment: str | None, variant: str, store: Store | None = None,
                   *, with_dtype: bool = True) -> dict[str, Any]:
    """What identifies the model in version ids, computed without loading it (an adapter by
    the hash of its files).

    The dtype the variant runs in changes its numbers, so it is part of the identity --
    only when it is not float32, which keeps the ids built before dtypes were settings.
    A quantization (its label) is too, when set. The device is not (it is run info,
    recorded in the manifest summary). ``with_dtype``
    False: for stages that read the weights files, not the loaded model."""
    from transforms.models import ModelRef, model_fingerprint

    from builders.shared.variants import adapter_identity

    entry = catalog.variant(experiment, variant)
    ref = ModelRef(entry.model.id, entry.model.revision)
    identity = {"model_id": ref.id, "model_revision": model_fingerprint(ref), "adapter": adapter_identity(store, entry)}
    if with_dtype:
        dtype = check_runs(entry)[1]  # resolves the device too: a missing GPU or CUDA-only quantization fails here
        if dtype != "float32":
            identity["dtype"] = dtype
        if entry.quantization is not None:  # only when set: unquantized ids stay as they were
            identity["quantization"] = entry.quantization.label
    return identity


def format_row(tokenizer: Any, prompt: str, system_prompt: str | None, style: str) -> Any:
    """The one formatting rule of the pipeline: natural prefixes are continued as plain
    text; everything else uses the chat template when the tokenizer has one."""
    from transforms.sequences import format_prompt

    return format_prompt(tokenizer, prompt, system_prompt, chat=False if style == "natural" else None)


def _formatted_rows(loaded: Any, prompt_rows: list[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    out = []
    for row in prompt_rows:
        formatted = format_row(loaded.tokenizer, row["prompt"], row.get("system_prompt"), style)
        out.append({**row, "formatted_prompt": formatted.text, "prompt_ids": formatted.ids,
                    "used_chat_template": formatted.used_chat_template, "system_mode": formatted.system_mode})
    return out


RESPONSES_UNIT = 64  # prompts x rollouts per work unit (rounded up to whole batches)


def generate_responses(
    store: Store,
    catalog: Catalog,
    variant: str,
    prompt_set: str,
    experiment: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
    executor: Executor | None = None,
) -> BuildResult:
    """Build (or find up to date) the responses of ``variant`` to ``prompt_set``.

    The work runs as units of ``unit_size`` rows (one Parquet shard each) on ``executor``
    (default: in this process); the executor does not change the version or its bytes."""
    from transforms.batching import AUTO, CPU_GENERATION_BATCH, parse_batch_size
    from transforms.sequences import GenerationConfig

    exp = catalog.experiment(experiment)
    entry = catalog.variant(exp.name, variant)  # unknown variant: clear error before any work
    check_runs(entry)  # and a device this machine lacks, or a quantization it cannot run
    settings = {**catalog.stage_defaults("responses"), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    rollouts = int(settings.pop("rollouts", 1))
    unit_size = int(settings.pop("unit_size", RESPONSES_UNIT))
    if rollouts < 1:
        raise BuildError(f"--rollouts must be >= 1, got {rollouts}")
    try:  # the request (auto or a size) is what the version id keeps; the size used is run info
        settings["batch_size"] = parse_batch_size(settings.get("batch_size", AUTO))
    except ValueError as err:
        raise BuildError(f"--batch-size: {err}") from None
    try:
        config = GenerationConfig(**settings)
    except (TypeError, ValueError) as err:
        raise BuildError(f"generation settings: {err}") from None
    try:
        unit_size = round_unit_size(unit_size, config.batch_size, cpu_batch=CPU_GENERATION_BATCH)
    except ValueError as err:
        raise BuildError(f"--unit-size: {err}") from None
    prompts = ensure_prompt_set(store, catalog, prompt_set)  # only once the settings are known good
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set,
              "rollouts": rollouts, "generation": config.as_dict(), "unit_size": unit_size}
    spec = BuildSpec(name=names.responses(exp.name, variant, prompt_set), kind="responses", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents={"prompts": prompts.ref},
                     identity=model_identity(catalog, exp.name, variant, store))

    def produce(writer) -> None:
        from builders.shared.units import finalize

        job, units = _plan(store, catalog, spec, prompts, config, rollouts, unit_size, executor)
        metas = run_units(executor, job, store.location, job.scratch, units, quiet)
        finalize(writer, store.location, job.scratch, metas, arrays=[])
        rows = sum(m.stats["responses"] for m in metas)
        writer.summary.update({
            "responses": rows,
            "mean_response_tokens": round(sum(m.stats["response_tokens"] for m in metas) / max(1, rows), 2),
            "finished_by_eos": sum(m.stats["finished_by_eos"] for m in metas),
            "tokenizer_fingerprint": metas[0].stats["tokenizer_fingerprint"] if rows else None,
            # what a replay through another variant compares (vocabulary) and records (the rest)
            "tokenizer": metas[0].stats["tokenizer"] if rows else None,
            "device": run_devices(metas),
            "batch_sizes": run_batch_sizes(metas),
        })

    return store.build(spec, produce, force=force)


def _plan(store: Store, catalog: Catalog, spec: BuildSpec, prompts: Manifest, config: Any, rollouts: int,
          unit_size: int, executor: Executor | None) -> tuple["ResponsesJob", list[Unit]]:
    """Rows in (prompt id, rollout) order, cut into units of whole batches."""
    params = spec.params
    frame = store.read_table(prompts)
    style = json.loads(store.read_bytes(prompts, "prompt_set.json"))["style"]
    prompt_rows = sorted(frame.to_dicts(), key=lambda row: row["prompt_id"])
    items = [(row, r) for row in prompt_rows for r in range(rollouts)]
    job = ResponsesJob(
        label=f"responses {params['variant']}/{params['prompt_set']}", store_url=store_address(store),
        scratch=store.partial_dir(spec), entry=catalog.variant(params["experiment"], params["variant"]),
        items=items, experiment=params["experiment"], variant=params["variant"], prompt_set=params["prompt_set"],
        style=style, config=config, threads=(executor or Executor()).threads,
        schema=_schema(frame.to_arrow().schema), unit_size=unit_size)
    return job, plan_units(len(items), unit_size)


def _schema(prompt_schema: Any) -> Any:
    import pyarrow as pa

    def given(name: str) -> Any:
        return plain_type(prompt_schema, name)

    text, count = pa.string(), pa.int64()
    return pa.schema([
        ("prompt_id", given("prompt_id")), ("pair_id", given("pair_id")), ("polarity", given("polarity")),
        ("rollout", count), ("prompt_set", text), ("prompt_style", text), ("trait", given("trait")),
        ("experiment", text), ("variant", text), ("system_prompt", given("system_prompt")),
        ("prompt", given("prompt")), ("formatted_prompt", text), ("used_chat_template", pa.bool_()),
        ("system_mode", text), ("response", text), ("token_ids", pa.list_(count)), ("prompt_len", count),
        ("response_len", count), ("finish_reason", text), ("model_id", text), ("model_revision", text),
        ("tokenizer_fingerprint", text), ("vocabulary_fingerprint", text), ("generation_config", text),
    ])


@dataclass(frozen=True)
class ResponsesJob:
    """One responses build as work units; pickled to Ray workers (so plain data only)."""

    label: str
    store_url: str
    scratch: str
    entry: Any  # catalog Variant
    items: list[tuple[dict[str, Any], int]]  # (prompt row, rollout), in (prompt id, rollout) order
    experiment: str
    variant: str
    prompt_set: str
    style: str
    config: Any  # GenerationConfig
    threads: int
    schema: Any  # pyarrow.Schema of the rows
    unit_size: int  # rows per unit as planned (the last unit may be shorter)

    def run_unit(self, unit: Unit) -> UnitMeta:
        """Generate the unit's rows batch by batch (each batch kept, so a killed unit
        resumes), then write its shard. Batches are planned inside the unit and seeded by
        their index in the whole build. ``auto`` resolves here, from the free memory and the
        unit's longest prompt; on out-of-memory the unit starts over at a smaller batch."""
        import pyarrow as pa

        from transforms.batching import CPU_GENERATION_BATCH, power_of_two_dividing, resolve_batch_size
        from transforms.models import tokenizer_traits

        set_threads(self.threads)
        store = Store(self.store_url)
        loaded = variant_model(store, self.entry)
        out = UnitOutput(store.location, self.scratch, unit)
        items = self.items[unit.start:unit.end]
        formatted = _formatted_rows(loaded, [row for row, _ in items], self.style)
        traits = tokenizer_traits(loaded.tokenizer, loaded.vocabulary_fingerprint)
        # at most the largest power of two dividing the unit: batches then start at multiples
        # of their size, so seeds are the global batch indices of a run at that size
        requested = resolve_batch_size(self.config.batch_size, loaded.model,
                                       max((len(row["prompt_ids"]) for row in formatted), default=1),
                                       new_tokens=self.config.max_new_tokens,
                                       limit=power_of_two_dividing(self.unit_size), cpu_batch=CPU_GENERATION_BATCH)
        ordered, used = run_batched(self.scratch, f"{self.label} {unit.name}", requested, self.unit_size,
                                    lambda size: self._generate(loaded, out, unit, items, formatted, traits, size))
        out.write_table(pa.Table.from_pylist(ordered, schema=self.schema))
        return out.finish(responses=len(ordered),
                          response_tokens=sum(r["response_len"] for r in ordered),
                          finished_by_eos=sum(r["finish_reason"] == "eos" for r in ordered),
                          tokenizer_fingerprint=loaded.tokenizer_fingerprint,
                          tokenizer=traits, device=loaded.device, batch_size=used)

    def _generate(self, loaded: Any, out: UnitOutput, unit: Unit, items: list[tuple[dict[str, Any], int]],
                  formatted: list[dict[str, Any]], traits: dict[str, Any], batch_size: int) -> list[dict[str, Any]]:
        """The unit's rows at ``batch_size``, in item order. Each batch is kept as a file named
        with its size, so a resumed or retried unit reuses only batches of the size it runs."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from transforms.sequences import generate_batch, plan_batches

        fs = out.location.fs
        batches = plan_batches([len(row["prompt_ids"]) for row in formatted],
                               [f"{row['prompt_id']}:{r}" for row, (_, r) in zip(formatted, items)], batch_size)
        generation = json.dumps(self.config.row_settings(), sort_keys=True)
        rows: dict[int, dict[str, Any]] = {}
        for j, batch in enumerate(batches):
            part = out.unit_path(f"batch-b{batch_size}-{j:05d}.parquet")
            if fs.exists(part):
                with fs.open(part, "rb") as handle:
                    rows.update(zip(batch, pq.read_table(handle).to_pylist()))
                report_progress(len(batch))
                continue
            outputs = generate_batch(loaded.model, loaded.tokenizer, [formatted[i]["prompt_ids"] for i in batch],
                                     self.config, unit.start // batch_size + j)
            done = [self._row(loaded, formatted[i], items[i][1], o, generation, traits["vocabulary_fingerprint"])
                    for i, o in zip(batch, outputs)]
            table = pa.Table.from_pylist(done, schema=self.schema)
            # a batch file exists only once it is complete (a killed unit resumes from the whole ones)
            write_atomic(out.location, part, lambda handle: pq.write_table(table, handle))
            rows.update(zip(batch, done))
            report_progress(len(batch))
        return [rows[i] for i in range(len(items))]

    def _row(self, loaded: Any, row: dict[str, Any], rollout: int, out: Any, generation: str,
             vocabulary: str) -> dict[str, Any]:
        return {
            "prompt_id": row["prompt_id"], "pair_id": row["pair_id"], "polarity": row["polarity"],
            "rollout": rollout, "prompt_set": self.prompt_set, "prompt_style": self.style,
            "trait": row.get("trait"), "experiment": self.experiment, "variant": self.variant,
            "system_prompt": row["system_prompt"], "prompt": row["prompt"],
            "formatted_prompt": row["formatted_prompt"], "used_chat_template": row["used_chat_template"],
            "system_mode": row["system_mode"],
            "response": loaded.tokenizer.decode(out.response_ids, skip_special_tokens=True),
            "token_ids": list(row["prompt_ids"]) + out.response_ids, "prompt_len": len(row["prompt_ids"]),
            "response_len": len(out.response_ids), "finish_reason": out.finish_reason,
            "model_id": loaded.model_id, "model_revision": loaded.revision,
            "tokenizer_fingerprint": loaded.tokenizer_fingerprint,
            "vocabulary_fingerprint": vocabulary, "generation_config": generation,
        }
