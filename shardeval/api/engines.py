"""Where a computation runs, for callers that hold one engine over several calls (a job's run,
the command line's ``--cluster``): an engine made from a scheduler's name or address, and a
cluster started from a spec file for the length of a block. The metric functions take the
same choices as their «scheduler» and «cluster» keywords.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine as Engine
    from shardeval.pipeline.core.engine import Progress as Progress

__all__ = ["engine", "running_cluster"]


def engine(scheduler: str = "threads", *, log: Callable[[str], None] | None = None) -> Engine:
    """An engine on ``scheduler``: Dask's threaded scheduler in this process (``threads``), the
    synchronous one (``sync``), or a running ``distributed`` scheduler's address.

    Args:
        scheduler: ``threads``, ``sync`` or an address such as ``tcp://host:8786``.
        log: receives one-line notices (a distributed cluster's dashboard link).

    Returns:
        The engine (``.describe()`` what reports record of it).

    Raises:
        EngineError: ``scheduler`` is none of these.

    Example:
        >>> from shardeval.api.engines import engine
        >>> engine("sync").is_distributed
        False
    """
    from shardeval.pipeline.core.engine import Engine

    return Engine(scheduler, log=log)


@contextlib.contextmanager
def running_cluster(spec: str | os.PathLike[str]) -> Iterator[str]:
    """Start the cluster a spec file describes (``cluster/local.yaml``…), wait for its first
    worker, give its scheduler's address, and close it when the block ends.

    Args:
        spec: the spec file.

    Yields:
        The scheduler's address (for :func:`engine`).

    Raises:
        ClusterError: the spec is wrong, or its workers cannot start.

    Example:
        >>> from shardeval.api.engines import engine, running_cluster  # doctest: +SKIP
        >>> with running_cluster("cluster/local.yaml") as address:  # doctest: +SKIP
        ...     print(engine(address).is_distributed)
        True
    """
    from shardeval.pipeline.core.clusters import running_cluster as started

    with started(spec) as address:
        yield address
