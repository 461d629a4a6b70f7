"""Precisions side by side (issue 13, seed 002's "INT8 steers like BF16, INT4 is broken").

    python -m analyses.precision --experiment precision --reference fp32 --variants bf16 int8 \\
        --prompts optimism_instruction --position "response[:]" --method mean_diff \\
        --layers 12 --coefficients 12.4

A precision is a catalog variant of the reference's model that differs only in ``dtype``
and/or ``quantization`` (labelled e.g. ``float32``, ``bfloat16``, ``float32+torchao-int8``).
For every variant, reference included, it builds (or finds up to date) the trait vectors
from the variant's OWN responses and activations (what a researcher running that
precision gets) and a steering grid of the same configuration (layer(s) × coefficient(s))
with that variant's own vectors on that variant, judged by the objective judges the demo
uses for optimism: VADER sentiment for the trait, the perplexity coherence judge under the
reference's model (one ruler for every precision).

``--replay-from REFERENCE``: each variant's vectors from its activations over the reference's
responses instead, which isolates the representation from answers that diverge.

Published as ``analysis-precision-<experiment>-<trait>[-replay_<reference>]`` (every
vectors and steering version read is a parent): ``data`` = per variant, method and layer, the
cosine of its vector with the reference's and the norm ratio; ``steering`` = per variant and configuration the trait
delta (steered − unsteered, paired by question) with its 95% t interval, coherence, and the
difference from the reference's delta with its interval; ``verdict`` = one sentence per
precision; ``precision.png``; ``report.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from builders.shared import names
from store import BuildResult, BuildSpec, Manifest, Store

if TYPE_CHECKING:
    from builders.shared.catalog import Catalog
    from builders.shared.judges import JudgeChoice

log = logging.getLogger(__name__)

BUILDER = "analyses.precision"
CODE_VERSION = "1"


@dataclass(frozen=True)
class SteeringPlan:
    """The configuration steered at every precision: the same layers and coefficients."""

    layers: str
    coefficients: tuple[float, ...]
    method: str = "mean_diff"
    questions: str | None = None  # None: the trait set's steering questions
    subset: int = 0
    positions: str = "response"


def precision_label(catalog: Catalog, experiment: str, variant: str) -> str:
    """``float32``, ``bfloat16``, ``float32+torchao-int8``: the dtype the variant runs in
    on this machine, plus its quantization's label when it declares one."""
    from builders.shared.common import placement

    entry = catalog.variant(experiment, variant)
    label = placement(entry.device, entry.dtype)[1]
    quant = getattr(entry, "quantization", None)  # catalog quantization lands separately
    if quant is not None:
        label += "+" + str(getattr(quant, "label", None) or quant)
    return label


def check_variants(catalog: Catalog, experiment: str, reference: str, variants: Sequence[str]) -> list[str]:
    """``[reference, *others]``, refusing a variant of another model or adapter: then the
    comparison would measure the model, not the precision."""
    from builders.shared.common import BuildError

    ref = catalog.variant(experiment, reference)
    others = [v for v in dict.fromkeys(variants) if v != reference]
    if not others:
        raise BuildError(f"--variants: name at least one variant other than the reference {reference!r}")
    for name in others:
        entry = catalog.variant(experiment, name)
        if (entry.model.id, entry.model.revision, entry.adapter) != (ref.model.id, ref.model.revision, ref.adapter):
            raise BuildError(f"--variants {name}: model {entry.model.name!r} (adapter {entry.adapter}) is not the "
                             f"reference {reference!r}'s ({ref.model.name!r}, adapter {ref.adapter}): a precision "
                             f"comparison needs the same model at another dtype or quantization")
    return [reference, *others]


def build_inputs(store: Store, catalog: Catalog, experiment: str, variant: str, prompt_set: str, position: str,
                 methods: Sequence[str], plan: SteeringPlan, judges: JudgeChoice,
                 generation: dict[str, Any], quiet: bool, replay_from: str | None = None) -> tuple[Manifest, Manifest]:
    """``(vectors, steering run)`` of one precision, built or found up to date; ``replay_from``:
    its vectors from its activations over that variant's responses."""
    from builders.shared.catalog import ExtractionConfig
    from builders.stages.steering import steer_vectors
    from builders.stages.vectors import extract_vectors

    config = ExtractionConfig(prompt_set, variant, position, tuple(methods))
    replay = replay_from if replay_from != variant else None
    vectors = extract_vectors(store, catalog, config, experiment, generation=generation, quiet=quiet,
                              replay_from=replay).manifest
    run = steer_vectors(store, catalog, vectors.ref, plan.method, experiment=experiment, variant=variant, mode="grid",
                        layers=plan.layers, coefficients=plan.coefficients, positions=plan.positions,
                        questions=plan.questions, subset=plan.subset, generation=generation, judges=judges,
                        quiet=quiet).manifest
    return vectors, run


