"""The mathematics and the task graph: sources → shard states → tree merge → metrics.

Never prints, never parses arguments: :mod:`workflows` does that.
"""

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
)
from pipeline.fid import FrechetDistance, Gaussian, feature_moments, frechet_distance
from pipeline.sources import FeatureSource, check_same_dim, open_features
from pipeline.states import FeatureSummary, Moments, NonFiniteRows
from pipeline.statsio import as_gaussian, load_stats, save_stats

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
    "as_gaussian",
    "check_same_dim",
    "feature_moments",
    "frechet_distance",
    "load_stats",
    "open_features",
    "save_stats",
]
