"""Metrics a job can ask for: plug-ins with one interface, so the job runner special-cases none.

A metric validates its options, and computes named scalars (and optional per-entry arrays) for
one entry's feature store against the job's reference statistics.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline import Engine, FeatureSource, Gaussian, feature_moments, frechet_distance
from pipeline.gaussian import nll_gaussian

Progress = Callable[[int, int], None]


class MetricOptionError(ValueError):
    """A metric's options in a job file are wrong."""


def spectrum(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of a covariance, largest first (the reports' eigen-spectra)."""
    return np.sort(np.linalg.eigvalsh(cov))[::-1]


@dataclass(frozen=True)
class Reference:
    """What every metric of a job may use of the reference: its Gaussian statistics."""

    gaussian: Gaussian
    fingerprint: str

    @functools.cached_property
    def spectrum(self) -> np.ndarray:
        """Eigenvalues of the reference covariance, largest first."""
        return spectrum(self.gaussian.cov)


class Metric(abc.ABC):
    """A metric: its ``name``, the ``options`` it accepts (with defaults), and ``compute``,
    which returns named values; the one named ``name`` is what reports plot over steps."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: dict[str, Any]):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise MetricOptionError(
                f"metric {self.name!r} has no option(s) {sorted(unknown)}; "
                f"it takes {sorted(self.defaults) or 'none'}"
            )
        self.options = {**self.defaults, **options}
        for key, value in self.options.items():
            expected = type(self.defaults[key])
            if not isinstance(value, expected):
                raise MetricOptionError(
                    f"metric {self.name!r}: option {key!r} must be "
                    f"{expected.__name__}, got {value!r}"
                )

    @abc.abstractmethod
    def compute(
        self, entry: FeatureSource, reference: Reference, engine: Engine, progress: Progress | None
    ) -> dict[str, Any]: ...


class FID(Metric):
    """Fréchet distance to the reference; also the entry covariance's eigen-spectrum."""

    name = "fid"
    defaults: ClassVar[dict[str, Any]] = {"nonfinite": "error"}

    def compute(
        self, entry: FeatureSource, reference: Reference, engine: Engine, progress: Progress | None
    ) -> dict[str, Any]:
        ((moments, dropped),) = feature_moments(
            [entry], engine=engine, progress=progress, nonfinite=self.options["nonfinite"]
        )
        gen = Gaussian.from_moments(moments, entry.location)
        result = frechet_distance(reference.gaussian, gen)
        return {
            "fid": result.fid,
            "fid_mean_term": result.mean_term,
            "fid_trace_term": result.trace_term,
            "n": moments.n,
            "nonfinite_dropped": dropped,
            "spectrum": spectrum(gen.cov),
        }


class GaussianNLL(Metric):
    """NLL of the entry's features under the reference Gaussian, nats per dimension."""

    name = "nll_gaussian"
    defaults: ClassVar[dict[str, Any]] = {"nonfinite": "error"}

    def compute(
        self, entry: FeatureSource, reference: Reference, engine: Engine, progress: Progress | None
    ) -> dict[str, Any]:
        result = nll_gaussian(
            reference.gaussian,
            entry,
            engine=engine,
            progress=progress,
            nonfinite=self.options["nonfinite"],
        )
        return {"nll_gaussian": result.nats_per_dim, "n": result.n}


METRICS: dict[str, type[Metric]] = {m.name: m for m in (FID, GaussianNLL)}