def compare_precisions(
    store: Store,
    catalog: Catalog,
    reference: str,
    variants: Sequence[str],
    plan: SteeringPlan,
    *,
    experiment: str | None = None,
    prompt_set: str = "optimism_instruction",
    position: str = "response[:]",
    methods: Sequence[str] = ("mean_diff",),
    judges: JudgeChoice | None = None,
    max_new_tokens: int | None = None,
    replay_from: str | None = None,
    force: bool = False,
    quiet: bool = False,
) -> tuple[BuildResult, dict[str, list[dict[str, Any]]]]:
    """Build every precision's inputs, then publish the comparison (see the module doc).
    ``replay_from`` (the reference): every variant's vectors from its activations over the
    reference's responses, which isolates the representation from diverging answers."""
    from builders.shared.common import BuildError
    from builders.shared.judges import JudgeChoice

    exp = catalog.experiment(experiment)
    ordered = check_variants(catalog, exp.name, reference, variants)
    if replay_from is not None and replay_from != reference:
        raise BuildError(f"--replay-from {replay_from}: replay the reference's responses ({reference})")
    methods = list(dict.fromkeys(methods))
    if plan.method not in methods:
        methods.append(plan.method)  # the steered vectors are compared too
    if not plan.coefficients:
        raise BuildError("--coefficients: at least one coefficient is needed")
    trait = catalog.prompt_set(prompt_set).trait
    if trait is None:
        raise BuildError(f"--prompts {prompt_set}: not a trait prompt set (no trait in the catalog)")
    # the demo's objective judges for optimism; coherence under the reference's model for all
    judges = judges or JudgeChoice(trait="sentiment", coherence="perplexity",
                                   reference=catalog.variant(exp.name, reference).model.name)
    labels = {v: precision_label(catalog, exp.name, v) for v in ordered}
    generation = {"max_new_tokens": max_new_tokens}
    built = {v: build_inputs(store, catalog, exp.name, v, prompt_set, position, methods, plan, judges, generation,
                             quiet, replay_from) for v in ordered}
    tables = comparison_tables(store, reference, labels, built, methods, plan.method)
    params = {"experiment": exp.name, "reference": reference, "variants": ordered[1:], "precisions": labels,
              "prompt_set": prompt_set, "position": position, "methods": methods, "trait": trait,
              "steering": {"layers": plan.layers, "coefficients": list(plan.coefficients), "method": plan.method,
                           "questions": plan.questions, "subset": plan.subset, "positions": plan.positions},
              "judges": judges.as_dict(), "max_new_tokens": max_new_tokens, "replay_from": replay_from}
    parents = {f"{kind}-{v}": m.ref for v, pair in built.items() for kind, m in zip(("vectors", "steering"), pair)}
    spec = BuildSpec(name=names.precision_analysis(exp.name, trait, replay_from), kind="analysis", builder=BUILDER,
                     code_version=CODE_VERSION, params=params, parents=parents, identity={})
    text = report_text(tables, reference, labels, plan, exp.name, prompt_set, replay_from)

    def produce(writer: Any) -> None:
        from .precision_tables import figure

        writer.write_table(tables["data"])
        writer.write_table(tables["steering"], table="steering")
        writer.write_table(tables["verdict"], table="verdict")
        title = f"{exp.name}: {prompt_set} {position} {plan.method}, reference {labels[reference]} ({reference})"
        writer.write_bytes("precision.png", figure(tables["data"], tables["steering"], plan.method, title))
        writer.write_bytes("report.md", text.encode())
        writer.summary.update({"precisions": labels, "verdicts": [v["text"] for v in tables["verdict"]]})

    return store.build(spec, produce, force=force), tables


def comparison_tables(store: Store, reference: str, labels: dict[str, str],
                      built: dict[str, tuple[Manifest, Manifest]], methods: Sequence[str],
                      steered_method: str) -> dict[str, list[dict[str, Any]]]:
    """``data`` (cosines), ``steering`` and ``verdict`` rows from the built versions."""
    from builders.stages.vectors import load_vectors

    from .precision_tables import cosine_rows, paired_deltas, same_answers, steering_rows, verdicts

    cosines: list[dict[str, Any]] = []
    for method in methods:
        ref_LD, meta = load_vectors(store, built[reference][0], method)
        layers = json.loads(meta.get("layers", "null")) or list(range(ref_LD.shape[0]))
        for variant, (vectors, _) in built.items():
            if variant != reference:
                cosines += cosine_rows(variant, labels[variant], method, layers,
                                       load_vectors(store, vectors, method)[0], ref_LD)
    runs = {v: (store.read_table(run).to_dicts(), store.read_table(run, table="responses").to_dicts())
            for v, (_, run) in built.items()}
    ref_deltas = paired_deltas(*runs[reference])
    steering: list[dict[str, Any]] = []
    for variant, (rows, responses) in runs.items():
        steering += steering_rows(variant, labels[variant], rows, responses,
                                  None if variant == reference else ref_deltas)
    answers = {v: same_answers(_answers(store, built[reference][0]), _answers(store, vectors))
               for v, (vectors, _) in built.items() if v != reference}
    return {"data": cosines, "steering": steering,
            "verdict": verdicts(reference, labels[reference], cosines, steering, steered_method, answers)}


