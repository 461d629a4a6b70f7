"""The converted-checkpoint cache: its root, and writing files and folders in it atomically.

Everything is written in a temporary sibling and renamed into place (:func:`atomic_write`);
a checkpoint folder also under a file lock (:func:`publish_atomically`), so a killed build
never leaves a half directory and concurrent builders do the work once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from transforms.models.refs import ModelLoadError

# Logged under the public module's name, which callers and tests configure.
logger = logging.getLogger(__name__)

_LOCK_TIMEOUT_S = 3600.0


def models_cache_root() -> Path:
    """Root of converted checkpoints: ``$TRAITSTORE_CACHE`` or ``~/.cache/traitstore/models``."""
    env = os.environ.get("TRAITSTORE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "traitstore" / "models"


@contextlib.contextmanager
def atomic_write(final: Path, *, directory: bool = False) -> Iterator[Path]:
    """Write ``final`` all at once: the block fills the yielded temporary sibling (a path not
    yet created, or with ``directory`` an empty folder), which then replaces ``final``.

    The one temp-then-rename of this package (checkpoints, memos, assembled GGUFs), so a
    killed writer never leaves a half file where readers look. On success the result is
    made world-readable (a cache others read); a folder already at ``final`` is swapped
    out and removed. On an error the temporary is removed and ``final`` is left as it was.
    Temporaries are named ``.tmp-<name>@...`` (:func:`publish_atomically` clears stale ones).
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{final.name}@"
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent)) if directory \
        else parent / f"{prefix}{uuid.uuid4().hex}"
    try:
        yield work
        _make_readable(work)
        if not directory:
            os.replace(work, final)
            return
        old = None
        if final.exists():  # stale (e.g. package upgraded): swap it out
            old = parent / f"{prefix}old-{uuid.uuid4().hex}"
            os.rename(final, old)
        os.rename(work, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.is_dir():
            shutil.rmtree(work, ignore_errors=True)
        elif work.exists():
            work.unlink(missing_ok=True)


def publish_atomically(
    final: Path,
    build: Callable[[Path], None],
    is_valid: Callable[[Path], bool],
    *,
    lock_timeout: float = _LOCK_TIMEOUT_S,
) -> bool:
    """Make ``final`` a valid directory, building it at most once across processes.

    ``build(tmp_dir)`` fills an empty temporary directory, published by :func:`atomic_write`.
    Runs under ``<parent>/.<name>.lock``; stale temporary directories (``.tmp-<name>@*``)
    from killed builds are removed under the lock. Returns True when this call built it,
    False when a valid one was already there.
    """
    from filelock import FileLock, Timeout

    if is_valid(final):
        return False
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(parent / f".{final.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process to finish building %s", final)
        try:
            lock.acquire(timeout=lock_timeout)
        except Timeout:
            raise ModelLoadError(
                f"timed out after {lock_timeout:.0f}s waiting for the lock {lock.lock_file}"
            ) from None
    try:
        if is_valid(final):  # another process finished while we waited
            return False
        for stale in parent.glob(f".tmp-{final.name}@*"):
            # only lock holders create these, so any found now belongs to a dead build
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with atomic_write(final, directory=True) as work:
                build(work)
        except OSError:
            if not is_valid(final):  # someone without the lock raced us and lost
                raise
        return True
    finally:
        lock.release()


def _make_readable(path: Path) -> None:
    """mkdtemp makes 0700 folders (and some writers 0600 files): open the cache for reading."""
    with contextlib.suppress(OSError):
        if path.is_file():
            os.chmod(path, 0o644)
            return
        os.chmod(path, 0o755)
        for f in path.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
