"""The one way a file inside the store is replaced whole: readers see the old bytes or the
new ones, never half a file; and the one way a finished local folder is moved into place.

Local disk: written to a temporary name beside the target (``.<name>.<nonce>.tmp``, so a
killed writer leaves a dot-file that readers skip), then ``os.replace``; ``exclusive``
uses ``os.link``, which refuses an existing target. Object stores: one PUT, which is
atomic (a rename there would be copy + delete); ``exclusive`` is a conditional create
(S3 ``If-None-Match: *``).

A folder (a version being published, a verified download) is filled under a temporary
name and moved with :func:`move_folder`: one ``os.rename``, which refuses a target folder
that holds anything, so of two movers exactly one wins.
"""
from __future__ import annotations

import io
import os
import uuid
from typing import BinaryIO, Callable, Union

from .fs import Location

Payload = Union[bytes, str, Callable[[BinaryIO], None]]


def _as_bytes(data: Payload) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    buffer = io.BytesIO()
    data(buffer)
    return buffer.getvalue()


def write_atomic(location: Location, path: str, data: Payload, exclusive: bool = False) -> bool:
    """Write ``data`` (bytes, text as UTF-8, or a callback writing into a binary handle) to
    ``path`` on ``location``. With ``exclusive``, nothing is written when ``path`` already
    exists and False is returned; otherwise True."""
    fs = location.fs
    if not location.is_local:
        try:
            fs.pipe_file(path, _as_bytes(data), mode="create" if exclusive else "overwrite")
        except FileExistsError:
            return False
        return True
    folder, _, base = path.rpartition("/")
    os.makedirs(folder or ".", exist_ok=True)
    tmp = f"{folder}/.{base}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(_as_bytes(data))
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic create-if-absent of a complete file
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def move_folder(source: str, target: str) -> bool:
    """Rename the local folder ``source`` to ``target`` in one step; False (``source`` left
    as it is) when ``target`` already exists with files in it, or cannot be replaced."""
    try:
        os.rename(source, target)
    except OSError:
        return False
    return True
