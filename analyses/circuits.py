"""Seed 003's circuits report: does the persona set the answer's register before generation, and
which heads carry it? (issue 16 item 7)

    python -m analyses.circuits --experiment demo --variant instruct --prompt-set persona \\
        [--probe REF] [--logit-lens REF] [--residual REF] [--heads REF] [--heads-by-position REF] \\
        [--attn-out REF] [--mlp-out REF] [--ablation REF] [--direction REF] [--top 3]

Each input defaults to the latest version of its dataset name (:mod:`builders.shared.names`);
the patching ``residual`` and ``heads`` datasets are required, the rest add sections when given
(a missing one is said so in the report). Published ``analysis-circuits-<exp>-<variant>-<set>``
(kind ``analysis``, the inputs as parents): ``report.md`` with the seed's five sections, table
``data`` = ``findings`` (claim, value, ci_low, ci_high, supported, section), table ``heads`` (every
head's patch effect), ``figures/logit_diff.png``, ``figures/patching.png``, ``figures/heads.png``.
Every number is computed from the parents' tables (:mod:`analyses.circuits_tables`).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Sequence

from builders.shared import names
from store import BuildResult, BuildSpec, Store

from analyses.cli import analysis_parser, run

if TYPE_CHECKING:
    from analyses.circuits_markdown import CircuitsFacts
    from store.manifest import Manifest

log = logging.getLogger(__name__)

BUILDER = "analyses.circuits"
CODE_VERSION = "2"  # 2: heads ranked by |effect|, as the ablation and per-position stages pick them
PATCH_KINDS = ("residual", "attn_out", "mlp_out", "heads", "heads_by_position", "direction")


@dataclass(frozen=True)
class CircuitsInputs:
    """Dataset references (``name`` or ``name@version``) the report reads; None = not run."""

    residual: str
    heads: str
    probe: str | None = None
    logit_lens: str | None = None
    heads_by_position: str | None = None
    attn_out: str | None = None
    mlp_out: str | None = None
    ablation: str | None = None
    direction: str | None = None

    @classmethod
    def latest(cls, store: Store, experiment: str, variant: str, prompt_set: str, position_slug: str | None = None,
               **given: str | None) -> "CircuitsInputs":
        """The published datasets of this experiment, variant and set, found by their names;
        ``given`` (field name -> reference) overrides any. ``position_slug`` picks the probe and
        logit-lens position (default: the one published)."""
        have = set(store.datasets())

        def pick(name: str) -> str | None:
            return name if name in have else None

        def by_slug(make: Any) -> str | None:
            if position_slug is not None:
                return pick(make(experiment, variant, prompt_set, position_slug))
            head, _, tail = make(experiment, variant, prompt_set, "\0").partition("\0")
            found = sorted(n for n in have if n.startswith(head) and n.endswith(tail))
            return found[0] if found else None

        found = {kind: pick(names.patching(experiment, variant, prompt_set, kind)) for kind in PATCH_KINDS}
        found.update(probe=by_slug(names.persona_probe), logit_lens=by_slug(names.logit_lens),
                     ablation=pick(names.head_ablation(experiment, variant, prompt_set)))
        refs = {f.name: given.get(f.name) or found.get(f.name) for f in fields(cls)}
        if refs["residual"] is None or refs["heads"] is None:
            raise ValueError(f"no residual and heads patching datasets of {experiment}/{variant}/{prompt_set}: "
                             f"run the patching builder first (or give --residual and --heads)")
        return cls(**refs)

    def resolved(self, store: Store) -> dict[str, "Manifest"]:
        return {f.name: store.resolve(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)}


def circuits_report(store: Store, experiment: str, variant: str, prompt_set: str, inputs: CircuitsInputs, *,
                    top: int = 3, force: bool = False) -> BuildResult:
    """Publish the report of the given inputs (module docstring)."""
    if top < 1:
        raise ValueError(f"--top {top}: must be at least 1")
    manifests = inputs.resolved(store)
    spec = BuildSpec(name=names.circuits_report(experiment, variant, prompt_set), kind="analysis", builder=BUILDER,
                     code_version=CODE_VERSION, params={"top": top},
                     parents={role: m.ref for role, m in manifests.items()}, identity={})

    def produce(writer: Any) -> None:
        from analyses.circuits_figures import figures
        from analyses.circuits_markdown import findings, findings_rows, report_markdown

        facts, tables = gather(store, manifests, experiment, variant, prompt_set, top)
        drawn = figures(facts, tables)
        for path, data in drawn.items():
            writer.write_bytes(path, data)
        found = findings(facts)
        writer.write_table(findings_rows(found))
        heads = [{"layer": h.layer, "head": h.head, "effect": h.effect.mean, "ci_low": h.effect.ci_low,
                  "ci_high": h.effect.ci_high, "n_pairs": h.effect.n} for h in facts.heads_all]
        if heads:
            writer.write_table(heads, table="heads")
        writer.write_bytes("report.md", report_markdown(facts, sorted(drawn)).encode())
        writer.summary.update({"findings": len(found), "supported": sum(f.supported for f in found),
                               "top_heads": [h.label for h in facts.heads], "pairs_used": facts.pairs.used})

    return store.build(spec, produce, force=force)


def gather(store: Store, manifests: dict[str, "Manifest"], experiment: str, variant: str, prompt_set: str,
           top: int) -> tuple["CircuitsFacts", dict[str, Any]]:
    """Read the parents' tables and compute every number (returns the facts and the frames the
    figures draw)."""
    import polars as pl

    from analyses import circuits_tables as ct
    from analyses.circuits_markdown import CircuitsFacts

    def table(role: str, name: str = "data") -> pl.DataFrame | None:
        m = manifests.get(role)
        return store.read_table(m, name) if m is not None and name in m.tables else None

    residual = manifests["residual"]
    facts = CircuitsFacts(experiment, variant, prompt_set, model_id=str(residual.identity.get("model_id", "?")),
                          pairs=ct.pair_facts(store.read_table(residual, "baselines")),
                          min_gap=residual.params.get("min_gap"),
                          refs={role: m.ref for role, m in manifests.items()})
    frames: dict[str, Any] = {}
    tracked = table("logit_lens", "tracked")
    if tracked is not None:
        facts.lens = ct.lens_separation(tracked)
        facts.n_pairs = tracked["pair_id"].n_unique()
        facts.n_templates = tracked["template_id"].n_unique()
        facts.n_questions = tracked["question_id"].n_unique()
        by_layer = table("logit_lens", "by_layer")
        frames["lens_by_layer"] = by_layer
        if by_layer is not None and by_layer.height:
            last = by_layer["layer"].max()
            facts.lens_final = {r["side"]: r["mean_logit_diff"] for r in by_layer.filter(pl.col("layer") == last).to_dicts()}
    else:
        baselines = store.read_table(residual, "baselines")
        facts.n_pairs = baselines.height
        facts.n_questions = baselines["pair_id"].str.split("/").list.last().n_unique()
    probe = table("probe")
    if probe is not None and probe.height:
        facts.probe = ct.probe_facts(probe)
    for role in ("residual", "attn_out", "mlp_out"):
        data = table(role)
        if data is not None:
            facts.patch += ct.patch_layers(data)
    by_position = table("heads_by_position")
    all_heads = ct.head_effects(table("heads"), by_position)
    facts.heads_all = all_heads
    facts.heads, facts.n_heads = all_heads[:top], len(all_heads)
    ablation = table("ablation")
    if ablation is not None:
        generation = table("ablation", "generation")
        facts.ablation = ct.ablation_effects(ablation, generation)
        if generation is not None and generation.height:
            facts.random_register = {m: ct.random_register(generation, m) for m in generation["mode"].unique().to_list()}
        top_heads = table("ablation", "top_heads")
        if top_heads is not None:
            facts.head_ablation = {(int(r["layer"]), int(r["head"])): (r.get("zero_delta"), r.get("mean_delta"))
                                   for r in top_heads.to_dicts()}
    direction = table("direction")
    if direction is not None and direction.height:
        facts.direction = ct.direction_curves(direction)
    return facts, frames


def build_parser() -> argparse.ArgumentParser:
    parser = analysis_parser("python -m analyses.circuits", __doc__.splitlines()[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--variant", default="instruct")
    parser.add_argument("--prompt-set", default="persona")
    parser.add_argument("--position-slug", help="the probe's and logit lens's position slug (default: the published one)")
    for f in fields(CircuitsInputs):
        parser.add_argument(f"--{f.name.replace('_', '-')}", help=f"{f.name} dataset reference (default: the latest)")
    parser.add_argument("--top", type=int, default=3, help="how many heads the report names")
    return parser


def main(args: argparse.Namespace) -> int:
    from builders.shared.common import report as print_report

    store = Store(args.store) if args.store else Store()
    given = {f.name: getattr(args, f.name) for f in fields(CircuitsInputs)}
    inputs = CircuitsInputs.latest(store, args.experiment, args.variant, args.prompt_set, args.position_slug, **given)
    print_report(circuits_report(store, args.experiment, args.variant, args.prompt_set, inputs, top=args.top,
                                 force=args.force))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
