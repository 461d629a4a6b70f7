"""``python -m builders.run --experiment NAME``: run an experiment declared in the catalog.

    python -m builders.run --experiment seed001_offline --dry-run   # the plan and its cost
    python -m builders.run --experiment seed001_offline             # build what is missing
    python -m builders.run --experiment demo --until search         # a stage and what it needs
    python -m builders.run --experiment demo --only cliff           # one stage, inputs built
    python -m builders.run --list                                   # experiments and stage kinds

The plan compares each stage's key (its kind, parameters, the keys of what it reads and the
catalog facts it depends on: model ids, prompt sets, judges) with the records in the store:
a finished experiment reruns as a no-op in seconds, a changed parameter rebuilds that stage
and what depends on it, a killed run resumes. A stage that fails stops only the stages that
depend on it; the summary names them and the exit status is 1.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Sequence

from builders.shared.common import BuildError, base_parser, open_store_and_catalog, run


def build_parser() -> argparse.ArgumentParser:
    from builders.shared.executors import add_executor_args

    parser = base_parser("python -m builders.run", __doc__.split("\n")[0])
    parser.add_argument("--experiment", help="experiment in the catalog (default: defaults.experiment)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--until", metavar="STAGE", help="build this stage and the stages it needs, nothing else")
    which.add_argument("--only", metavar="STAGE", help="build this stage alone (what it reads must be built)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its cost estimate; build nothing")
    parser.add_argument("--list", action="store_true", help="list the catalog's experiments and the stage kinds")
    add_executor_args(parser)
    return parser


def print_plan(planned: Any) -> None:
    from builders.graph.costs import human
    from builders.graph.plan import BUILD, NOT_SELECTED, UP_TO_DATE

    counts = {a: sum(e.action == a for e in planned.entries) for a in (UP_TO_DATE, BUILD, NOT_SELECTED)}
    print(f"experiment {planned.experiment}: {len(planned.entries)} stages, {counts[UP_TO_DATE]} up to date, "
          f"{counts[BUILD]} to build" + (f", {counts[NOT_SELECTED]} not selected" if counts[NOT_SELECTED] else ""))
    width = max(len(e.stage) for e in planned.entries)
    total = 0
    for entry in planned.entries:
        if entry.action == NOT_SELECTED:
            continue
        if entry.action == UP_TO_DATE:
            what = ", ".join(planned.done[entry.stage]) or "-"
        else:
            cost = planned.costs.get(entry.stage)
            total += cost.token_passes if cost else 0
            what = f"~ {cost}" if cost else "~ (no estimate)"
        print(f"  {entry.action:<10}  {entry.stage:<{width}}  {entry.kind:<17} {what}")
    if counts[BUILD]:
        print(f"estimated work: {human(total)} token-passes (sequences x tokens x forward passes; "
              "generation counted to max_new_tokens)")


def print_summary(outcomes: list[Any], seconds: float) -> int:
    from builders.graph.execute import BLOCKED, BUILT, FAILED
    from builders.graph.plan import NOT_SELECTED

    shown = [o for o in outcomes if o.state != NOT_SELECTED]
    counts = {s: sum(o.state == s for o in shown) for s in ("up to date", BUILT, FAILED, BLOCKED)}
    print(f"\n{counts[BUILT]} built, {counts['up to date']} up to date, {counts[FAILED]} failed, "
          f"{counts[BLOCKED]} not run (they need a failed stage) in {seconds:.0f}s")
    for o in shown:
        if o.state in (FAILED, BLOCKED):
            print(f"  {o.state:<8} {o.stage} ({o.kind}): {o.detail}")
    return 1 if counts[FAILED] or counts[BLOCKED] else 0


def on_event(outcome: Any) -> None:
    from builders.graph.execute import BUILT, FAILED

    if outcome.state == BUILT:
        note = f" ({outcome.detail})" if outcome.detail else ""
        print(f"built       {outcome.stage} ({outcome.kind}, {outcome.seconds:.0f}s): {', '.join(outcome.outputs)}{note}",
              flush=True)
    elif outcome.state == FAILED:
        print(f"FAILED      {outcome.stage} ({outcome.kind}): {outcome.detail}", flush=True)


def list_experiments(catalog: Any) -> None:
    from builders.graph.kinds import describe

    print("experiments (catalog.yaml):")
    for name, exp in catalog.experiments.items():
        stages = f"{len(exp.stages)} stages" if exp.stages else "no stages"
        print(f"  {name:<18} {stages:<10} {exp.description.strip()[:90]}")
    print("\nstage kinds (* = required parameter; every stage also takes after: [$stage, ...]):")
    print(describe())


def main(args: argparse.Namespace) -> int:
    from builders.graph.execute import RunContext, execute, make_plan
    from builders.graph.plan import PlanError
    from builders.shared.executors import executor_from_args

    store, catalog = open_store_and_catalog(args)
    if args.list:
        list_experiments(catalog)
        return 0
    experiment = catalog.experiment(args.experiment).name
    started = time.time()
    try:
        planned = make_plan(store, catalog, experiment, until=args.until, only=args.only, force=args.force)
    except PlanError as err:
        raise BuildError(str(err)) from None
    print_plan(planned)
    if args.dry_run or not planned.to_build():
        return 0
    print(flush=True)
    with executor_from_args(args) as executor:
        ctx = RunContext(store, catalog, experiment, force=args.force, quiet=args.quiet, executor=executor)
        outcomes = execute(planned, ctx, on_event)
    return print_summary(outcomes, time.time() - started)


def cli(argv: Sequence[str] | None = None) -> int:
    return run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(cli())
