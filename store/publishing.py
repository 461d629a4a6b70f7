"""Moving a finished version folder into place so that readers never see half of it.

Local disk: the folder is moved with one atomic ``os.rename`` that refuses an existing
folder (:func:`store.atomic.move_folder`), and the manifest is written via temp file +
rename (:func:`store.atomic.write_atomic`).

Object stores (S3, ``memory://`` ...) have no atomic rename. There a publisher first
creates the claim object ``<dataset>/.claim-<version>`` with a conditional create (S3
``If-None-Match: *``): exactly one publisher gets it and only that one copies its files
(server-side) into ``<dataset>/<version>/``; the others wait for its manifest and reuse
it. The manifest is the commit point: written last, also with a conditional create.
The claim holder refreshes the claim while it copies and deletes it after the commit; a
publisher that gets the claim and then finds a manifest releases it and reuses that
version. A claim not refreshed for ``Store.claim_stale_after`` seconds is the leftover
of a killed publisher and is taken over.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from .atomic import move_folder, write_atomic
from .errors import StoreError, storage_errors
from .index import CatalogIndex
from .manifest import MANIFEST, Manifest

log = logging.getLogger(__name__)

CLAIM_PREFIX = ".claim-"  # object stores: ``<dataset>/.claim-<version>``


class Publishing:
    """The publishing half of :class:`store.core.Store` (which provides ``location``,
    ``fs``, ``_fresh``, ``_remove`` and ``read_manifest``)."""

    #: object stores: a claim not refreshed for this long, without a manifest, is taken over
    claim_stale_after: float = 120.0
    #: object stores: files copied per batch between claim refreshes
    copy_batch: int = 64

    def _publish(self, tmp: str, manifest: Manifest, text: str, replace: bool) -> bool:
        """Move the finished folder ``tmp`` to ``<dataset>/<version>`` and commit ``text`` as
        its manifest. False when another publisher's manifest for that version won."""
        final = self.location.join(manifest.name, manifest.version)
        if self.location.is_local:
            published = self._rename_into_place(tmp, final, replace)
            if published:
                self._write_manifest(final, text)
            return published
        try:
            return self._publish_objects(tmp, final, manifest, text, replace)
        finally:
            self._remove(tmp)

    def _record_published(self, manifest: Manifest) -> None:
        """Add a committed version to the catalog index. The index is a cache: when it cannot
        be written, the version is still published and readers find it by listing."""
        try:
            CatalogIndex(self).record(manifest)
        except (OSError, ValueError, *storage_errors()) as err:
            log.warning("catalog index not updated for %s (%s); readers will find it by listing", manifest.ref, err)

    # -- local disk: atomic rename
    def _rename_into_place(self, tmp: str, final: str, replace: bool) -> bool:
        """Move the finished ``tmp`` folder to ``final``. False when another publisher's
        complete version is already there. On local disk the rename is atomic and refuses
        an existing folder; a folder that gets no manifest within a few seconds is the
        leftover of a killed build and is replaced."""
        if replace:  # a forced rebuild: hide the old version (manifest first), then replace it
            self.fs.rm(f"{final}/{MANIFEST}")
            self._remove(final)
        for _ in range(3):
            if move_folder(tmp, final):
                return True
            if self._wait_for_manifest(final):
                return False
            self._remove(final)
        raise StoreError(f"could not publish {final}: another process keeps replacing it")

    def _wait_for_manifest(self, final: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fs.exists(f"{final}/{MANIFEST}"):
                return True
            if not self.fs.exists(final):
                return False
            time.sleep(0.02)
        return self.fs.exists(f"{final}/{MANIFEST}")

    def _write_manifest(self, final: str, text: str) -> None:
        """Write to a temporary name, then rename: a reader never sees half a manifest."""
        write_atomic(self.location, f"{final}/{MANIFEST}", text)

    # -- object stores: conditional-create claim, server-side copy, manifest as commit point
    def _publish_objects(self, tmp: str, final: str, manifest: Manifest, text: str, replace: bool) -> bool:
        """Copy ``tmp`` into ``final`` and commit the manifest, or return False when another
        publisher's manifest for this version is (or becomes) visible."""
        name, version = manifest.name, manifest.version
        claim = self.location.join(name, CLAIM_PREFIX + version)
        if replace:  # a forced rebuild: hide the old version (manifest first)
            self._remove(f"{final}/{MANIFEST}")
        while True:
            token = uuid.uuid4().hex
            if not self._take_claim(name, version, claim, token):
                return False
            outcome = None  # True: committed; False: another manifest won; None: claim lost
            try:
                self._remove(final)  # no manifest and we hold the claim: a leftover, or the replaced version
                rels = sorted(manifest.files)
                refreshed = time.monotonic()
                for i in range(0, len(rels), self.copy_batch):
                    batch = rels[i:i + self.copy_batch]
                    self.fs.copy([f"{tmp}/{r}" for r in batch], [f"{final}/{r}" for r in batch])
                    if time.monotonic() - refreshed > self.claim_stale_after / 4:
                        if not self._refresh_claim(claim, token):
                            break
                        refreshed = time.monotonic()
                else:
                    if self._claim_token(claim) == token:
                        try:  # the commit point: readers see the version once this object exists
                            self.fs.pipe_file(f"{final}/{MANIFEST}", text.encode("utf-8"),
                                              mode="create")
                            outcome = True
                        except FileExistsError:
                            outcome = False
            finally:
                if self._claim_token(claim) == token:
                    if not outcome and self.read_manifest(name, version) is None:
                        self._remove(final)  # our copies: nobody else writes here while we hold the claim
                    self._remove(claim)  # released: a later publisher claims, then sees the manifest
                self._fresh(self.location.join(name))
            if outcome is not None:
                return outcome
            log.warning("lost the claim on %s@%s (it went stale); waiting for the new holder", name, version)

    def _claim_payload(self, token: str) -> bytes:
        import os
        import socket

        return json.dumps({"token": token, "time": time.time(), "host": socket.gethostname(),
                           "pid": os.getpid()}).encode("utf-8")

    def _read_claim(self, claim: str) -> dict[str, Any] | None:
        self._fresh(claim)
        try:
            with self.fs.open(claim, "rb") as handle:
                return json.loads(handle.read())
        except (FileNotFoundError, ValueError):
            return None

    def _claim_token(self, claim: str) -> str | None:
        held = self._read_claim(claim)
        return None if held is None else held.get("token")

    def _claim_is_fresh(self, claim: str) -> bool:
        held = self._read_claim(claim)
        return held is not None and time.time() - float(held.get("time", 0)) < self.claim_stale_after

    def _take_claim(self, name: str, version: str, claim: str, token: str) -> bool:
        """Create ``claim`` conditionally. While another publisher holds a fresh claim, wait
        for its manifest (False once it is there); take over a stale claim."""
        while True:
            try:
                self.fs.pipe_file(claim, self._claim_payload(token), mode="create")
            except FileExistsError:
                pass
            else:
                if self._claim_token(claim) != token:  # a server ignoring If-None-Match: the last writer wins
                    continue
                if self.read_manifest(name, version) is not None:  # published, claim released
                    self._remove(claim)
                    return False
                return True
            if self.read_manifest(name, version) is not None:
                return False
            held = self._read_claim(claim)
            if held is None:  # released meanwhile: try again
                continue
            if time.time() - float(held.get("time", 0)) >= self.claim_stale_after:
                log.warning("taking over the stale claim on %s@%s (held by %s pid %s)",
                            name, version, held.get("host"), held.get("pid"))
                if self._claim_token(claim) == held.get("token"):
                    self._remove(self.location.join(name, version))
                    self._remove(claim)
                continue
            time.sleep(0.05)

    def _refresh_claim(self, claim: str, token: str) -> bool:
        """Renew our claim's timestamp; False when it is no longer ours."""
        if self._claim_token(claim) != token:
            return False
        self.fs.pipe_file(claim, self._claim_payload(token))
        return True
