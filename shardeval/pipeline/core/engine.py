"""Where the task graph runs: Dask's threaded scheduler in-process (default), the synchronous
scheduler (debugging), or a running ``distributed`` scheduler given by address.

Threads are budgeted so that Dask threads × BLAS threads never exceed the cores: during the
shard phase each Dask thread runs single-threaded BLAS (the CPU kernel releases the GIL, so the
threads really run in parallel and overlap reading with arithmetic). One BLAS thread per shard
on every scheduler also makes results identical across schedulers: a BLAS kernel's summation
order depends on its thread count. Finalisation, a few d × d factorisations after the graph
has run, gets all cores back.

The distributed scheduler's side (the client, its watch for a lost scheduler or workers, GPU
reservations) is in :mod:`~shardeval.pipeline.core.distributed_runs`, the engine's base.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
from dask.callbacks import Callback
from threadpoolctl import threadpool_limits

from shardeval.pipeline.core.distributed_runs import (
    DistributedRuns,
    SchedulerLostError,
    _configured_connect_timeout,
)
from shardeval.pipeline.core.reduce import SHARD_PREFIX, chain_merge, tree_merge
from shardeval.pipeline.errors import EngineError
from shardeval.pipeline.options import DEFAULT_SPLIT_EVERY

#: ``progress(done, total)``: called as shard tasks finish.
Progress = Callable[[int, int], None]


def counting(progress: Progress | None, what: str) -> Progress | None:
    """``progress`` told that it counts ``what``, when it takes such a word (a display whose
    label says "shards" by default, passed on by a measurement that counts something else
    too: images extracted first, a fit's epochs); else ``progress`` as it is."""
    told = getattr(progress, "counting", None)
    return told(what) if callable(told) else progress


LOCAL_SCHEDULERS = ("threads", "sync")

#: A distributed scheduler's address: a comm protocol and host:port, or a bare host:port.
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d+/?$|^inproc://\S+$")


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


@dataclass(frozen=True)
class Engine(DistributedRuns):
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


__all__ = [
    "LOCAL_SCHEDULERS",
    "Engine",
    "Progress",
    "SchedulerLostError",
    "available_cores",
    "blas_threads",
]
