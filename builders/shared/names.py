"""Every dataset name in the store, made here and nowhere else.

A dataset is named ``<kind>-<experiment>-<what it is of>``; versions of it are content
hashes. Builders publish under these names and analyses find their inputs by them, so a
name changed here changes both sides at once.
"""
from __future__ import annotations

import re


def prompts(prompt_set: str) -> str:
    return f"prompts-{prompt_set}"


def responses(experiment: str, variant: str, prompt_set: str) -> str:
    return f"responses-{experiment}-{variant}-{prompt_set}"


def external_responses(name: str) -> str:
    """Responses imported from outside (a JSONL of question/answer pairs)."""
    return f"responses-external-{name}"


def judgments(experiment: str, variant: str, prompt_set: str) -> str:
    return f"judgments-{experiment}-{variant}-{prompt_set}"


def external_judgments(name: str) -> str:
    return f"judgments-external-{name}"


def calibration(judge: str, qualifier: str | None = None) -> str:
    """``judge-calibration-<judge>[-<qualifier>]``; the qualifier (e.g. a reference model)
    is reduced to characters safe in a dataset name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", qualifier).strip("_") if qualifier else ""
    return f"judge-calibration-{judge}" + (f"-{slug}" if slug else "")


def activations(experiment: str, variant: str, prompt_set: str, position_slug: str, component: str,
                replay_from: str | None = None, per_token: bool = False) -> str:
    name = f"activations-{experiment}-{variant}-{prompt_set}-{position_slug}-{component}"
    if replay_from:
        name += f"-replay_{replay_from}"
    return name + ("-per_token" if per_token else "")


def vectors_short(variant: str, prompt_set: str, position_slug: str, component: str, vetted: bool = False,
                  replay_from: str | None = None) -> str:
    """The part of a vectors name after ``vectors-<experiment>-``: what the vectors are of."""
    return (f"{variant}-{prompt_set}-{position_slug}-{component}" + ("-vetted" if vetted else "")
            + (f"-replay_{replay_from}" if replay_from else ""))


def vectors(experiment: str, variant: str, prompt_set: str, position_slug: str, component: str,
            vetted: bool = False, replay_from: str | None = None) -> str:
    return f"vectors-{experiment}-" + vectors_short(variant, prompt_set, position_slug, component, vetted, replay_from)


def short_vectors_name(experiment: str, vectors_name: str) -> str:
    """``vectors-<experiment>-X`` (optionally ``@version``) -> ``X``."""
    return vectors_name.split("@")[0].removeprefix(f"vectors-{experiment}-")


def steering(experiment: str, application: str, vectors_name: str, method: str, mode: str) -> str:
    """``vectors_name`` may be the full vectors dataset name or its short form."""
    return f"steering-{experiment}-{application}-{short_vectors_name(experiment, vectors_name)}-{method}-{mode}"


def combinations(experiment: str, application: str, a_short: str, b_short: str) -> str:
    return f"combinations-{experiment}-{application}-{a_short}-{b_short}"


def compare(experiment: str, variant_a: str, variant_b: str, prompt_set: str) -> str:
    return f"compare-{experiment}-{variant_a}-{variant_b}-{prompt_set}"


def similarity(experiment: str, variant_a: str, variant_b: str, prompt_set: str) -> str:
    return f"similarity-{experiment}-{variant_a}-{variant_b}-{prompt_set}"


def weights(experiment: str, variant_a: str, variant_b: str) -> str:
    return f"weights-{experiment}-{variant_a}-{variant_b}"


def projections(experiment: str, variant: str, prompt_set: str, live: bool = False) -> str:
    return f"projections-{experiment}-{variant}-{prompt_set}" + ("-live" if live else "")


def finetune(experiment: str, variant: str, prompt_set: str, polarity: str) -> str:
    return f"finetune-{experiment}-{variant}-{prompt_set}-{polarity}"


def analysis(of: str) -> str:
    """An analysis of one published dataset, e.g. ``analysis-projections-demo-...``."""
    return f"analysis-{of}"


def precision_analysis(experiment: str, trait: str, replay_from: str | None = None) -> str:
    return f"analysis-precision-{experiment}-{trait}" + (f"-replay_{replay_from}" if replay_from else "")


def viewer(of: str) -> str:
    return f"viewer-{of}"


def crosscoder(experiment: str, variant_a: str, variant_b: str, prompt_set: str, layer: int, kind: str) -> str:
    """``kind``: the training objective (``l1``, ``batch_topk``) or ``imported`` (a public checkpoint)."""
    return f"crosscoder-{experiment}-{variant_a}-{variant_b}-{prompt_set}-L{layer}-{kind}"


def sae(experiment: str, variant: str, prompt_set: str, layer: int, kind: str) -> str:
    return f"sae-{experiment}-{variant}-{prompt_set}-L{layer}-{kind}"


def decomposition(dictionary: str, vectors_name: str, model_index: int | None = None) -> str:
    """Trait vectors of ``vectors_name`` decomposed into the features of a dictionary dataset
    (``model_index``: which model's slice of a crosscoder, ``-m<index>`` after its name)."""
    slice_ = f"-m{model_index}" if model_index is not None else ""
    return f"decomposition-{dictionary}{slice_}-{vectors_name.removeprefix('vectors-')}"


def user_features(experiment: str, variant: str, prompt_set: str, layer: int) -> str:
    return f"userfeatures-{experiment}-{variant}-{prompt_set}-L{layer}"


def detector(experiment: str, variant: str, prompt_set: str) -> str:
    return f"detector-{experiment}-{variant}-{prompt_set}"


def clamping(experiment: str, variant: str, dictionary: str, prompt_set: str) -> str:
    return f"clamping-{experiment}-{variant}-{prompt_set}-{dictionary}"


# seed 003: persona probes, logit lens, patching, ablation (transforms/circuits)
def persona_probe(experiment: str, variant: str, prompt_set: str, position_slug: str) -> str:
    """Probe directions: a vectors dataset (``vectors-...-probe``) steering and projections read."""
    return f"vectors-{experiment}-{variant}-{prompt_set}-{position_slug}-residual-probe"


def logit_lens(experiment: str, variant: str, prompt_set: str, position_slug: str) -> str:
    return f"logitlens-{experiment}-{variant}-{prompt_set}-{position_slug}"


def patching(experiment: str, variant: str, prompt_set: str, kind: str) -> str:
    """``kind``: ``residual``, ``attn_out``, ``mlp_out``, ``heads``, ``heads_by_position`` or ``direction``."""
    return f"patching-{experiment}-{variant}-{prompt_set}-{kind}"


def head_ablation(experiment: str, variant: str, prompt_set: str) -> str:
    return f"ablation-{experiment}-{variant}-{prompt_set}"


def circuits_report(experiment: str, variant: str, prompt_set: str) -> str:
    return f"analysis-circuits-{experiment}-{variant}-{prompt_set}"
