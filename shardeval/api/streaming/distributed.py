"""How training-loop metrics meet under ``torch.distributed``: the process group of a sync, a
meeting in the group's store with a deadline, gathers in rank order, and how a metric is known
across ranks (its kind and the order in which its process made it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardeval.api.results import Report
from shardeval.pipeline.errors import (
    EngineError,
    OptionError,
)

if TYPE_CHECKING:
    pass

#: How long a collective ``compute()`` or ``sync()`` waits for every rank of its group, unless
#: «sync_timeout» says otherwise: ranks that end their batches minutes apart still meet, and a
#: rank that calls ``compute()`` alone gets an error instead of waiting forever. NCCL's default
#: collective timeout (gloo's is 30 minutes).
SYNC_TIMEOUT_SECONDS = 600.0

#: The deadlines a store of ``torch.distributed`` waits for: it takes whole milliseconds, through
#: a 64-bit count of microseconds. Below 1 ms the deadline is 0 ms, which the store reads as no
#: deadline at all (a FileStore then waits forever); beyond 2^63 microseconds (about 292,000
#: years) the count overflows (a FileStore then gives up at once).
MIN_SYNC_TIMEOUT_SECONDS = 1e-3
MAX_SYNC_TIMEOUT_SECONDS = float((2**63 - 1) // 10**6)


def _check_timeout(value: Any) -> float | None:
    """«sync_timeout» as the store's wait takes it (see :data:`MIN_SYNC_TIMEOUT_SECONDS`).

    Raises:
        OptionError: not a number of seconds in [:data:`MIN_SYNC_TIMEOUT_SECONDS`,
            :data:`MAX_SYNC_TIMEOUT_SECONDS`].
    """
    if value is None:
        return None
    low, high = MIN_SYNC_TIMEOUT_SECONDS, MAX_SYNC_TIMEOUT_SECONDS
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not low <= value <= high  # NaN fails both
    ):
        raise OptionError(
            f"«sync_timeout» must be a number of seconds from {low:g} (1 ms) to {high:.0f} "
            f"(2^63 microseconds), which torch.distributed's store can wait for, or None (the "
            f"process group's own timeout); got {value!r}"
        )
    return float(value)


#: Per kind of training-loop metric ("fid", "kid", "kid/prdc", ...), how many this process has
#: made, copied or unpickled. Under torch.distributed a metric is known across ranks by its
#: kind and this count: ranks gather their states in the order of their calls, and two metrics
#: of one kind and settings whose calls the ranks make in other orders would be gathered into
#: one silently; this pair is what tells them apart.
_MADE_SO_FAR: dict[str, int] = {}


def _made_here(kind: str) -> tuple[str, int]:
    """The kind and count of a metric this process makes now (see :data:`_MADE_SO_FAR`)."""
    count = _MADE_SO_FAR.get(kind, 0)
    _MADE_SO_FAR[kind] = count + 1
    return kind, count


def _nth(order: tuple[str, int]) -> str:
    """How a message names a metric by its kind and count: "its 2nd fid metric"."""
    kind, count = order
    n = count + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"its {n}{suffix} {kind} metric"


#: Per process group (its global ranks), how many meetings this process has completed in it:
#: the n-th meeting of every rank has the same keys in the store.
_MEETINGS: dict[tuple[int, ...], int] = {}


@dataclass(frozen=True)
class _Group:
    """The process group of a sync: its size, this process's rank in it, the global rank
    of its rank 0 (point-to-point calls and broadcasts name global ranks) and the global ranks
    of its members."""

    handle: Any
    size: int
    rank: int
    root: int
    ranks: tuple[int, ...]

    def global_rank(self, group_rank: int) -> int:
        import torch.distributed as dist

        return group_rank if self.handle is None else dist.get_global_rank(self.handle, group_rank)

    def all_gather(self, payload: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, payload, group=self.handle)
        return out

    def gather_alike(self, order: tuple[str, int], payload: Any, what: str) -> list[Any]:
        """Every rank's ``payload`` in rank order, once every rank proved it gathers the same
        metric: the same kind, made as the same one of its kind in its process (``order``,
        from :func:`_made_here`). Every rank sees every rank's ``order``, so all refuse alike
        and none waits in a later collective.

        Raises:
            OptionError: ranks that gather other metrics, naming the first two.
        """
        gathered = self.all_gather((order, payload))
        for rank, (theirs, _) in enumerate(gathered):
            if theirs != gathered[0][0]:
                raise OptionError(
                    f"{what}: rank 0 gathers {_nth(gathered[0][0])} and rank {rank} "
                    f"{_nth(theirs)} (as made in each process): ranks must make their "
                    "training-loop metrics in the same order and call compute() and sync() of "
                    "each in the same order; a metric made on some ranks only is made after "
                    "the others"
                )
        return [payload for _, payload in gathered]

    def broadcast(self, payload: Any) -> Any:
        """Rank 0's ``payload`` on every rank."""
        import torch.distributed as dist

        box = [payload]
        dist.broadcast_object_list(box, src=self.root, group=self.handle)
        return box[0]

    def meet(self, changed: bool, timeout: float | None, what: str) -> bool:
        """Wait until every rank of the group has called this, at most ``timeout`` seconds
        (None: the store's own timeout, the process group's); return whether any rank has
        ``changed`` (its state differs from the one of the last sync).

        The ranks meet in the store of ``torch.distributed``'s default group (TCP or file; what
        ``init_process_group`` made): a counter per meeting, and a key that the last rank to
        arrive sets, which the others wait for. Why the store: a deadline there holds on every
        backend and issues no collective, so a rank that gives up leaves nothing half-done, and
        the collectives that follow start only once every rank is there.
        ``monitored_barrier`` is gloo's alone; a collective's own timeout is the process
        group's, fixed at init (30 minutes for gloo; NCCL's watchdog then aborts the process
        rather than raising), and a collective that one rank never joins cannot be withdrawn.
        The store is reached through ``torch.distributed``'s private ``_get_default_store``
        (the store ``init_process_group`` made; torch has no public accessor); a torch
        without it gathers every time, under the process group's timeout alone.
        Meetings are counted per group, so ranks must call collective computes and syncs in
        the same order (as every ``torch.distributed`` collective). A rank that gives up leaves
        the meeting; one that arrives in the very instant another gives up can still go on into
        the gather alone, where the process group's own timeout ends it.

        Raises:
            EngineError: not every rank arrived in time.
        """
        from datetime import timedelta

        from torch.distributed import distributed_c10d

        default_store = getattr(distributed_c10d, "_get_default_store", None)
        if default_store is None:  # a torch without it: the process group's timeout alone
            return True
        store = default_store()
        done = _MEETINGS.get(self.ranks, 0)
        prefix = f"shardeval/{'.'.join(map(str, self.ranks))}/"
        key = f"{prefix}{done}/"
        store.add(key + "changed", int(changed))
        if store.add(key + "arrived", 1) == self.size:
            store.set(key + "all", "1")
            if done:  # every rank finished the meeting before: its keys are nobody's now
                for name in ("changed", "arrived", "all"):
                    try:
                        store.delete_key(f"{prefix}{done - 1}/{name}")
                    except RuntimeError:  # a store that cannot delete keeps three counters
                        break
        try:
            if timeout is None:
                store.wait([key + "all"])
            else:
                store.wait([key + "all"], timedelta(seconds=timeout))
        except RuntimeError as exc:  # torch raises DistStoreError (or RuntimeError) at the deadline
            # Leave the meeting, so that it can still take place with every rank later.
            store.add(key + "arrived", -1)
            store.add(key + "changed", -int(changed))
            waited = "the store's timeout" if timeout is None else f"{timeout:g} s"
            raise EngineError(
                f"{what} syncs the metric over its torch.distributed group ({self.size} "
                f"processes), and rank {self.rank} waited {waited} for the others "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): call "
                f"{what} on every rank, as torchmetrics does, or compute(sync=False) for this "
                "rank's own rows; a longer «sync_timeout» waits for slow ranks"
            ) from None
        _MEETINGS[self.ranks] = done + 1
        return store.add(key + "changed", 0) > 0


