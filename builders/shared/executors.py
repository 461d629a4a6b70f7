"""Where the work units of a build run: ``local`` (in this process, in order) or ``ray``.

    python -m builders.responses ... --executor ray                      # a local Ray cluster
    python -m builders.responses ... --executor ray --ray-address auto   # the running cluster
    python -m builders.activations ... --executor ray --ray-address ray://head:10001 --workers 4

The executor never enters a version id: both run the same units through the same code
(:mod:`builders.shared.units`), so the version id and every byte of the version are the same.
A unit job is any picklable object with ``label`` and ``run_unit(unit) -> UnitMeta``; it
writes its outputs into the store's partial area itself (shared storage on a real cluster)
and returns only small metadata to the driver.

Bit-identical numbers need the same torch thread count everywhere (CPU kernels split work
by thread), so every unit runs with ``threads`` intra-op threads: ``--threads``, default the
driver's torch thread count, for both executors.

Ray workers are actors (one per worker, one CPU each) that keep their loaded models between
units, so a model loads once per worker. Workers import this code from the driver's
repository: a local cluster gets it on ``PYTHONPATH``; a remote one gets it as the
``working_dir`` (or from ``ray job submit --working-dir .``).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Protocol

from builders.shared.common import BuildError
from builders.shared.unit_meta import UnitMeta
from builders.shared.units import Unit

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKING_DIR_EXCLUDES = [".git", ".venv", "artifacts", "**/__pycache__", "notebooks", "benchmarks"]
CONNECT_TIMEOUT = 5.0


class UnitJob(Protocol):
    label: str

    def run_unit(self, unit: Unit) -> UnitMeta: ...


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (same numbers in every process)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class Executor:
    """Runs units of a job; ``on_done(meta)`` is called as each unit finishes."""

    kind = "local"

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise BuildError(f"--threads must be >= 1, got {threads}")
        self._threads = threads

    @property
    def threads(self) -> int:
        """torch threads per unit: as given, else the driver's torch default (resolved on
        first use, so an up-to-date rebuild never imports torch)."""
        if self._threads is None:
            import torch

            self._threads = torch.get_num_threads()
        return self._threads

    def map_units(self, job: UnitJob, units: list[Unit], on_done: Callable[[UnitMeta], None]) -> None:
        for unit in units:
            on_done(job.run_unit(unit))

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class UnitWorker:
    """A Ray actor's body: runs units one at a time; models stay cached in the process."""

    def run(self, job: UnitJob, unit: Unit) -> UnitMeta:
        return job.run_unit(unit)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None) -> None:
        super().__init__(threads)
        if workers is not None and workers < 1:
            raise BuildError(f"--workers must be >= 1, got {workers}")
        self.address = address
        self._connect(address)
        import ray

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if workers is not None and workers > cpus:
            # each actor holds one CPU: actors beyond the cluster's CPUs would never start
            log.warning("--workers %d > the cluster's %d CPUs: using %d workers", workers, cpus, cpus)
        self.workers = min(workers or cpus, cpus)
        self._actors: list[Any] = []

    def _connect(self, address: str | None) -> None:
        import ray

        if ray.is_initialized():  # a notebook or test set Ray up already
            self._owned = False
            return
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address is None:
            kwargs.update(include_dashboard=False,
                          runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}})
        else:
            if address != "auto":
                check_reachable(address)
            if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # not inside `ray job submit`
                kwargs["runtime_env"] = {"working_dir": str(REPO_ROOT), "excludes": WORKING_DIR_EXCLUDES}
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BuildError(f"--ray-address {address or '(local)'}: cannot connect to Ray: {first}") from None
        self._owned = True

    def _pool(self, n: int) -> list[Any]:
        import ray

        remote = ray.remote(num_cpus=1, max_restarts=0)(UnitWorker)
        while len(self._actors) < n:
            self._actors.append(remote.remote())
        return self._actors[:n]

    def map_units(self, job: UnitJob, units: list[Unit], on_done: Callable[[UnitMeta], None]) -> None:
        import ray
        from ray.exceptions import RayTaskError
        from ray.util import ActorPool

        if not units:
            return
        pool = ActorPool(self._pool(min(self.workers, len(units))))
        job_ref = ray.put(job)
        try:
            # each actor takes the next unit as it finishes one (ActorPool keeps the queue)
            for meta in pool.map_unordered(lambda actor, unit: actor.run.remote(job_ref, unit), units):
                on_done(meta)
        except BaseException as err:
            # units still queued or running on the actors would hold them: retire the actors
            # (the next map_units starts fresh ones)
            self._kill_actors()
            cause = getattr(err, "cause", None) if isinstance(err, RayTaskError) else None
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def _kill_actors(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def close(self) -> None:
        import ray

        self._kill_actors()
        if self._owned and ray.is_initialized():
            ray.shutdown()


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return str(REPO_ROOT) if not current else f"{REPO_ROOT}{os.pathsep}{current}"


def check_reachable(address: str) -> None:
    """Fail fast, with one line, on an address nothing listens at (Ray itself retries)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise BuildError(f"--ray-address {address}: expected auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise BuildError(f"--ray-address {address}: cannot reach {host}:{port} ({err.strerror or err})") from None


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution (never changes the version id or its bytes)")
    group.add_argument("--executor", default="local", help="local (in this process) or ray")
    group.add_argument("--ray-address", help="Ray cluster: auto, host:port or ray://host:10001 "
                                             "(default: start a local cluster)")
    group.add_argument("--workers", type=int, help="Ray workers, one CPU each (default: the cluster's CPUs)")
    group.add_argument("--threads", type=int,
                       help="torch threads per unit (default: this machine's torch default); "
                            "bit-identical outputs need the same value on every worker")


def make_executor(kind: str = "local", address: str | None = None, workers: int | None = None,
                  threads: int | None = None) -> Executor:
    """An executor, connected (Ray) before any store work: bad settings fail fast."""
    if kind not in EXECUTORS:
        raise BuildError(f"--executor: unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")
    if kind == "local":
        if address is not None or workers is not None:
            raise BuildError("--ray-address and --workers need --executor ray")
        return Executor(threads)
    return RayExecutor(address, workers, threads)


def executor_from_args(args: argparse.Namespace) -> Executor:
    return make_executor(args.executor, args.ray_address, args.workers, args.threads)


def run_units(executor: Executor | None, job: UnitJob, location: Any, scratch: str, units: list[Unit],
              quiet: bool = False) -> list[UnitMeta]:
    """Run the units a previous run did not finish (a tqdm bar over units); return every
    unit's metadata in unit order."""
    from builders.shared.common import progress
    from builders.shared.units import finished_units, mark_scratch, progress_hook

    executor = executor or Executor()
    protocols = (location.fs.protocol,) if isinstance(location.fs.protocol, str) else tuple(location.fs.protocol)
    if executor.kind != "local" and "memory" in protocols:
        raise BuildError(f"--executor {executor.kind}: workers cannot reach an in-memory store ({location.url}); "
                         "use a folder or s3:// store")
    mark_scratch(location, scratch)
    metas = finished_units(location, scratch, units)
    pending = [u for u in units if u.index not in metas]
    if metas:
        log.info("%s: %d of %d units already done", job.label, len(metas), len(units))
    size = {u.index: u.end - u.start for u in units}
    bar = progress(sum(size.values()), job.label, quiet)  # samples; local units also report per batch
    bar.update(sum(size[i] for i in metas))
    reported = [0]  # samples the running (local) unit has reported so far

    def partial(samples: int) -> None:
        reported[0] += samples
        bar.update(samples)

    def done(meta: UnitMeta) -> None:
        metas[meta.unit] = meta
        bar.update(size[meta.unit] - reported[0])
        reported[0] = 0

    try:
        with progress_hook(partial):
            executor.map_units(job, pending, done)
    finally:
        bar.close()
    pids = sorted({m.pid for m in metas.values() if m.unit in {u.index for u in pending}})
    log.info("%s: %d units (%d run now) on the %s executor, worker pids %s", job.label, len(units), len(pending),
             executor.kind, pids, extra={"unit_pids": pids, "units": len(units)})
    return [metas[u.index] for u in units]
