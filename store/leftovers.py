"""Telling a killed build's leftovers from a build still running, so ``gc`` never races a builder.

A publisher writes into ``.tmp-<version>-<nonce>-<pid>-<host>``: on the same host a live pid
means the build is running; a dead one means its folder is garbage. For folders whose owner
cannot be checked (another host, or a finished folder still waiting for its manifest), only
inactivity counts: nothing inside changed for ``min_idle`` seconds.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import fsspec

TMP_PREFIX = ".tmp-"
_TMP_RE = re.compile(r"^\.tmp-(?P<version>[0-9a-f]+)-(?P<nonce>[0-9a-f]{8})(?:-(?P<pid>\d+)-(?P<host>[0-9a-f]{8}))?$")


def host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def tmp_name(version: str) -> str:
    """The private folder name of one publishing attempt, naming its owner process."""
    return f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}-{os.getpid()}-{host_tag()}"


def owner_alive(name: str) -> bool | None:
    """True/False for a temporary folder made on this host; None when it cannot be known."""
    match = _TMP_RE.match(name)
    if not match or match["pid"] is None or match["host"] != host_tag():
        return None
    pid = int(match["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def idle_seconds(fs: "fsspec.AbstractFileSystem", path: str) -> float:
    """Seconds since anything under ``path`` was last modified (0 when unknown)."""
    newest = 0.0
    try:
        entries = fs.find(path, withdirs=True, detail=True).values()
    except FileNotFoundError:
        return float("inf")
    for info in entries:
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
        if stamp is None:
            continue
        if hasattr(stamp, "timestamp"):
            stamp = stamp.timestamp()
        newest = max(newest, float(stamp))
    if newest == 0.0:
        return 0.0
    return max(0.0, time.time() - newest)


def is_leftover(fs: "fsspec.AbstractFileSystem", path: str, name: str, min_idle: float) -> bool:
    """Whether the temporary or manifest-less folder ``path`` (basename ``name``) is garbage."""
    alive = owner_alive(name) if name.startswith(TMP_PREFIX) else None
    if alive is not None:
        return not alive
    return idle_seconds(fs, path) >= min_idle
