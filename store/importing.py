"""Installing a version built elsewhere (e.g. pulled from the Hub) with its id, manifest
and lineage kept exactly."""
from __future__ import annotations

import logging
import os
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from .errors import StoreError
from .hashing import content_hash_of, sha256_stream
from .leftovers import tmp_name
from .manifest import MANIFEST, Manifest
from .spec import NAME_RE, BuildResult

if TYPE_CHECKING:
    from .publishing import Publishing

log = logging.getLogger(__name__)


def import_version(store: "Publishing", manifest: Manifest, source_dir: str, manifest_text: str | None = None,
                   verify: bool = True) -> BuildResult:
    """Install the version whose files sit in the local folder ``source_dir``
    (``manifest_text`` is written verbatim if given).

    Same protocol as :meth:`Store.build`: temporary folder, moved into place, manifest last.
    An existing version with the same content hash is a no-op; with another content hash,
    or a file that does not match its manifest hash, nothing is installed.
    """
    if not NAME_RE.match(manifest.name) or not NAME_RE.match(manifest.version):
        raise StoreError(f"bad version reference {manifest.ref!r} in an imported manifest")
    existing = store.read_manifest(manifest.name, manifest.version)
    if existing is not None:
        if existing.content_hash != manifest.content_hash:
            raise StoreError(f"{manifest.ref} already exists in {store.location.url} with different content "
                             f"({existing.content_hash[:12]} here, {manifest.content_hash[:12]} imported)")
        log.info("%s is already here", manifest.ref)
        return BuildResult(existing, built=False)
    if verify:
        verify_version_files(manifest, source_dir)
    tmp = store.location.join(manifest.name, tmp_name(manifest.version))
    try:
        for rel in sorted(manifest.files):
            target = f"{tmp}/{rel}"
            if store.location.is_local:
                store.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            store.fs.put_file(os.path.join(source_dir, *rel.split("/")), target)
    except BaseException:
        store._remove(tmp)
        raise
    text = manifest_text if manifest_text is not None else manifest.to_json()
    if not store._publish(tmp, manifest, text, replace=False):
        store._remove(tmp)
        winner = store.read_manifest(manifest.name, manifest.version)
        assert winner is not None
        if winner.content_hash != manifest.content_hash:
            raise StoreError(f"{manifest.ref} was published concurrently with different content")
        return BuildResult(winner, built=False)
    store._record_published(manifest)
    log.info("imported %s (%d files)", manifest.ref, len(manifest.files))
    return BuildResult(manifest, built=True)


def check_file_paths(manifest: Manifest) -> None:
    """Refuse a manifest (e.g. from the Hub) naming files outside its version folder."""
    for rel in manifest.files:
        parts = PurePosixPath(rel).parts
        if not parts or rel.startswith("/") or ".." in parts or rel == MANIFEST:
            raise StoreError(f"{manifest.ref}: unsafe file path {rel!r} in manifest")


def verify_version_files(manifest: Manifest, source_dir: str) -> None:
    """Check every file of ``manifest`` in the local folder ``source_dir`` (size, sha256),
    and the manifest's own content hash; raise a one-line :class:`StoreError` otherwise."""
    check_file_paths(manifest)
    if content_hash_of(manifest.files) != manifest.content_hash:
        raise StoreError(f"{manifest.ref}: manifest content hash does not match its file list")
    for rel, info in sorted(manifest.files.items()):
        path = os.path.join(source_dir, *PurePosixPath(rel).parts)
        if not os.path.isfile(path):
            raise StoreError(f"{manifest.ref}: file {rel} is missing")
        with open(path, "rb") as handle:
            got = sha256_stream(handle)
        if got != info["sha256"] or os.path.getsize(path) != info["size"]:
            raise StoreError(f"{manifest.ref}: {rel} has sha256 {got[:12]}..., the manifest says "
                             f"{info['sha256'][:12]}...; nothing installed")
