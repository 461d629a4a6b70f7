"""Canonical JSON and the hashes that make version ids content/lineage addresses."""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, BinaryIO

VERSION_ID_LENGTH = 16


def _normalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _normalize(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        if value.is_integer():
            return int(value)  # 2.0 and 2 are the same parameter
        return value
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot hash parameter value of type {type(value).__name__}: {value!r}")


def canonical_json(value: Any) -> str:
    """Stable JSON: sorted keys, no whitespace, integral floats as ints."""
    return json.dumps(_normalize(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def version_id(
    builder: str,
    code_version: str,
    params: dict[str, Any],
    parents: dict[str, str],
    identity: dict[str, Any] | None = None,
) -> str:
    """Hash of everything that determines a build's output.

    ``parents`` maps a role (e.g. ``"prompts"``) to the exact ``name@version`` consumed;
    ``identity`` carries model id/revision, tokenizer fingerprint, judge prompt hash ...
    """
    payload = {
        "builder": builder,
        "code_version": str(code_version),
        "params": params,
        "parents": parents,
        "identity": identity or {},
    }
    return sha256_text(canonical_json(payload))[:VERSION_ID_LENGTH]


def content_hash_of(files: dict[str, dict[str, Any]]) -> str:
    """A manifest's ``content_hash``: a hash over every file's sha256 (equal bytes, equal hash)."""
    return sha256_text(canonical_json({k: v["sha256"] for k, v in files.items()}))


def sha256_stream(handle: BinaryIO) -> str:
    """sha256 of a binary file just opened (local, fsspec or in-memory), via
    ``hashlib.file_digest``: an in-memory file is hashed whole, whatever its position."""
    return hashlib.file_digest(handle, "sha256").hexdigest()
