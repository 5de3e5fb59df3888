"""How the engine runs on a ``distributed`` scheduler: a client that first asks the address
whether it is a scheduler at all, follows the futures while watching for a lost scheduler or a
cluster without workers (:class:`SchedulerLostError`, ``ClusterError``), reserves GPUs only where
the workers declare them, and relays the kernel checks that failed on the workers.

:class:`DistributedRuns` holds these as methods of :class:`~shardeval.pipeline.core.engine.Engine`
(its base), which keeps the local schedulers and the choice between them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shardeval.pipeline.core.reduce import tree_merge
from shardeval.pipeline.errors import ClusterError


class SchedulerLostError(ClusterError):
    """The distributed scheduler went away, or cancelled the computation, while it ran. Not
    something the input could fix: an operating failure, as a full disk is (the CLI exits 1,
    not 2, on errors whose ``operating_failure`` is true)."""

    operating_failure = True


class _ConnectionNoise(logging.Filter):
    """Drops what Dask's client logs when its scheduler went away, which the engine reports
    itself as :class:`SchedulerLostError` (one line, not a traceback on the terminal): that it
    gave up reconnecting, the cancelled reconnection when the client is closed, and, when the
    scheduler died while the client was sending to it, the closed stream of its batched
    sends (logged at info level with its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(("Failed to reconnect to scheduler", "Batched Comm Closed")):
            return False
        cancelled = record.exc_info[1] if record.exc_info else None
        return not isinstance(cancelled, asyncio.CancelledError)


@contextlib.contextmanager
def _connection_noise_dropped() -> Iterator[None]:
    """:class:`_ConnectionNoise` on Dask's client loggers (the client's and its batched
    sends') for the block."""
    loggers = [logging.getLogger(name) for name in ("distributed.client", "distributed.batched")]
    noise = _ConnectionNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
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


class DistributedRuns:
    """The distributed half of :class:`~shardeval.pipeline.core.engine.Engine`: its base, whose
    methods read the engine's scheduler address, timeouts, log and performance report."""

    scheduler: str
    log: Callable[[str], None] | None
    performance_report: str | None
    worker_timeout: float
    connect_timeout: float | None

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
        report: Callable[[int, int], None],
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
