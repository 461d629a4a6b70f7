"""Generate responses for a prompt set with one variant of an experiment.

    python -m builders.responses --variant instruct --prompts sycophancy_instruction
    python -m builders.responses --variant base --prompts sycophancy_natural --max-new-tokens 16

Batched generation with left padding; greedy by default, sampled with ``--temperature``.
Rows keep prompt id, pair id, polarity, rollout, the formatted prompt, the response, the
full token ids and the prompt length taken from the ids. An interrupted run resumes: the
finished batches are kept in a scratch folder of the version and not generated again.
Output dataset: ``responses-<experiment>-<variant>-<prompt set>``.
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Sequence

from store import BuildResult, BuildSpec, Manifest, Store

from .catalog import Catalog
from .common import (BuildError, add_experiment_args, base_parser, open_store_and_catalog, progress,
                     report, run)
from .prompts import ensure_prompt_set
from .variants import variant_model

log = logging.getLogger(__name__)

BUILDER = "builders.responses"
CODE_VERSION = "1"


def dataset_name(experiment: str, variant: str, prompt_set: str) -> str:
    return f"responses-{experiment}-{variant}-{prompt_set}"


def model_identity(catalog: Catalog, experiment: str | None, variant: str, store: Store | None = None) -> dict[str, Any]:
    """What identifies the model in version ids, computed without loading it (an adapter by
    the hash of its files)."""
    from transforms.models import ModelRef, model_fingerprint

    from .variants import adapter_identity

    entry = catalog.variant(experiment, variant)
    ref = ModelRef(entry.model.id, entry.model.revision)
    return {"model_id": ref.id, "model_revision": model_fingerprint(ref), "adapter": adapter_identity(store, entry)}


def format_row(tokenizer: Any, prompt: str, system_prompt: str | None, style: str) -> Any:
    """The one formatting rule of the pipeline: natural prefixes are continued as plain
    text; everything else uses the chat template when the tokenizer has one."""
    from transforms.tokenization import format_prompt

    return format_prompt(tokenizer, prompt, system_prompt, chat=False if style == "natural" else None)


def _formatted_rows(loaded: Any, prompt_rows: list[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    out = []
    for row in prompt_rows:
        formatted = format_row(loaded.tokenizer, row["prompt"], row.get("system_prompt"), style)
        out.append({**row, "formatted_prompt": formatted.text, "prompt_ids": formatted.ids,
                    "used_chat_template": formatted.used_chat_template, "system_mode": formatted.system_mode})
    return out


def generate_responses(
    store: Store,
    catalog: Catalog,
    variant: str,
    prompt_set: str,
    experiment: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    """Build (or find up to date) the responses of ``variant`` to ``prompt_set``."""
    from transforms.generation import GenerationConfig

    exp = catalog.experiment(experiment)
    catalog.variant(exp.name, variant)  # unknown variant: clear error before any work
    prompts = ensure_prompt_set(store, catalog, prompt_set)
    settings = {**catalog.stage_defaults("responses"), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    rollouts = int(settings.pop("rollouts", 1))
    if rollouts < 1:
        raise BuildError(f"--rollouts must be >= 1, got {rollouts}")
    try:
        config = GenerationConfig(**settings)
    except (TypeError, ValueError) as err:
        raise BuildError(f"generation settings: {err}") from None
    params = {"experiment": exp.name, "variant": variant, "prompt_set": prompt_set,
              "rollouts": rollouts, "generation": config.as_dict()}
    spec = BuildSpec(name=dataset_name(exp.name, variant, prompt_set), kind="responses", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents={"prompts": prompts.ref},
                     identity=model_identity(catalog, exp.name, variant, store))

    def produce(writer) -> None:
        rows = _generate(store, catalog, spec, exp.name, variant, prompts, config, rollouts, quiet)
        writer.write_table(rows)
        writer.summary.update({
            "responses": len(rows),
            "mean_response_tokens": round(sum(len(r["token_ids"]) - r["prompt_len"] for r in rows) / max(1, len(rows)), 2),
            "finished_by_eos": sum(r["finish_reason"] == "eos" for r in rows),
            "tokenizer_fingerprint": rows[0]["tokenizer_fingerprint"] if rows else None,
        })

    return store.build(spec, produce, force=force)


def _generate(store: Store, catalog: Catalog, spec: BuildSpec, experiment: str, variant: str,
              prompts: Manifest, config: Any, rollouts: int, quiet: bool) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq
    import pyarrow as pa

    from transforms.generation import generate_batch, plan_batches

    entry = catalog.variant(experiment, variant)
    prompt_rows = store.read_table(prompts).to_dicts()
    style = json.loads(store.read_bytes(prompts, "prompt_set.json"))["style"]
    loaded = variant_model(store, entry)
    formatted = _formatted_rows(loaded, prompt_rows, style)
    items = [(row, r) for row in formatted for r in range(rollouts)]
    batches = plan_batches([len(row["prompt_ids"]) for row, _ in items],
                           [f"{row['prompt_id']}:{r}" for row, r in items], config.batch_size)

    scratch = store.partial_dir(spec)
    fs = store.fs
    done = set(store.list_names(scratch))  # [] on object stores before the first batch
    generation = json.dumps(config.as_dict(), sort_keys=True)
    bar = progress(len(items), f"responses {variant}/{spec.params['prompt_set']}", quiet)
    for index, batch in enumerate(batches):
        part = f"batch-{index:05d}.parquet"
        if part in done:
            bar.update(len(batch))
            continue
        outputs = generate_batch(loaded.model, loaded.tokenizer, [items[i][0]["prompt_ids"] for i in batch], config, index)
        rows = []
        for i, out in zip(batch, outputs):
            row, rollout = items[i]
            rows.append({
                "prompt_id": row["prompt_id"], "pair_id": row["pair_id"], "polarity": row["polarity"],
                "rollout": rollout, "prompt_set": spec.params["prompt_set"], "prompt_style": style,
                "trait": row.get("trait"),
                "experiment": experiment, "variant": variant,
                "system_prompt": row["system_prompt"], "prompt": row["prompt"],
                "formatted_prompt": row["formatted_prompt"], "used_chat_template": row["used_chat_template"],
                "system_mode": row["system_mode"],
                "response": loaded.tokenizer.decode(out.response_ids, skip_special_tokens=True),
                "token_ids": list(row["prompt_ids"]) + out.response_ids, "prompt_len": len(row["prompt_ids"]),
                "response_len": len(out.response_ids), "finish_reason": out.finish_reason,
                "model_id": loaded.model_id, "model_revision": loaded.revision,
                "tokenizer_fingerprint": loaded.tokenizer_fingerprint, "generation_config": generation,
            })
        tmp = f"{scratch}/.{part}.tmp"
        with fs.open(tmp, "wb") as handle:
            pq.write_table(pa.Table.from_pylist(rows), handle)
        fs.mv(tmp, f"{scratch}/{part}")  # a batch file exists only once it is complete
        bar.update(len(batch))
    bar.close()

    finished = []
    for index in range(len(batches)):
        with fs.open(f"{scratch}/batch-{index:05d}.parquet", "rb") as handle:
            finished.extend(pq.read_table(handle).to_pylist())
    finished.sort(key=lambda r: (r["prompt_id"], r["rollout"]))
    return finished


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("python -m builders.responses", "Generate responses for a prompt set with one variant.")
    add_experiment_args(parser)
    parser.add_argument("--prompts", required=True, action="append", metavar="SET",
                        help="prompt set from the catalog (repeatable)")
    gen = parser.add_argument_group("generation (defaults from catalog.yaml defaults.responses)")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--temperature", type=float, help="0 = greedy")
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--rollouts", type=int, help="responses per prompt")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--batch-size", type=int)
    return parser


def main(args: argparse.Namespace) -> int:
    store, catalog = open_store_and_catalog(args)
    overrides = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                 "rollouts": args.rollouts, "seed": args.seed, "batch_size": args.batch_size}
    for prompt_set in args.prompts:
        report(generate_responses(store, catalog, args.variant, prompt_set, args.experiment, overrides,
                                  force=args.force, quiet=args.quiet))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
