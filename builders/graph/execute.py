"""Running an experiment's plan: stages in dependency order, each recorded when it finishes.

A stage that fails is reported in one line and its descendants are not run; every other
stage still runs, and the summary names what failed and what it blocked. Nothing published
is touched by a failure (stages publish whole versions or nothing), so a rerun resumes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from builders.graph.costs import Cost, CostContext
from builders.graph.facts import stage_facts
from builders.graph.params import is_ref, ref_name
from builders.graph.plan import BUILD, NOT_SELECTED, UP_TO_DATE, PlanEntry, plan, stage_keys
from builders.graph.records import recorded_outputs, write_record

log = logging.getLogger(__name__)
FAILED, BLOCKED, BUILT = "failed", "blocked", "built"


@dataclass
class RunContext:
    """What a stage kind's runner gets besides its parameters."""

    store: Any
    catalog: Any
    experiment: str
    force: bool = False
    quiet: bool = False
    executor: Any = None  # work units of responses / activations (builders.shared.executors)

    @property
    def common(self) -> dict[str, bool]:
        return {"force": self.force, "quiet": self.quiet}

    def judges(self, name: str | None) -> Any:
        """A named judge choice of the experiment (None: the builders' default)."""
        from builders.shared.judges import JudgeChoice

        if name is None:
            return JudgeChoice()
        spec = {"trait": "local", "coherence": "perplexity", **self.catalog.experiment(self.experiment).judges[name]}
        return JudgeChoice.from_dict(spec, allow_uncalibrated=bool(spec.get("allow_uncalibrated", False)))


@dataclass
class StageOutcome:
    stage: str
    kind: str
    state: str  # UP_TO_DATE | BUILT | FAILED | BLOCKED | NOT_SELECTED
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""  # the error of a failed stage, the failed ancestor of a blocked one
    cost: Cost | None = None


@dataclass
class Planned:
    """A plan with what the store already holds: the input of :func:`execute`."""

    experiment: str
    stages: dict[str, Any]
    entries: list[PlanEntry]
    done: dict[str, list[str]]
    costs: dict[str, Cost | None]

    def to_build(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.action == BUILD]


def make_plan(store: Any, catalog: Any, experiment: str, *, until: str | None = None, only: str | None = None,
              force: bool = False) -> Planned:
    from builders.graph.kinds import registry
    from builders.shared.catalog import CatalogError

    exp = catalog.experiment(experiment)
    if not exp.stages:
        raise CatalogError(f"{catalog.path.name}: experiments.{exp.name}.stages: the experiment declares no stages")
    kinds = registry()
    keys = stage_keys(exp.stages, {k: kind.version for k, kind in kinds.items()},
                      stage_facts(catalog, exp, exp.stages, kinds))
    done = {}
    for name, spec in exp.stages.items():
        refs = recorded_outputs(store, exp.name, name, spec.kind, keys[name])
        if refs is not None:
            done[name] = refs
    entries = plan(exp.stages, keys, set(done), until=until, only=only, force=force)
    cc = CostContext(catalog, exp.name, exp.stages)
    costs: dict[str, Cost | None] = {}
    counted: set = set()  # responses several stages share are counted at the first
    for entry in entries:
        kind = kinds[entry.kind]
        costs[entry.stage] = None
        if entry.action == BUILD and kind.cost is not None:
            try:
                costs[entry.stage] = kind.cost(cc, exp.stages[entry.stage].params).without(counted)
            except Exception as err:  # an estimate never stops a plan
                log.debug("no cost estimate for %s: %s", entry.stage, err)
    return Planned(exp.name, exp.stages, entries, done, costs)


def resolve(params: dict[str, Any], outputs: dict[str, list[str]]) -> dict[str, Any]:
    """Parameters with each ``$stage`` replaced by that stage's first output reference."""
    def one(value: Any) -> Any:
        if is_ref(value):
            refs = outputs[ref_name(value)]
            return refs[0] if refs else None
        if isinstance(value, list):
            return [one(v) for v in value]
        return value

    return {k: one(v) for k, v in params.items() if k != "after"}


def execute(planned: Planned, ctx: RunContext, on_event: Callable[[StageOutcome], None] = lambda o: None
            ) -> list[StageOutcome]:
    """Run the stages the plan builds; return an outcome per stage, in order."""
    from builders.graph.kinds import registry

    kinds = registry()
    outputs = dict(planned.done)
    failed: dict[str, str] = {}  # stage -> why it did not run or failed
    outcomes = []
    for entry in planned.entries:
        spec = planned.stages[entry.stage]
        outcome = StageOutcome(entry.stage, entry.kind, entry.action, outputs.get(entry.stage, []),
                               cost=planned.costs.get(entry.stage))
        if entry.action == BUILD:
            blocker = next((n for n in spec.needs if n in failed), None)
            if blocker is not None:
                outcome.state, outcome.detail = BLOCKED, f"needs ${blocker}"
                failed[entry.stage] = outcome.detail
            else:
                outcome = _run_stage(ctx, kinds[entry.kind], entry, spec, outputs, outcome)
                if outcome.state == FAILED:
                    failed[entry.stage] = outcome.detail
                else:
                    outputs[entry.stage] = outcome.outputs
        outcomes.append(outcome)
        if entry.action != NOT_SELECTED:
            on_event(outcome)
    return outcomes


def _run_stage(ctx: RunContext, kind: Any, entry: PlanEntry, spec: Any, outputs: dict[str, list[str]],
               outcome: StageOutcome) -> StageOutcome:
    from builders.shared.common import user_errors

    started = time.time()
    try:
        produced = kind.run(ctx, resolve(spec.params, outputs))
        write_record(ctx.store, ctx.experiment, entry.stage, entry.kind, entry.key, produced, time.time() - started)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        expected = isinstance(err, user_errors())
        if not expected:
            log.exception("stage %s (%s) failed", entry.stage, entry.kind)
        outcome.state = FAILED
        outcome.detail = first if expected else f"{type(err).__name__}: {first}"
        outcome.seconds = time.time() - started
        return outcome
    outcome.state = BUILT
    outcome.outputs = [m.ref for m, _ in produced]
    if produced and not any(built for _, built in produced):
        outcome.detail = "its datasets were already in the store"  # e.g. built by the command line
    outcome.seconds = time.time() - started
    return outcome


__all__ = ["BLOCKED", "BUILT", "FAILED", "NOT_SELECTED", "UP_TO_DATE", "RunContext", "StageOutcome", "Planned",
           "make_plan", "execute", "resolve"]
