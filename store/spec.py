"""What a version is before and after publishing (:class:`BuildSpec`, :class:`BuildResult`)
and the names the store accepts: shared by :mod:`store.core` and :mod:`store.importing`
so that neither imports the other's module."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import StoreError
from .hashing import version_id
from .manifest import Manifest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def match_version(name: str, prefix: str, versions: Iterable[str], where: str) -> str:
    """The one id in ``versions`` (of dataset ``name`` in store ``where``) starting with
    ``prefix``; a :class:`StoreError` when none or several do."""
    matches = [v for v in versions if v.startswith(prefix)]
    if not matches:
        raise StoreError(f"no version of {name!r} matches {prefix!r} in {where}")
    if len(matches) > 1:
        raise StoreError(f"version prefix {prefix!r} of {name!r} is ambiguous: {', '.join(matches)}")
    return matches[0]


@dataclass(frozen=True)
class BuildSpec:
    """Everything that determines a version: its id is a hash of these fields."""

    name: str
    kind: str
    builder: str
    code_version: str
    params: dict[str, Any]
    parents: dict[str, str]  # role -> "dataset@version"
    identity: dict[str, Any]

    @property
    def version(self) -> str:
        return version_id(self.builder, self.code_version, self.params, self.parents, self.identity)


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    built: bool  # False when the version already existed ("up to date")
