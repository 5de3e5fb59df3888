"""Where the task graph runs: Dask's threaded scheduler in-process (default), the synchronous
scheduler (debugging), or a running ``distributed`` scheduler given by address.

Threads are budgeted so that Dask threads × BLAS threads never exceed the cores: during the
shard phase each Dask thread runs single-threaded BLAS (the CPU kernel releases the GIL, so the
threads really run in parallel and overlap reading with arithmetic). One BLAS thread per shard
on every scheduler also makes results identical across schedulers: a BLAS kernel's summation
order depends on its thread count. Finalisation, a few d × d factorisations after the graph
has run, gets all cores back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
from dask.callbacks import Callback
from threadpoolctl import threadpool_limits

from shardeval.pipeline.core.reduce import SHARD_PREFIX, chain_merge, tree_merge
from shardeval.pipeline.errors import ClusterError, EngineError
from shardeval.pipeline.options import DEFAULT_SPLIT_EVERY

#: ``progress(done, total)``: called as shard tasks finish.
Progress = Callable[[int, int], None]

LOCAL_SCHEDULERS = ("threads", "sync")

#: A distributed scheduler's address: a comm protocol and host:port, or a bare host:port.
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d+/?$|^inproc://\S+$")


class SchedulerLostError(ClusterError):
    """The distributed scheduler went away, or cancelled the computation, while it ran. Not
    something the input could fix: an operating failure, as a full disk is (the CLI exits 1,
    not 2, on errors whose ``operating_failure`` is true)."""

    operating_failure = True


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit BLAS/OpenMP pools (numpy, scipy, and torch's when a metric has loaded it) to
    ``n`` threads, then restore. Metrics whose chunk steps use torch import it with their
    module, before the graph runs; the CPU FID path never loads it."""
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(previous)


