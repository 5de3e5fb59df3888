"""The task graph: one state per shard, merged pairwise in a tree.

This is the chunk → combine → aggregate split of ``dask.array.reduction`` written over
``to_delayed()`` blocks, because our states are structured objects, not arrays: the chunk step
turns a block into a state, combine and aggregate are the same pure ``merge``. ``split_every``
bounds how many states one merge task holds at once, which bounds worker memory by
``state size × split_every`` whatever the number of shards; Dask knows each state's size from its
registration (:func:`shardeval.pipeline.core.states.state`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.options import DEFAULT_SPLIT_EVERY

#: Key prefix of shard tasks; progress reporting counts the finished tasks carrying it.
SHARD_PREFIX = "shard-"


def merge_all(*states: Any) -> Any:
    """Left fold of ``merge`` over one group of states (the combine/aggregate step).

    Shard states arrive as the one-element object blocks that ``map_blocks`` produces; unwrap them.
    """
    unwrapped = [s.item() if isinstance(s, np.ndarray) else s for s in states]
    return functools.reduce(lambda a, b: a.merge(b), unwrapped)


def tree_merge(
    nodes: Sequence[Any], *, split_every: int = DEFAULT_SPLIT_EVERY, name: str = "merge"
) -> Delayed:
    """Merge delayed states (or futures) in a tree of fan-in ``split_every``.

    Args:
        nodes: delayed objects or distributed futures, each evaluating to a state.
        split_every: states merged by one task, at least 2.
        name: key prefix for the merge tasks.

    Returns:
        One delayed object that evaluates to the merged state.
    """
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    if not nodes:
        raise ValueError("tree_merge needs at least one state")
    token = tokenize(name, [getattr(n, "key", n) for n in nodes], split_every)
    level = list(nodes)
    depth = 0
    while True:
        level = [
            delayed(merge_all, pure=True)(
                *level[i : i + split_every], dask_key_name=f"{name}-{token}-{depth}-{j}"
            )
            for j, i in enumerate(range(0, len(level), split_every))
        ]
        depth += 1
        if len(level) == 1:
            return level[0]


def chain_merge(nodes: Sequence[Any], *, name: str = "merge") -> Delayed:
    """Merge states one after another: ((s0 ⊕ s1) ⊕ s2) ⊕ …

    The fully unbalanced tree. On one machine it keeps memory flat in the number of shards: at
    any moment only the running state and the shards being read are alive, where a balanced
    tree of depth log N holds up to ``split_every − 1`` finished states on every level.
    Merges cost O(d²) against the O(n·d²) of a shard, so running them in sequence costs nothing
    measurable.
    """
    if not nodes:
        raise ValueError("chain_merge needs at least one state")
    token = tokenize(name, [getattr(n, "key", n) for n in nodes])
    acc = delayed(merge_all, pure=True)(nodes[0], dask_key_name=f"{name}-{token}-0")
    for i, node in enumerate(nodes[1:], start=1):
        acc = delayed(merge_all, pure=True)(acc, node, dask_key_name=f"{name}-{token}-{i}")
    return acc


def _shared(value: Any) -> Delayed:
    return delayed(value, pure=True)


def _chunk_block(
    block: np.ndarray,
    chunk: Callable[..., Any],
    *args: Any,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    out = np.empty((1,) * block.ndim, dtype=object)
    out[(0,) * block.ndim] = chunk(block, offset, *args)
    return out


#: An argument of shard tasks holding this many bytes of arrays or more is one key of the graph.
SHARED_BYTES = 1 << 20


def array_bytes(value: Any) -> int:
    """The bytes of the numpy arrays ``value`` holds: itself, or the fields of a dataclass,
    or the items of a tuple or list (nested).

    Example:
        >>> array_bytes((np.zeros(3), 7, [np.zeros((2, 2), np.float32)]))
        40
    """
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(array_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return sum(array_bytes(v) for v in value)
    return 0


def shard_tasks(source: FeatureSource, chunk: Callable[..., Any], *args: Any) -> list[Delayed]:
    """One delayed ``chunk(block, offset, *args)`` per shard of ``source``.

    Built with ``map_blocks`` so that Dask fuses reading a block and reducing it into one task:
    a block is read only when a thread is ready to reduce it, so memory holds a block per
    thread, never a queue of blocks read ahead. An argument of :data:`SHARED_BYTES` or more (a
    mixture's covariances, a whitening matrix: K · d² floats) is one key of the graph that
    every shard's task refers to, not a copy inside each task: a cluster sends it to a worker
    once, where it would otherwise travel with each of the shards' tasks. (Dask does this
    itself for a bare array, by its ``sizeof``, but sees a dataclass of arrays as a few bytes.)
    """
    args = tuple(_shared(a) if array_bytes(a) >= SHARED_BYTES else a for a in args)
    token = tokenize(source.array.name, chunk.__name__, args)
    states = da.map_blocks(
        _chunk_block,
        source.array,
        chunk,
        *args,
        name=f"{SHARD_PREFIX}{chunk.__name__}-{token}",
        chunks=((1,) * source.shards, *((1,),) * (source.array.ndim - 1)),
        meta=np.empty((0,) * source.array.ndim, dtype=object),
    )
    return list(states.to_delayed().ravel())