def _group(group: Any) -> _Group:
    """The process group to sync over.

    Raises:
        EngineError: ``torch.distributed`` is not available or not initialised, or this process
            is not in ``group``.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise EngineError(
            "sync() gathers the states of a torch.distributed job, and none is running here: "
            "call torch.distributed.init_process_group() first (a single process needs no sync)"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise EngineError(
            "this process is not in the process group given («process_group», or sync(group)): "
            "a metric syncs over a group it belongs to"
        )
    root = 0 if group is None else dist.get_global_rank(group, 0)
    ranks = tuple(dist.get_process_group_ranks(dist.group.WORLD if group is None else group))
    return _Group(group, dist.get_world_size(group), rank, root, ranks)


def _collective(group: Any) -> _Group | None:
    """The group over which ``compute()`` syncs: None outside ``torch.distributed``, or in a
    group of one process."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    g = _group(group)
    return g if g.size > 1 else None


def _labelled_local(report: Report, group: Any) -> Report:
    """``report`` of this rank's rows alone, marked so when it runs in a group of more than
    one process: a ``local`` entry in the JSON, a first line in the summary."""
    try:
        g = _collective(group)
    except EngineError:  # not a member of the metric's group: the report is this process's
        g = None
    if g is None:
        return report
    data = {**report.data, "local": {"rank": g.rank, "world_size": g.size}}
    text = (
        f"local value: rank {g.rank}'s rows alone, of {g.size} processes (compute(sync=False)); "
        "compute() on every rank gives the value over every rank's rows\n" + report.text
    )
    return Report(report.metric, report.results, data, text, report.value)
