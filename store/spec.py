"""What a version is before and after publishing (:class:`BuildSpec`, :class:`BuildResult`)
and the names the store accepts: shared by :mod:`store.core` and :mod:`store.importing`
so that neither imports the other's module."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .hashing import version_id
from .manifest import Manifest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


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
