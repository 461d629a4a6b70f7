"""Where the store lives: a local folder or any fsspec URL (``memory://``, ``s3://`` ...)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    import fsspec

DEFAULT_ROOT = "artifacts"
ROOT_ENV = "TRAITSTORE_ROOT"


@dataclass(frozen=True)
class Location:
    """A filesystem plus the root path of the store on it."""

    fs: "fsspec.AbstractFileSystem"
    root: str  # path on ``fs``, no protocol, no trailing slash
    url: str  # what the user gave, for messages

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return "file" in protocols or "local" in protocols

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *[p.strip("/") for p in parts if p]])

    def uri(self, path: str) -> str:
        """A URL other libraries (DuckDB, zarr, datasets) can open for ``path``."""
        if self.is_local:
            return path
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{path.lstrip('/')}" if protocol != "memory" else f"memory://{path}"

    def require_existing(self) -> None:
        """For readers: a local root that is not there is a typo in ``--store``, not an empty
        store. Object stores have no folders (an empty prefix is a new store): not checked."""
        if self.is_local and not os.path.isdir(self.root):
            problem = "is not a folder" if os.path.exists(self.root) else "does not exist"
            raise StoreError(f"store root {self.url!r} {problem}")

    def require_writable(self, create: bool = True) -> None:
        """For publishers, before any work: the local root exists (made here unless ``create``
        is False, then its nearest existing folder is tried) and a file can be created in it.
        Object stores report refused writes as storage errors."""
        if not self.is_local:
            return
        import tempfile

        folder = self.root
        try:
            if create:
                os.makedirs(folder, exist_ok=True)
            else:  # a failed pull leaves no folder behind: probe where it would be made
                while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
                    folder = os.path.dirname(folder)
            with tempfile.TemporaryFile(dir=folder):  # unnamed where the OS allows: leaves nothing
                pass
        except OSError as err:
            reason = (f"{'it' if folder == self.root else folder} is a file, not a folder"
                      if os.path.isfile(folder) else (err.strerror or str(err)))
            raise StoreError(f"store root {self.url!r} is not writable: {reason}") from None


def resolve_location(url: str | None = None) -> Location:
    """Resolve ``--store`` / ``$TRAITSTORE_ROOT`` / ``./artifacts`` into a :class:`Location`."""
    import fsspec

    given = url or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    try:
        fs, path = fsspec.core.url_to_fs(given)
    except (ValueError, ImportError) as err:  # unknown protocol, or its package is missing
        raise StoreError(f"store URL {given!r}: {str(err).splitlines()[0]}") from None
    if isinstance(path, list):  # globs are not store roots
        raise StoreError(f"store URL {given!r} must name one folder")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        path = os.path.abspath(path)
    return Location(fs=fs, root=path.rstrip("/") or "/", url=given)
