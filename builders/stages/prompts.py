"""Import prompt sets (trait datasets and inference sets) into the store.

    python -m builders.prompts --set sycophancy_instruction      # a set named in catalog.yaml
    python -m builders.prompts --all                              # every set in the catalog
    python -m builders.prompts --path ../shared/data/trait-interp/traits/pv_instruction/sycophancy --name pv_sycophancy

Reads the formats of the trait-interp and persona-vectors projects (see datasets/README.md).
Each set becomes dataset ``prompts-<name>``; its version is a hash of the source files'
content, so editing a file makes a new version and an unchanged import is a no-op.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from store import BuildResult, BuildSpec, Manifest, Store

from builders.shared import names
from builders.shared.common import BuildError

BUILDER = "builders.prompts"
CODE_VERSION = "2"  # 2: set-level system prompts on rows, extra always a JSON string, typed schema, meta kept


def _source_digest(path: Path, files: list[str]) -> dict[str, str]:
    """Content hashes of the source files: the version changes when a file does."""
    del path  # source_files are already usable paths
    return {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in sorted(files)}


def import_prompt_set(store: Store, path: Path, name: str, trait: str | None = None,
                      force: bool = False) -> BuildResult:
    """Parse and validate ``path`` and publish it as ``prompts-<name>``."""
    import pyarrow as pa

    from transforms.prompts import arrow_schema, load_prompt_set

    if not path.exists():
        raise BuildError(f"prompt set {name!r}: {path} does not exist")
    prompt_set = load_prompt_set(path, name=name)
    spec = BuildSpec(
        name=names.prompts(name), kind="prompts", builder=BUILDER, code_version=CODE_VERSION,
        params={"set": name, "trait": trait, "style": prompt_set.style,
                "sources": _source_digest(path, prompt_set.source_files)},
        parents={}, identity={},
    )

    def produce(writer) -> None:
        rows = [dict(row, prompt_set=name, trait=trait) for row in prompt_set.rows]
        # one schema for every set: columns a set leaves empty are strings, not nulls
        writer.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(("prompt_set", "trait"))))
        meta = {"name": name, "kind": prompt_set.kind, "style": prompt_set.style, "trait": trait,
                "definition": prompt_set.definition, "steering": prompt_set.steering, "meta": prompt_set.meta}
        if prompt_set.lexicon is not None:
            meta["lexicon"] = prompt_set.lexicon
        writer.write_bytes("prompt_set.json", json.dumps(meta, indent=1, ensure_ascii=False).encode())
        pos = sum(1 for r in rows if r.get("polarity") == "pos")
        neg = sum(1 for r in rows if r.get("polarity") == "neg")
        paired = len({r["pair_id"] for r in rows if r.get("pair_id")})
        writer.summary.update({"style": prompt_set.style, "prompts": len(rows), "pos": pos, "neg": neg, "pairs": paired})

    return store.build(spec, produce, force=force)


def ensure_prompt_set(store: Store, catalog, set_name: str) -> "Manifest":
    """The current version of a catalog prompt set, importing it first if needed."""
    entry = catalog.prompt_set(set_name)
    return import_prompt_set(store, entry.path, entry.name, entry.trait).manifest
