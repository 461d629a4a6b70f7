"""The catalog facts a stage's outputs depend on beyond its parameters, for its plan key.

Pointing an experiment at another checkpoint changes a model id here, so every stage that
runs that variant gets a new key and rebuilds; a stage that never touches it keeps its key.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from builders.graph.spec import StageSpec

_DIGESTS: dict[tuple[str, float], str] = {}


def variant_fact(variant: Any) -> dict[str, Any]:
    model = variant.model
    return {"model": model.id, "revision": model.revision, "adapter": variant.adapter, "dtype": variant.dtype,
            "quantization": None if variant.quantization is None else variant.quantization.label}


def path_digest(path: Path) -> str:
    """Hash of a prompt set's files (names and bytes), cached by modification time."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = max((p.stat().st_mtime for p in files), default=0.0)
    cache_key = (str(path), stamp)
    if cache_key not in _DIGESTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            digest.update(file.read_bytes())
        _DIGESTS[cache_key] = digest.hexdigest()[:16]
    return _DIGESTS[cache_key]


def stage_facts(catalog: Any, experiment: Any, stages: dict[str, StageSpec], kinds: dict[str, Any]) -> dict[str, dict]:
    """Per stage: the variants, prompt sets and judges it names (resolved to what they are),
    the application variant where its kind uses it, and the generation defaults."""
    facts: dict[str, dict[str, Any]] = {}
    for name, spec in stages.items():
        kind = kinds[spec.kind]
        fact: dict[str, Any] = {}
        for key, value in spec.params.items():
            ptype = kind.params[key].type if key in kind.params else None
            if ptype == "variant":
                fact[key] = variant_fact(experiment.variants[value])
            elif ptype == "prompt_set":
                fact[key] = path_digest(catalog.prompt_set(value).path)
            elif ptype == "judges":
                judge = dict(experiment.judges[value])
                reference = judge.get("reference")
                if reference in catalog.models:
                    judge["reference_id"] = catalog.models[reference].id
                fact[key] = judge
        if kind.uses_application and experiment.application:
            fact["application"] = variant_fact(experiment.variants[experiment.application])
        if kind.uses_generation:  # every stage default (responses, activations, steering ...)
            fact["defaults"] = {k: v for k, v in catalog.defaults.items() if k != "experiment"}
        facts[name] = fact
    return facts
