"""The ``README.md`` dataset card of a Hub repo holding store versions.

Regenerated from every manifest on the repo at each push, so it always describes the
whole repo. YAML front matter ``configs`` (Hugging Face "manual configuration") makes each
pushed table loadable by ``datasets.load_dataset(<repo>, name=<config>)``:

- ``<dataset>``                     main table (``data``) of the dataset's latest pushed version
- ``<dataset>--<table>``            another table of that version
- ``<dataset>--<version prefix>``   main table of one exact version (prefix: 8+ hex chars)
- ``<dataset>--<version prefix>--<table>``

The body lists each version: id, kind, builder, params, identity, content hash, tables,
arrays, and its lineage: every parent ref and where it is on the Hub
(``hf://datasets/<repo>/<dataset>/<version>``) or "not on the Hub".
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from .manifest import Manifest

CONFIG_SEP = "--"
MIN_PREFIX = 8


def version_prefixes(versions: Iterable[str]) -> dict[str, str]:
    """Shortest prefixes (at least 8 characters) that tell a dataset's versions apart."""
    versions = sorted(set(versions))
    out = {}
    for v in versions:
        n = MIN_PREFIX
        while n < len(v) and any(o != v and o.startswith(v[:n]) for o in versions):
            n += 1
        out[v] = v[:n]
    return out


def hub_location(repo_id: str, manifest_or_ref: Manifest | str) -> str:
    ref = manifest_or_ref.ref if isinstance(manifest_or_ref, Manifest) else manifest_or_ref
    name, _, version = ref.partition("@")
    return f"hf://datasets/{repo_id}/{name}/{version}"


def _data_files(m: Manifest, table: str) -> list[dict[str, Any]]:
    splits = m.tables[table]["splits"]
    return [{"split": split, "path": [f"{m.name}/{m.version}/{shard}" for shard in info["shards"]]}
            for split, info in splits.items()]


def card_configs(manifests: list[Manifest], latest: dict[str, str]) -> list[dict[str, Any]]:
    """The ``configs`` list: one per (version, table), plus unversioned names for the latest."""
    configs: list[dict[str, Any]] = []
    by_name: dict[str, list[Manifest]] = {}
    for m in manifests:
        by_name.setdefault(m.name, []).append(m)
    for name in sorted(by_name):
        versions = sorted(by_name[name], key=lambda m: (m.created_at, m.version))
        prefixes = version_prefixes(m.version for m in versions)
        newest = next((m for m in versions if m.version == latest.get(name)), versions[-1])
        for m, label in [(newest, name)] + [(m, f"{name}{CONFIG_SEP}{prefixes[m.version]}") for m in versions]:
            for table in sorted(m.tables, key=lambda t: (t != "data", t)):
                config = label if table == "data" else f"{label}{CONFIG_SEP}{table}"
                configs.append({"config_name": config, "data_files": _data_files(m, table)})
    return configs


def _lineage_line(repo_id: str, role: str, ref: str, on_hub: set[str]) -> str:
    where = f"`{hub_location(repo_id, ref)}`" if ref in on_hub else "not on the Hub"
    return f"- {role}: `{ref}` — {where}"


def _version_section(repo_id: str, m: Manifest, on_hub: set[str], is_latest: bool) -> list[str]:
    lines = [f"#### `{m.ref}`" + (" (latest)" if is_latest else ""), ""]
    lines += [
        f"- version id: `{m.version}`",
        f"- kind: `{m.kind}`",
        f"- builder: `{m.builder}` (code version {m.code_version})",
        f"- created: {m.created_at}",
        f"- content hash: `{m.content_hash}`",
        f"- files: {len(m.files)} ({sum(int(f['size']) for f in m.files.values()):,} bytes)",
        f"- location: `{hub_location(repo_id, m)}`",
    ]
    for table, info in sorted(m.tables.items()):
        lines.append(f"- table `{table}`: {info['rows']} rows")
    for array, info in sorted(m.arrays.items()):
        dims = " x ".join(f"{d}={n}" for d, n in zip(info.get("dimension_names", []), info.get("shape", [])))
        lines.append(f"- array `{array}` (Zarr v3, `{info.get('path', '')}`): {dims} {info.get('dtype', '')}")
    lines += ["", "Params:", "", "```json", json.dumps(m.params, indent=2, sort_keys=True), "```", ""]
    if m.identity:
        lines += ["Identity:", "", "```json", json.dumps(m.identity, indent=2, sort_keys=True), "```", ""]
    lines.append("Lineage (parents):")
    lines.append("")
    if m.parents:
        lines += [_lineage_line(repo_id, role, ref, on_hub) for role, ref in sorted(m.parents.items())]
    else:
        lines.append("- (none: a source dataset)")
    lines.append("")
    return lines


def render_card(repo_id: str, manifests: list[Manifest], latest: dict[str, str]) -> str:
    """The full ``README.md``: YAML front matter, then one section per dataset version."""
    import yaml

    front = {"configs": card_configs(manifests, latest), "tags": ["traitstore"]}
    on_hub = {m.ref for m in manifests}
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [
        f"# {repo_id}",
        "",
        "Dataset versions pushed from a traitstore store with "
        "`python -m store push`. Each version sits under `<dataset>/<version>/` exactly as in the "
        "store: `manifest.json` (files with sha256, params, parents), Parquet tables in `data/` and "
        "`tables/<table>/`, Zarr v3 arrays in `arrays/<name>.zarr/`, other files (e.g. safetensors "
        "vectors) as they are. `<dataset>/_latest` holds the version id pushed last.",
        "",
        "Load a table: `datasets.load_dataset(\"" + repo_id + "\", name=\"<dataset>\")` (latest) or "
        "`name=\"<dataset>--<version prefix>\"`; other tables: `name=\"<dataset>--<table>\"`. "
        "Install versions with their manifests and lineage: `python -m store pull " + repo_id + "`.",
        "",
        "## Versions",
        "",
    ]
    for name in sorted({m.name for m in manifests}):
        versions = sorted((m for m in manifests if m.name == name), key=lambda m: (m.created_at, m.version))
        newest = latest.get(name, versions[-1].version)
        lines += [f"### `{name}`", ""]
        for m in reversed(versions):
            lines += _version_section(repo_id, m, on_hub, m.version == newest)
    return "\n".join(lines).rstrip() + "\n"