def _answers(store: Store, vectors: Manifest) -> list[dict[str, Any]]:
    """The responses rows whose activations the vectors were extracted from (their lineage)."""
    responses = store.resolve(store.resolve(vectors.parents["activations"]).parents["responses"])
    return store.read_table(responses).select("prompt_id", "rollout", "token_ids", "prompt_len").to_dicts()


def report_text(tables: dict[str, list[dict[str, Any]]], reference: str, labels: dict[str, str],
                plan: SteeringPlan, experiment: str, prompt_set: str, replay_from: str | None = None) -> str:
    source = ("its activations over the reference's responses (replay: the representation alone)" if replay_from
              else "its own responses and activations")
    lines = [f"# Precision comparison: {experiment}, {prompt_set}", "",
             f"Reference: {reference} ({labels[reference]}). Each precision's vectors come from {source}; "
             f"steering: {plan.method} at layer(s) {plan.layers}, coefficient(s) "
             + ", ".join(f"{c:g}" for c in plan.coefficients) + ", each precision with its own vectors.", ""]
    lines += [f"- {v['text']}" for v in tables["verdict"]]
    lines += ["", "| precision | layer | coef | delta | 95% CI | coherence | vs reference |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in tables["steering"]:
        ci = "n/a" if s["delta_ci_lo"] is None else f"{s['delta_ci_lo']:+.1f} to {s['delta_ci_hi']:+.1f}"
        vs = "—" if s["delta_vs_reference"] is None else f"{s['delta_vs_reference']:+.1f}"
        coherence = "n/a" if s["coherence_mean"] is None else f"{s['coherence_mean']:.1f}"
        lines.append(f"| {s['precision']} ({s['variant']}) | {s['layer']} | {s['coef']:g} | "
                     f"{'n/a' if s['delta'] is None else format(s['delta'], '+.1f')} | {ci} | {coherence} | {vs} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from .cli import analysis_parser

    parser = analysis_parser("python -m analyses.precision", __doc__.split("\n")[0])
    parser.add_argument("--catalog", help="catalog file (default $TRAITSTORE_CATALOG or the repository's catalog.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # no --dtype: it would set every variant to one precision; dtypes are per catalog variant
    parser.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N")
    parser.add_argument("--experiment", help="experiment in the catalog (default: defaults.experiment)")
    parser.add_argument("--reference", required=True, help="the variant the others are compared with, e.g. fp32")
    parser.add_argument("--variants", nargs="+", required=True, metavar="VARIANT", help="e.g. bf16 int8")
    parser.add_argument("--prompts", default="optimism_instruction", help="trait prompt set the vectors come from")
    parser.add_argument("--position", default="response[:]", help="vector position")
    parser.add_argument("--method", default="mean_diff", help="vector method steered")
    parser.add_argument("--methods", default="mean_diff", help="comma list of methods whose cosines are compared")
    parser.add_argument("--layers", default="12", help="steered layer(s): 12 or a comma list")
    parser.add_argument("--coefficients", default="12.4", help="comma list; the same at every precision")
    parser.add_argument("--questions", metavar="SET", help="steering questions (default: the trait set's own)")
    parser.add_argument("--subset", type=int, default=0, help="first N steering questions only (0 = all)")
    parser.add_argument("--max-new-tokens", type=int, help="for the responses and the steered answers")
    parser.add_argument("--replay-from", metavar="REFERENCE",
                        help="vectors from each variant's activations over the reference's responses: the "
                             "representation alone, without diverging answers (dataset suffix -replay_<ref>)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from builders.shared.common import run

    return run(_main, build_parser(), argv)


def _main(args: argparse.Namespace) -> int:
    from builders.shared.common import open_store_and_catalog
    from builders.stages.steering import parse_coefficients

    store, catalog = open_store_and_catalog(args)
    plan = SteeringPlan(args.layers, tuple(parse_coefficients(args.coefficients)), args.method, args.questions,
                        args.subset)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result, tables = compare_precisions(store, catalog, args.reference, args.variants, plan,
                                        experiment=args.experiment, prompt_set=args.prompts, position=args.position,
                                        methods=methods, max_new_tokens=args.max_new_tokens,
                                        replay_from=args.replay_from, force=args.force,
                                        quiet=args.quiet)
    for verdict in tables["verdict"]:
        print(verdict["text"])
    print(f"{'built' if result.built else 'up to date'}: {result.manifest.ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
