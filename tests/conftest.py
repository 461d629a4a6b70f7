"""Shared pytest fixtures.

Model fixtures load the two real offline models (converted once into the checkpoint
cache, ``$TRAITSTORE_CACHE`` or ``~/.cache/traitstore/models``; the first conversion
takes 1-2 minutes, later loads a few seconds). Other modules may append fixtures below.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as a ``transforms.models.LoadedModel`` (llama, chat template)."""
    from transforms.models import load_model

    return load_model("pkg:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3():
    """Gemma 3 270M base as a ``transforms.models.LoadedModel`` (gemma3_text, no chat template)."""
    from transforms.models import load_model

    return load_model("pkg:gemma3-270m")


@pytest.fixture
def one_thread():
    """Tiny models built from configs: one torch thread is faster and cannot oversubscribe a
    shared machine. Restores the previous count afterwards (an import-time setting would pin
    the whole session, since collection imports every module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a real S3-compatible server on loopback (moto in server mode) -------------------------
S3_BUCKET = "traitstore-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a real HTTP endpoint, not patched boto) with the bucket
    ``traitstore-test``. Stores, builders and subprocesses find it through the environment,
    as a user would: credentials plus ``AWS_ENDPOINT_URL_S3`` (honoured by botocore, hence
    s3fs and zarr's FsspecStore)."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request lines
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": url, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        patch.setenv(key, value)
    patch.delenv("AWS_SESSION_TOKEN", raising=False)
    patch.delenv("AWS_PROFILE", raising=False)
    import boto3

    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield url
    patch.undo()
    server.stop()


@pytest.fixture
def s3_url(s3_endpoint) -> str:
    """A fresh, empty store root ``s3://traitstore-test/<random prefix>``."""
    import uuid

    return f"s3://{S3_BUCKET}/ts-{uuid.uuid4().hex[:8]}"


# ---- two cores, two workers: threads and order ---------------------------------------------
# The README's test command runs two xdist workers. Each worker, and every process it starts
# (builders in subprocesses, notebook kernels), gets its share of the cores: two workers with
# two torch threads each would oversubscribe CI's two cores. A notebook kernel alone is slower
# on one thread (the twin: 1207 s vs 720 s on two), but the other core runs the rest meanwhile.
def pytest_configure(config):
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // workers))


# The longest tests (minutes each, measured by --durations) go first, so that a worker is not
# left running one of them alone at the end while the other idles.
LONGEST_FIRST = ("test_notebook_seed001.py", "test_notebook_seed000.py", "test_notebook_seed004.py",
                 "test_organism.py", "test_notebook_seed003.py", "test_judges_perplexity.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
