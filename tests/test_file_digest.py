"""File hashing through ``hashlib.file_digest`` (issue 14): the same digests as the 1 MiB
block loop it replaced, on random bytes and on the real packaged SmolLM2 GGUF, whose sha256
the cached checkpoint recorded when it was converted."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from transforms.models import packaged as pm


def _old_block_loop(path) -> str:  # the replaced code, verbatim
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 17])
def test_file_digest_equals_the_block_loop(tmp_path, size):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    assert pm._sha256_file(path) == _old_block_loop(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_packaged_gguf_digest_is_the_recorded_one():
    spec = pm.packaged_model("pkg:smollm2-135m-instruct")
    try:
        gguf = pm._source_files(spec)[0]
    except pm.ModelLoadError as err:
        pytest.skip(f"packaged model not installed: {err}")
    record = pm._read_source_record(pm.models_cache_root() / spec.name)
    if record is None:
        pytest.skip("no converted checkpoint to compare with")
    assert pm._sha256_file(gguf) == record["gguf_sha256"]
