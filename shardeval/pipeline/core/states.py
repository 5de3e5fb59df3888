"""Mergeable states: small frozen objects that hold exactly what a later merge needs.

Each state has a pure, associative ``merge`` (and, where its shape parameters are few, an
``empty(...)`` identity) and a constructor from one block; the result of a reduction therefore
does not depend on shard sizes, tree shape or worker count (up to float64 rounding). States are
float64 and pickle cheaply, since Dask ships them between workers. They are plain numbers:
kernels and devices are the chunk steps' business (:mod:`shardeval.pipeline.core.chunks`).

This module gathers the core's states in one import, and importing it registers all of them:
:mod:`~shardeval.pipeline.core.mergeable` holds the :class:`State` protocol, the :func:`state`
registry (where *every* state type is declared, wherever it lives) and the merge primitives;
:mod:`~shardeval.pipeline.core.moment_states`, :mod:`~shardeval.pipeline.core.log_states` and
:mod:`~shardeval.pipeline.core.count_states` hold the concrete states.
"""

from __future__ import annotations

from shardeval.pipeline.core.count_states import Histogram, Magnitudes, NonFiniteRows
from shardeval.pipeline.core.log_states import LogSumExp, RowLogSumExp, WeightStats
from shardeval.pipeline.core.mergeable import (
    Examples,
    S,
    State,
    T,
    chan_merge,
    examples_of,
    lse_merge,
    merge_fieldwise,
    registered_states,
    state,
)
from shardeval.pipeline.core.moment_states import Moments, RowMean, ScalarMoments

__all__ = [
    "Examples",
    "Histogram",
    "LogSumExp",
    "Magnitudes",
    "Moments",
    "NonFiniteRows",
    "RowLogSumExp",
    "RowMean",
    "S",
    "ScalarMoments",
    "State",
    "T",
    "WeightStats",
    "chan_merge",
    "examples_of",
    "lse_merge",
    "merge_fieldwise",
    "registered_states",
    "state",
]
