"""Starting the cluster of a spec and waiting for its first worker, never forever.

After a SLURM cluster submits its jobs, the run waits at most ``join_timeout`` seconds for its
first worker; it stops sooner when every job has ended, ``sbatch`` refused the job, or SLURM
says the jobs can never start (e.g. ``PartitionTimeLimit``). Either way the error is one line
naming the job IDs, their state and SLURM's reason, and the jobs are cancelled.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from shardeval.pipeline.core.clusters.local import check_options, cluster_options
from shardeval.pipeline.core.clusters.slurm import (
    SLURM_COMMAND_TIMEOUT,
    cancel_slurm_jobs,
    describe_slurm_jobs,
    recording_job_class,
    slurm_job_states,
    stop_if_hopeless,
)
from shardeval.pipeline.core.clusters.slurm_fit import check_slurm_fit
from shardeval.pipeline.core.clusters.spec import ClusterSpec, cluster_class, load_spec
from shardeval.pipeline.errors import ClusterError

#: Seconds between two looks at the SLURM queue while waiting for workers (squeue is one RPC
#: to slurmctld; sites ask users not to poll it in tight loops).
QUEUE_POLL_SECONDS = 2.0


class WorkersDidNotJoinError(ClusterError):
    """No worker joined the cluster within the spec's ``join_timeout`` (a busy queue, a node
    that cannot reach the scheduler). An operating failure: the CLI exits 1, not 2."""

    operating_failure = True


def make_cluster(spec: ClusterSpec) -> Any:
    """Construct (and so start) the cluster a spec describes; the caller closes it.

    A SLURM spec's job script is checked against the site before any job is submitted
    (:func:`check_slurm_fit`), and its jobs are recorded as they are submitted so that
    :func:`wait_for_workers` can name and cancel them.

    Raises:
        ClusterError: a bad option (:func:`check_options`), or a SLURM job that does not fit
            the site.
    """
    cls = cluster_class(spec.backend)
    check_options(spec, cls)
    options = cluster_options(spec)
    scale = spec.scale
    if spec.backend == "slurm":
        if "job_cls" not in options:
            options["job_cls"] = recording_job_class(cls.job_cls)
        # SLURMCluster submits n_workers jobs from its constructor: ask for them after the
        # checks instead, so that nothing is submitted that does not fit.
        n_workers = options.pop("n_workers", None)
        scale = scale or n_workers
    try:
        cluster = cls(**options)
    except (TypeError, ValueError, RuntimeError) as exc:
        # LocalCluster hands unknown options to its workers, which then fail to start.
        cause = exc.__cause__ or exc.__context__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ClusterError(
            f"cluster spec {spec.path!r}: bad option for {cls.__name__}: {first}"
        ) from exc
    if spec.backend == "slurm":
        try:
            check_slurm_fit(cluster.job_script(), spec)
        except BaseException:
            cluster.close()
            raise
    if scale:
        cluster.scale(scale)
    return cluster


@contextlib.contextmanager
def running_cluster(
    path: str | os.PathLike[str], *, join_timeout: float | None = None
) -> Iterator[str]:
    """Start the cluster of a spec file, wait for its first worker, yield its scheduler
    address, close it afterwards.

    Args:
        path: the spec file.
        join_timeout: seconds the first worker has to join; ``None`` takes the spec's.

    Yields:
        The scheduler's address.

    Raises:
        ClusterError: the spec is wrong, or its workers cannot start (see
            :func:`wait_for_workers`).
    """
    spec = load_spec(path)
    cluster = make_cluster(spec)
    try:
        wait_for_workers(cluster, spec, join_timeout)
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _worker_count(cluster: Any) -> int:
    info = getattr(cluster, "scheduler_info", None) or {}
    return len(info.get("workers", {}))


def wait_for_workers(cluster: Any, spec: ClusterSpec, timeout: float | None = None) -> None:
    """Return once a worker has joined ``cluster``; stop with one line, and cancel the jobs
    submitted, when none can.

    For a SLURM cluster it stops as soon as ``sbatch`` refused the job, every job has ended, or
    every job left pends for a reason waiting cannot clear (:data:`PERMANENT_REASONS`);
    otherwise at the deadline, naming each job, its state and SLURM's reason.

    Args:
        cluster: a cluster from :func:`make_cluster`.
        spec: its spec (for the deadline and the file named in errors).
        timeout: seconds to wait; ``None`` takes ``spec.join_timeout``.

    Raises:
        ClusterError: sbatch refused the job, or the jobs can never start or all ended.
        WorkersDidNotJoinError: no worker joined before the deadline.
    """
    timeout = spec.join_timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    jobs = getattr(cluster, "job_cls", None)
    recorded = jobs if hasattr(jobs, "submitted") else None
    where = f"cluster spec {spec.path!r}"
    if getattr(cluster, "worker_spec", None) == {}:
        # A SpecCluster (local, cuda, slurm) asked for nothing: no worker will ever come.
        raise ClusterError(f"{where} asks for no workers: set 'scale' (number of workers or jobs)")
    next_look = time.monotonic() + 1.0
    while _worker_count(cluster) == 0:
        now = time.monotonic()
        # Decide on the jobs only once every sbatch has returned: a job submitted after the
        # decision would be left in the queue, cancelled by no one.
        if recorded is not None and _submitted_all(cluster, recorded):
            ids = _sorted_ids(recorded.submitted)
            if recorded.failures:
                cancel_slurm_jobs(ids)
                raise ClusterError(
                    f"{where}: sbatch refused the worker job: {recorded.failures[0]}"
                    + (f"; cancelled job(s) {', '.join(ids)}" if ids else "")
                )
            if ids and now >= next_look:
                next_look = now + QUEUE_POLL_SECONDS
                stop_if_hopeless(ids, _contact_address(cluster), where)
        if now > deadline:
            if recorded is not None:
                _wait_for_submissions(cluster, recorded)
            raise _deadline_error(cluster, recorded, timeout, where)
        time.sleep(0.2)


def _submitted_all(cluster: Any, recorded: Any) -> bool:
    """Every job the cluster asked for has been submitted or refused."""
    asked = len(getattr(cluster, "worker_spec", {}) or {})
    return len(recorded.submitted) + len(recorded.failures) >= asked


def _wait_for_submissions(cluster: Any, recorded: Any) -> None:
    """Give sbatch calls still under way the time one SLURM command may take."""
    until = time.monotonic() + SLURM_COMMAND_TIMEOUT
    while not _submitted_all(cluster, recorded) and time.monotonic() < until:
        time.sleep(0.1)


def _contact_address(cluster: Any) -> str:
    """The address workers are told to connect to (a spec may advertise another one than the
    scheduler listens on)."""
    scheduler = getattr(cluster, "scheduler", None)
    return str(getattr(scheduler, "contact_address", None) or cluster.scheduler_address)


def _sorted_ids(ids: Sequence[str]) -> list[str]:
    return sorted(ids, key=lambda i: (len(i), i))


def _deadline_error(
    cluster: Any, recorded: Any, timeout: float, where: str
) -> WorkersDidNotJoinError:
    """The error at the deadline, after cancelling what was submitted."""
    address = _contact_address(cluster)
    head = f"{where}: no Dask worker joined the scheduler at {address} within {timeout:g} s"
    hint = "raise 'join_timeout' in the spec if the queue is only busy"
    if recorded is None:
        return WorkersDidNotJoinError(f"{head}; {hint}")
    ids = _sorted_ids(recorded.submitted)
    if not ids:
        return WorkersDidNotJoinError(
            f"{head}: no SLURM job was submitted (sbatch has not returned)"
        )
    states = slurm_job_states(ids) or {}
    described = describe_slurm_jobs(ids, states, address)
    cancel_slurm_jobs(ids)
    return WorkersDidNotJoinError(
        f"{head} (join_timeout): {described}; cancelled job(s) {', '.join(ids)}; {hint}"
    )
