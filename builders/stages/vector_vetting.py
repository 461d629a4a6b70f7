"""``builders.vectors --vetted``: keep only the responses whose judgments pass the filters.

persona_vectors' rule: a positive response is kept when its trait score is at least the
threshold (50), a negative one when it is at most the threshold, and either only when its
coherence is at least the floor (50). Judgments are joined on the response id (prompt id,
rollout), never by row position (persona_vectors' own filter bug), and must have judged
the same responses version the activations were captured from.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from store import Manifest, Store, StoreError

from builders.shared import names
from builders.shared.common import BuildError

log = logging.getLogger(__name__)

MIN_KEPT = 2  # per polarity: one for each side of the split


@dataclass(frozen=True)
class Vetting:
    """The filters of ``--vetted``; ``judgments`` pins a version (default: the latest)."""

    trait_threshold: float = 50.0
    coherence_floor: float = 50.0
    judgments: str | None = None

    def check(self) -> None:
        for flag, value in (("--vet-trait-threshold", self.trait_threshold),
                            ("--vet-coherence-floor", self.coherence_floor)):
            if not 0 <= value <= 100:
                raise BuildError(f"{flag} must be in [0, 100] (judge scores are 0-100), got {value}")

    def params(self) -> dict[str, Any]:
        return {"trait_threshold": self.trait_threshold, "coherence_floor": self.coherence_floor}


def resolve_judgments(store: Store, vetting: Vetting, experiment: str, variant: str, prompt_set: str,
                      acts: Manifest) -> Manifest:
    """The judgments version to vet with; refuses one judging other responses than ``acts``."""
    ref = vetting.judgments or names.judgments(experiment, variant, prompt_set)
    try:
        judgments = store.resolve(ref)
    except StoreError as err:
        raise BuildError(f"--vetted: {err}; judge the responses first: python -m builders.judgments "
                         f"--variant {variant} --prompts {prompt_set}") from None
    if judgments.parents.get("responses") != acts.parents.get("responses") and not vetting.judgments:
        # not pinned: the newest version that judged exactly these responses, if any
        matching = [m for m in store.versions(judgments.name)
                    if m.parents.get("responses") == acts.parents.get("responses")]
        judgments = matching[-1] if matching else judgments
    if judgments.parents.get("responses") != acts.parents.get("responses"):
        raise BuildError(f"--vetted: {judgments.ref} judged {judgments.parents.get('responses')}, but the "
                         f"activations are of {acts.parents.get('responses')}: rebuild the judgments")
    return judgments


def passes(polarity: str, trait: float | None, coherence: float | None, vetting: Vetting) -> bool:
    """The filter of one response (a missing score fails)."""
    if trait is None or coherence is None or coherence < vetting.coherence_floor:
        return False
    return trait >= vetting.trait_threshold if polarity == "pos" else trait <= vetting.trait_threshold


def vet_samples(store: Store, judgments: Manifest, sample_ids: list[str], polarity: list[str],
                vetting: Vetting, usable: list[bool] | None = None) -> tuple[list[bool], dict[str, Any]]:
    """``(keep per sample, summary)``: samples (``prompt_id:rollout``) whose judgment passes.
    A sample without a judgment fails (and is counted). ``usable``: samples the extraction
    can use at all (e.g. a non-empty span); the others are neither kept nor counted."""
    usable = usable if usable is not None else [True] * len(sample_ids)
    rows = store.read_table(judgments).select("prompt_id", "rollout", "trait_score", "coherence").to_dicts()
    scores = {f"{r['prompt_id']}:{r['rollout']}": (r["trait_score"], r["coherence"]) for r in rows}
    keep = [u and passes(pol, *scores.get(sid, (None, None)), vetting)
            for sid, pol, u in zip(sample_ids, polarity, usable)]
    kept = {p: sum(1 for k, q in zip(keep, polarity) if k and q == p) for p in ("pos", "neg")}
    of = {p: sum(1 for q, u in zip(polarity, usable) if u and q == p) for p in ("pos", "neg")}
    unjudged = sum(1 for sid, u in zip(sample_ids, usable) if u and sid not in scores)
    summary = {"judgments": judgments.ref, **vetting.params(), "kept": kept, "of": of, "unjudged": unjudged}
    rule = (f"pos trait >= {vetting.trait_threshold:g}, neg trait <= {vetting.trait_threshold:g}, "
            f"coherence >= {vetting.coherence_floor:g}")
    if min(kept.values()) < MIN_KEPT:
        raise BuildError(f"--vetted: kept {kept['pos']} positive (of {of['pos']}) and {kept['neg']} negative "
                         f"(of {of['neg']}) responses with {rule} from {judgments.ref}; need at least {MIN_KEPT} "
                         f"of each: loosen the thresholds or add rollouts")
    log.info("vetted by %s (%s): kept %d/%d positive, %d/%d negative responses%s", judgments.ref, rule,
             kept["pos"], of["pos"], kept["neg"], of["neg"], f"; {unjudged} had no judgment" if unjudged else "")
    return keep, summary