class _ShardProgress(Callback):
    """Counts finished shard tasks on the local schedulers; with ``sizes`` (task key → what
    it counts for), adds up the sizes of the tasks named there instead."""

    def __init__(self, total: int, progress: Progress, sizes: dict[Any, int] | None = None):
        super().__init__()
        self.total, self.done, self.progress, self.sizes = total, 0, progress, sizes

    def _start(self, dsk: Any) -> None:
        self.progress(0, self.total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self.sizes is not None:
            if key in self.sizes:
                self.done += self.sizes[key]
                self.progress(self.done, self.total)
            return
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith(SHARD_PREFIX):
            self.done += 1
            self.progress(self.done, self.total)


class _ConnectionNoise(logging.Filter):
    """Drops what Dask's client logs when its scheduler went away, which the engine reports
    itself as :class:`SchedulerLostError` (one line, not a traceback on the terminal): that it
    gave up reconnecting, and the cancelled reconnection when the client is closed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to reconnect to scheduler"):
            return False
        cancelled = record.exc_info[1] if record.exc_info else None
        return not isinstance(cancelled, asyncio.CancelledError)


@contextlib.contextmanager
def _connection_noise_dropped() -> Iterator[None]:
    """:class:`_ConnectionNoise` on Dask's client logger for the block."""
    logger, noise = logging.getLogger("distributed.client"), _ConnectionNoise()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def _kernel_checks_failed_here() -> list[tuple[str, str, str, str]]:
    """On a worker: every Triton kernel whose first-use check failed in this process (none
    when no kernel ran here)."""
    selfcheck = sys.modules.get("shardeval.kernels._selfcheck")
    return [] if selfcheck is None else list(selfcheck.failed_checks())


#: (scheduler, worker, kernel, device, reason) already relayed by this process: a failed check
#: is reported once per worker, as it is once per process where the kernels run locally.
_RELAYED: set[tuple[str, ...]] = set()
_RELAYED_LOCK = threading.Lock()


def _relay_worker_warnings(client: Any, scheduler: str) -> None:
    """Warn here of the kernel checks that failed on the cluster's workers, so that the report
    of this process says its numbers came from the torch path there (the workers' own
    warnings go to their logs). One warning per kernel, device and reason, naming the
    workers."""
    try:
        found = client.run(_kernel_checks_failed_here, on_error="return")
    except (OSError, TimeoutError):
        return  # the result is in; a scheduler gone now leaves only this note unsaid
    grouped: dict[tuple[str, ...], list[str]] = {}
    with _RELAYED_LOCK:
        for worker, failures in sorted(found.items()):
            if isinstance(failures, BaseException):
                continue  # a worker that could not answer (gone): nothing to say of it
            for failure in failures:
                key = (scheduler, worker, *failure)
                if key not in _RELAYED:
                    _RELAYED.add(key)
                    grouped.setdefault(tuple(failure), []).append(worker)
    if grouped:
        from shardeval.kernels._selfcheck import KernelCheckWarning

        for (kernel, device, gpu, reason), workers in grouped.items():
            warnings.warn(
                KernelCheckWarning(kernel, device, gpu, reason, workers=tuple(workers)),
                stacklevel=3,
            )


def _configured_connect_timeout() -> float:
    from dask.config import get
    from dask.utils import parse_timedelta

    return float(parse_timedelta(get("distributed.comm.timeouts.connect", "30s"), "s"))


@dataclass(frozen=True)
class Engine:
    """How to run a reduction.

    Attributes:
        scheduler: ``threads`` (default), ``sync``, or a distributed scheduler address such
            as ``tcp://10.0.0.1:8786``.
        num_workers: Dask threads for the threaded scheduler (default: all cores).
        log: receives one-line notices (the dashboard link of a distributed cluster).
        performance_report: on a distributed cluster, save Dask's HTML performance report here.
        worker_timeout: seconds a distributed computation may wait with no worker at all before
            it fails (lost workers are otherwise replaced and their tasks recomputed).
        connect_timeout: seconds to wait for the scheduler to answer; default: Dask's
            ``distributed.comm.timeouts.connect`` setting (30 s unless configured, e.g. by
            ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``).
    """

    scheduler: str = "threads"
    num_workers: int | None = None
    log: Callable[[str], None] | None = None
    performance_report: str | None = None
    worker_timeout: float = 60.0
    connect_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.connect_timeout is None:
            object.__setattr__(self, "connect_timeout", _configured_connect_timeout())
        if not isinstance(self.scheduler, str) or not (
            self.scheduler in LOCAL_SCHEDULERS or _ADDRESS.match(self.scheduler)
        ):
            raise EngineError(
                f"scheduler {self.scheduler!r} is not 'threads', 'sync' or a scheduler address "
                "such as tcp://host:8786; to run on local worker processes start a cluster "
                "with «cluster='cluster/local.yaml'»"
            )
        if self.num_workers is not None and self.num_workers < 1:
            raise EngineError(f"threads must be a positive integer, got {self.num_workers}")

    @property
    def is_distributed(self) -> bool:
        return self.scheduler not in LOCAL_SCHEDULERS

    def describe(self) -> dict[str, Any]:
        if self.is_distributed:
            return {"scheduler": "distributed", "address": self.scheduler}
        return {"scheduler": self.scheduler, "threads": self._threads()}

    def _threads(self) -> int:
        if self.scheduler == "sync":
            return 1
        return self.num_workers or available_cores()

    def reduce(
        self,
        groups: Sequence[Sequence[Any]],
        *,
        split_every: int | None = None,
        progress: Progress | None = None,
        gpu: bool = False,
    ) -> list[Any]:
        """Merge each group of shard tasks into one state; all groups run in one graph.

        Args:
            groups: per output, the delayed shard states (see
            :func:`shardeval.pipeline.core.reduce.shard_tasks`).
            split_every: fan-in of a balanced merge tree. ``None``: on the local schedulers a
                chain (flat memory in the number of shards), on a cluster a balanced tree of
                fan-in :data:`~shardeval.pipeline.options.DEFAULT_SPLIT_EVERY` (merges spread over
                workers).
            progress: called with (shards done, shards total).
            gpu: the shard tasks use a GPU where the worker has one: on a cluster whose workers
                declare GPUs, each shard task then reserves one (``resources={"GPU": 1}``).
                Tasks that never touch a GPU reserve nothing and run on any worker thread.

        Returns:
            One merged state per group.

        Raises:
            ClusterError: the scheduler cannot be reached, every worker is gone for longer
                than ``worker_timeout``, or a shard task keeps killing its workers.
        """
        total = sum(len(g) for g in groups)
        report = progress or (lambda done, total: None)
        if self.is_distributed:
            return self._reduce_distributed(
                groups, split_every or DEFAULT_SPLIT_EVERY, total, report, gpu
            )
        roots = [
            chain_merge(g) if split_every is None else tree_merge(g, split_every=split_every)
            for g in groups
        ]
        return self.run_delayed(roots, progress=progress, shards=total)

    def run_delayed(
        self,
        roots: Sequence[Any],
        *,
        progress: Progress | None = None,
        shards: int = 0,
        sizes: Sequence[int] | None = None,
        gpu: bool = False,
    ) -> list[Any]:
        """Compute delayed objects whose graphs contain ``shards`` tasks named ``shard-…``.

        Args:
            roots: the delayed objects.
            progress: called with (done, total): shard tasks, or with ``sizes`` what the
                finished roots count for.
            shards: how many ``shard-…`` tasks the graphs hold (without ``sizes``; on a
                cluster progress is then reported at the start and the end only).
            sizes: per root, what it counts for in ``progress`` (the images of an extraction
                chunk, say): progress adds them up as each root finishes, on every scheduler.
            gpu: the roots use a GPU where the worker has one: on a cluster whose workers
                declare GPUs, each reserves one (``resources={"GPU": 1}``).

        Returns:
            The roots' values, in order.

        Raises:
            ClusterError: as :meth:`reduce`.
        """
        report = progress or (lambda done, total: None)
        total = shards if sizes is None else int(sum(sizes))
        by_key = None if sizes is None else dict(zip((r.key for r in roots), sizes, strict=True))
        if self.is_distributed:
            from distributed import as_completed

            with self._client() as client:
                resources = {"GPU": 1} if gpu and self._workers_declare_gpus(client) else None
                futures = client.compute(list(roots), resources=resources)
                report(0, total)
                if by_key is None:
                    out = self._gather(client, futures)
                    report(total, total)
                    return out
                done = 0

                def finished(batch: list[Any]) -> None:
                    nonlocal done
                    done += sum(by_key[f.key] for f in batch)
                    report(done, total)

                self._follow(client, as_completed(futures), finished)
                return self._gather(client, futures)
        # One BLAS thread per shard task whatever the scheduler and thread count: the order in
        # which a BLAS kernel sums depends on its threads, so a fixed count makes results
        # identical on threads, sync and distributed workers (whose nannies also set 1).
        threads = self._threads()
        with _ShardProgress(total, report, by_key), blas_threads(1):
            return list(dask.compute(*roots, scheduler=self.scheduler, num_workers=threads))

    @staticmethod
    def _workers_declare_gpus(client: Any) -> bool:
        """Whether the cluster's workers declare GPUs (dask-cuda, ``--resources GPU=1``): only
        then may tasks reserve one (an annotation no worker satisfies would wait forever)."""
        workers = client.scheduler_info().get("workers", {}).values()
        return any("GPU" in (w.get("resources") or {}) for w in workers)

    def _follow(self, client: Any, pending: Any, finished: Callable[[list[Any]], None]) -> None:
        """Call ``finished`` with each batch of futures as ``pending`` (``as_completed``)
        yields them, watching for a lost scheduler and a cluster without workers meanwhile."""
        alone_since: list[float | None] = [None]
        while not pending.is_empty():
            batch = pending.next_batch(block=False)
            if any(future.cancelled() for future in batch):
                raise self._interrupted(client, "tasks cancelled")  # not done
            if batch:
                finished(batch)
                del batch
            else:
                self._watch(client, alone_since)
                time.sleep(0.2)

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        """A client of the scheduler for the block; closed afterwards.

        Raises:
            ClusterError: the scheduler cannot be reached.
            SchedulerLostError: it went away, or cancelled the computation, during the block
                (Dask's own errors for that are many: a closed comm, cancelled futures).
        """
        from distributed import Client, performance_report

        self._probe()
        try:
            client = Client(self.scheduler, timeout=f"{self.connect_timeout}s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {self.scheduler}: {exc}; is it running?"
            ) from exc
        with _connection_noise_dropped(), client:
            try:
                if self.log:
                    self.log(f"dashboard: {client.dashboard_link}")
                report = (
                    performance_report(filename=self.performance_report)
                    if self.performance_report
                    else contextlib.nullcontext()
                )
                with report:
                    yield client
                _relay_worker_warnings(client, self.scheduler)
            except SchedulerLostError:
                raise
            except (Exception, asyncio.CancelledError) as exc:
                lost = self._lost(client, exc)
                if lost is None:
                    raise
                raise lost from exc

    def _lost(self, client: Any, exc: BaseException) -> SchedulerLostError | None:
        """The error to report when ``exc`` means the scheduler is gone or cancelled the
        computation; None for anything else (a task's own error, raised as it was)."""
        from distributed.comm.core import CommClosedError

        reason = type(exc).__name__
        if isinstance(exc, CommClosedError):
            return self._went_away(reason)
        if isinstance(exc, concurrent.futures.CancelledError | asyncio.CancelledError):
            return self._interrupted(client, reason)
        return self._went_away(reason) if client.status != "running" else None

    def _interrupted(self, client: Any, reason: str) -> SchedulerLostError:
        """Futures were cancelled: by the client itself when it lost its scheduler, or by the
        scheduler (a restart, another client)."""
        if client.status != "running":
            return self._went_away(reason)
        return SchedulerLostError(
            f"the computation was cancelled by the Dask scheduler at {self.scheduler} "
            f"({reason}): the cluster was restarted or shut down, or another client "
            "cancelled it; run the computation again"
        )

    def _went_away(self, reason: str) -> SchedulerLostError:
        return SchedulerLostError(
            f"the Dask scheduler at {self.scheduler} went away during the computation "
            f"({reason}); start it again (or see why it stopped) and run the computation again"
        )

    def _probe(self) -> None:
        """Ask the address who it is, within ``connect_timeout``: ``Client`` waits forever on a
        port that accepts connections but never answers (a dashboard, a foreign server)."""
        from distributed.comm import connect

        async def identity() -> Any:
            comm = await asyncio.wait_for(
                connect(self.scheduler, timeout=self.connect_timeout), self.connect_timeout
            )
            try:
                await asyncio.wait_for(
                    comm.write({"op": "identity", "reply": True}), self.connect_timeout
                )
                return await asyncio.wait_for(comm.read(), self.connect_timeout)
            finally:
                comm.abort()

        try:
            # A thread of its own: the caller may already be running an event loop.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                reply = pool.submit(asyncio.run, identity()).result()
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc) or f"no answer within {self.connect_timeout:g} s"
            raise ClusterError(
                f"cannot reach the Dask scheduler at {self.scheduler}: {reason}; is it running, "
                "and is this its scheduler port (8786 by default, not the dashboard's)?"
            ) from exc
        kind = reply.get("type") if isinstance(reply, dict) else None
        if kind != "Scheduler":
            raise ClusterError(
                f"{self.scheduler} answered, but it is not a Dask scheduler ({kind})"
            )

    def _watch(self, client: Any, alone_since: list[float | None]) -> None:
        """Fail when the scheduler is gone, or the cluster has had no worker for
        ``worker_timeout`` seconds."""
        if client.status != "running":
            # The connection is lost: Dask has cancelled every future of this client, so
            # waiting for it to reconnect (the connect timeout) cannot bring the results back.
            raise self._went_away(f"the client is {client.status}")
        if client.nthreads():
            alone_since[0] = None
            return
        now = time.monotonic()
        if alone_since[0] is None:
            alone_since[0] = now
        elif now - alone_since[0] > self.worker_timeout:
            raise ClusterError(
                f"every worker of the Dask cluster at {self.scheduler} is gone (none for "
                f"{self.worker_timeout:.0f} s); the computation cannot finish"
            )

    def _gather(self, client: Any, futures: list[Any]) -> list[Any]:
        from distributed import KilledWorker, wait

        alone_since: list[float | None] = [None]
        while True:
            try:
                wait(futures, timeout=1.0)
                break
            except TimeoutError:
                self._watch(client, alone_since)
        try:
            return list(client.gather(futures))
        except KilledWorker as exc:
            raise ClusterError(
                f"a task killed every worker it ran on ({exc}); raise "
                "distributed.scheduler.allowed-failures or the workers' memory limit"
            ) from exc

    def _reduce_distributed(
        self,
        groups: Sequence[Sequence[Any]],
        split_every: int,
        total: int,
        report: Progress,
        gpu: bool,
    ) -> list[Any]:
        from distributed import as_completed

        with self._client() as client:
            # Workers that declare GPUs (dask-cuda, `--resources GPU=1`) take one GPU shard at
            # a time per GPU; elsewhere, and for CPU work, shards go to any worker thread.
            resources = {"GPU": 1} if gpu and self._workers_declare_gpus(client) else None
            leaves = [client.compute(list(g), resources=resources) for g in groups]
            roots = client.compute([tree_merge(f, split_every=split_every) for f in leaves])
            report(0, total)
            done = 0

            def finished(batch: list[Any]) -> None:
                nonlocal done
                done += len(batch)
                report(done, total)

            # Hand the leaf futures to as_completed and drop our own references, so each
            # shard state is freed on the cluster as soon as its merge has consumed it.
            pending = as_completed([f for group in leaves for f in group])
            del leaves
            self._follow(client, pending, finished)
            return self._gather(client, roots)
