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
    "DtypeError": "pipeline.errors",
    "NonFiniteError": "pipeline.errors",
    "ZeroRowError": "pipeline.errors",
    "NumericalError": "pipeline.errors",
    "ShapeError": "pipeline.errors",
    "ShardevalError": "pipeline.errors",
    "SingularCovarianceWarning": "pipeline.errors",
    "StatsFormatError": "pipeline.errors",
    "StoreError": "pipeline.errors",
    "Engine": "pipeline.engine",
    "FeatureSource": "pipeline.sources",
    "check_same_dim": "pipeline.sources",
    "open_features": "pipeline.sources",
    "Moments": "pipeline.states",
    "NonFiniteRows": "pipeline.states",
    "FeatureSummary": "pipeline.summaries",
    "Gaussian": "pipeline.gaussian",
    "as_gaussian": "pipeline.gaussian",
    "FrechetDistance": "pipeline.frechet",
    "frechet_distance": "pipeline.frechet",
    "feature_moments": "pipeline.moments",
    "load_stats": "pipeline.statsio",
    "save_stats": "pipeline.statsio",
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
    from pipeline.engine import Engine
    from pipeline.errors import (
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
    from pipeline.frechet import FrechetDistance, frechet_distance
    from pipeline.gaussian import Gaussian, as_gaussian
    from pipeline.moments import feature_moments
    from pipeline.sources import FeatureSource, check_same_dim, open_features
    from pipeline.states import Moments, NonFiniteRows
    from pipeline.statsio import load_stats, save_stats
    from pipeline.summaries import FeatureSummary


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
