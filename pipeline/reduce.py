"""The task graph: one state per shard, merged pairwise in a tree.

This is the chunk → combine → aggregate split of ``dask.array.reduction`` written over
``to_delayed()`` blocks, because our states are structured objects, not arrays: the chunk step
turns a block into a state, combine and aggregate are the same pure ``merge``. ``split_every``
bounds how many states one merge task holds at once, which bounds worker memory by
``state size × split_every`` whatever the number of shards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from kernels import Backend
from pipeline.sources import FeatureSource
from pipeline.states import FeatureSummary, Moments, NonFiniteRows

#: Key prefix of shard tasks; progress reporting counts the finished tasks carrying it.
SHARD_PREFIX = "shard-"

DEFAULT_SPLIT_EVERY = 4


class Mergeable(Protocol):
    def merge(self: Any, other: Any) -> Any: ...


S = TypeVar("S", bound=Mergeable)


def merge_all(*states: S) -> S:
    """Left fold of ``merge`` over one group of states (the combine/aggregate step)."""
    return functools.reduce(lambda a, b: a.merge(b), states)


def tree_merge(nodes: Sequence[Any], *, split_every: int = DEFAULT_SPLIT_EVERY,
               name: str = "merge") -> Delayed:
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


def summarize_block(
    block: np.ndarray, offset: int, device: str = "cpu", backend: Backend = "auto"
) -> FeatureSummary:
    """The chunk step for features: moments of the finite rows, and where the others are.

    Args:
        block: (n, d) rows of one shard.
        offset: global index of the block's first row (to report non-finite rows).
        device: where the kernel runs (``cpu`` or ``cuda``).
        backend: kernel backend, see :func:`kernels.shard_moments`.
    """
    block = np.asarray(block)
    moments = Moments.from_block(block, device=device, backend=backend)
    # NaN and ±inf propagate into the float64 mean (a float64 sum of float32 values cannot
    # overflow), so a finite mean proves every value finite without another pass over the block.
    if np.isfinite(moments.mean).all():
        return FeatureSummary(moments, NonFiniteRows.empty())
    finite = np.isfinite(block).all(axis=1)
    return FeatureSummary(
        Moments.from_block(block[finite], device=device, backend=backend),
        NonFiniteRows.from_mask(~finite, offset),
    )


def shard_tasks(
    source: FeatureSource,
    chunk: Callable[..., Any] = summarize_block,
    *args: Any,
) -> list[Delayed]:
    """One delayed ``chunk(block, offset, *args)`` per shard of ``source``."""
    blocks = source.array.to_delayed().ravel()
    token = tokenize(source.array.name, chunk.__name__, args)
    return [
        delayed(chunk, pure=True)(block, offset, *args,
                                  dask_key_name=f"{SHARD_PREFIX}{chunk.__name__}-{token}-{i}")
        for i, (block, offset) in enumerate(zip(blocks, source.shard_offsets, strict=True))
    ]
