"""Streaming moments of feature stores: every store's shards through the shard kernel and a
merge tree, in one task graph. What FID, the statistics files and Silverman's rule start from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shardeval.pipeline.core.chunks import (
    FeatureSummary,
    check_device,
    check_nonfinite,
    check_policy,
    summarize_block,
    uses_gpu,
)
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.options import PRECISIONS


def products_precision(source: FeatureSource, requested: str) -> str:
    """The precision of a source's products: ``fp64`` when it has no more rows than features.

    Its covariance is then singular, and FID factors it on its numerical range: the rank
    cut-off must separate true zero eigenvalues from rounding, which fp32 products (error
    ~1e-7·‖Σ‖ in the null space) do not allow and float64 products (~1e-16) do. Few rows make
    the cost small.
    """
    return "fp64" if source.n <= source.d else requested


def feature_moments(
    sources: Sequence[FeatureSource],
    *,
    engine: Engine | None = None,
    split_every: int | None = None,
    device: str = "auto",
    backend: str = "auto",
    nonfinite: str = "error",
    precision: str = "fp32",
    progress: Progress | None = None,
) -> list[tuple[Moments, int]]:
    """Stream every source through shard moments and a tree merge, in one task graph.

    Args:
        sources: opened feature stores.
        engine: where to run (default: threaded scheduler).
        split_every: merge fan-in; None: the engine's choice (see :meth:`Engine.reduce`).
        device: ``auto`` (a worker's GPU if it has one), ``cpu`` or ``cuda``.
        backend: kernel backend.
        nonfinite: ``error`` (raise on NaN/inf rows) or ``drop`` (exclude and count them).
        precision: ``fp32`` or ``fp64`` products inside a shard (see
            :func:`shardeval.pipeline.core.chunks.summarize_block`); a source with n ≤ d rows always
            takes fp64 (see :func:`products_precision`).
        progress: called with (shards done, shards total).

    Returns:
        Per source, its merged :class:`Moments` and the number of non-finite rows dropped.

    Raises:
        NonFiniteError: a source has non-finite rows and ``nonfinite`` is ``error``.
        ShapeError: fewer than 2 finite rows remain.
        NumericalError: the co-moment of a source's rows is beyond float64.
    """
    check_policy(nonfinite)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    groups = [
        shard_tasks(s, summarize_block, device, backend, products_precision(s, precision))
        for s in sources
    ]
    summaries: list[FeatureSummary] = engine.reduce(
        groups, split_every=split_every, progress=progress, gpu=uses_gpu(device)
    )
    out = []
    for source, summary in zip(sources, summaries, strict=True):
        bad = summary.nonfinite
        check_nonfinite(source.location, bad, nonfinite)
        if summary.moments.n < 2:
            raise ShapeError(
                f"{source.location!r} has {summary.moments.n} finite row(s); at least 2 are needed"
            )
        moments = summary.moments
        if not (np.isfinite(moments.mean).all() and np.isfinite(moments.m2).all()):
            # Rows of magnitude about 1e154 or more: Σ(x − mean)² passes 1.8e308.
            raise NumericalError(
                f"{source.location!r}: the co-moment of its rows is beyond float64 (about "
                "1.8e308): the features are too large for a covariance; scale them down (FID "
                "scales by the square of the factor)"
            )
        out.append((summary.moments, bad.count))
    return out
