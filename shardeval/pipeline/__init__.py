"""The mathematics and the task graph: sources → shard states → tree merge → metrics.

Never prints, never parses arguments: :mod:`workflows` does that. Names are imported on first
use, so that ``import pipeline`` costs nothing until a name is needed (the CLI answers ``--help``
and bad input without loading dask or torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name → module that defines it
_EXPORTS = {
    "DtypeError": "shardeval.pipeline.errors",
    "NonFiniteError": "shardeval.pipeline.errors",
    "ZeroRowError": "shardeval.pipeline.errors",
    "NumericalError": "shardeval.pipeline.errors",
    "ShapeError": "shardeval.pipeline.errors",
    "ShardevalError": "shardeval.pipeline.errors",
    "SingularCovarianceWarning": "shardeval.pipeline.errors",
    "StatsFormatError": "shardeval.pipeline.errors",
    "StoreError": "shardeval.pipeline.errors",
    "Engine": "shardeval.pipeline.core.engine",
    "FeatureSource": "shardeval.pipeline.io.stores",
    "check_same_dim": "shardeval.pipeline.io.stores",
    "open_features": "shardeval.pipeline.io.stores",
    "Moments": "shardeval.pipeline.core.states",
    "NonFiniteRows": "shardeval.pipeline.core.states",
    "FeatureSummary": "shardeval.pipeline.core.chunks",
    "Gaussian": "shardeval.pipeline.fid.gaussian",
    "as_gaussian": "shardeval.pipeline.fid.gaussian",
    "FrechetDistance": "shardeval.pipeline.fid.frechet",
    "frechet_distance": "shardeval.pipeline.fid.frechet",
    "feature_moments": "shardeval.pipeline.fid.moments",
    "load_stats": "shardeval.pipeline.io.statsio",
    "save_stats": "shardeval.pipeline.io.statsio",
}

__all__ = [
    "DtypeError",
    "Engine",
    "FeatureSource",
    "FeatureSummary",
    "FrechetDistance",
    "Gaussian",
    "Moments",
    "NonFiniteError",
    "NonFiniteRows",
    "NumericalError",
    "ShapeError",
    "ShardevalError",
    "SingularCovarianceWarning",
    "StatsFormatError",
    "StoreError",
    "ZeroRowError",
    "as_gaussian",
    "check_same_dim",
    "feature_moments",
    "frechet_distance",
    "load_stats",
    "open_features",
    "save_stats",
]

if TYPE_CHECKING:
    from shardeval.pipeline.core.chunks import FeatureSummary
    from shardeval.pipeline.core.engine import Engine
    from shardeval.pipeline.core.states import Moments, NonFiniteRows
    from shardeval.pipeline.errors import (
        DtypeError,
        NonFiniteError,
        NumericalError,
        ShapeError,
        ShardevalError,
        SingularCovarianceWarning,
        StatsFormatError,
        StoreError,
        ZeroRowError,
    )
    from shardeval.pipeline.fid.frechet import FrechetDistance, frechet_distance
    from shardeval.pipeline.fid.gaussian import Gaussian, as_gaussian
    from shardeval.pipeline.fid.moments import feature_moments
    from shardeval.pipeline.io.statsio import load_stats, save_stats
    from shardeval.pipeline.io.stores import FeatureSource, check_same_dim, open_features


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardeval.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
