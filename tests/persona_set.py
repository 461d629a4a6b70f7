"""A small persona set and a catalog pointing at it, written into a temporary folder (for the
seed 003 builder tests): template rows ``(id, pair, side, register, text)``, question rows
``(id, question, expert_token, simple_token)``, one SmolLM2 variant ``a`` in experiment ``s``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

TEMPLATE_KEYS = ("id", "pair", "side", "register", "text")
QUESTION_KEYS = ("id", "question", "expert_token", "simple_token")


def persona_catalog(root: Path, templates: Sequence[tuple[str, ...]], questions: Sequence[tuple[str, ...]],
                    prompt_format: str | None = None) -> tuple[Any, Any, Path]:
    """``(store, catalog, catalog_path)`` with the set as prompt set ``persona_t``."""
    import yaml

    from builders.shared.catalog import load_catalog
    from store import Store

    folder = root / "persona_t"
    folder.mkdir()
    spec: dict[str, Any] = {"templates": [dict(zip(TEMPLATE_KEYS, t)) for t in templates]}
    if prompt_format is not None:
        spec["prompt_format"] = prompt_format
    (folder / "persona.json").write_text(json.dumps(spec))
    (folder / "questions.jsonl").write_text("".join(json.dumps(dict(zip(QUESTION_KEYS, q))) + "\n" for q in questions))
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"smol": {"id": "pkg:smollm2-135m-instruct"}},
        "prompt_sets": {"persona_t": {"path": str(folder)}},
        "experiments": {"s": {"variants": {"a": {"model": "smol"}}, "prompt_sets": ["persona_t"]}},
        "defaults": {"experiment": "s"},
    }))
    return Store(str(root / "store")), load_catalog(path), path
