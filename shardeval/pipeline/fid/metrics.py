"""The FID family's plug-ins: FID of an entry's features against the reference statistics,
with the entry's covariance eigen-spectrum beside the reference's, and FID∞ (Chong &
Forsyth 2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot, spectrum
from shardeval.pipeline.options import NONFINITE_POLICIES, seed_problem

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource


#: Seed of FID∞'s nested subsets when none is given.
SEED = 0


class FID(Metric):
    """Fréchet distance between the reference Gaussian and the entry's (Heusel et al. 2017)."""

    name = "fid"
    title = "Fréchet distance (FID)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("nonfinite", str, "error", "rows with NaN/inf: fail or drop", NONFINITE_POLICIES),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("fid", "", "Fréchet distance to the reference"),
        Output("fid_mean_term", "", "‖μ_r − μ_g‖²"),
        Output("fid_trace_term", "", "tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^½"),
        Output("fid_n", "rows", "rows of the entry"),
        Output("fid_nonfinite_dropped", "rows", "rows left out as non-finite"),
        Output("fid_spectrum", "", "eigenvalues of the entry's covariance", array=True),
        Output("fid_reference_spectrum", "", "eigenvalues of the reference covariance", True),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("FID over steps", "steps", ("fid",), "FID"),
        Plot(
            "Covariance eigen-spectra (latest entry and reference)",
            "curve",
            ("fid_reference_spectrum", "fid_spectrum"),
            "eigenvalue",
            log=True,
        ),
    )

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.fid.frechet import (
            frechet_distance,
            warn_if_rounding_reached_spectrum,
        )
        from shardeval.pipeline.fid.gaussian import Gaussian

        moments, dropped = context.moments(entry, self.options["nonfinite"])
        gen = Gaussian.from_moments(moments, entry.location)
        result = frechet_distance(context.reference.statistics(), gen)
        # Jobs take fp32 products, except for sides of n ≤ d (float64 whatever was asked).
        reference_n = context.reference.statistics().n or 0
        warn_if_rounding_reached_spectrum(result, max(moments.n, reference_n) > entry.d)
        return {
            "fid": result.fid,
            "fid_mean_term": result.mean_term,
            "fid_trace_term": result.trace_term,
            "fid_n": moments.n,
            "fid_nonfinite_dropped": dropped,
            "fid_spectrum": spectrum(gen.cov, f"the covariance of {entry.location!r}"),
            "fid_reference_spectrum": context.reference.spectrum,
        }


class FIDInfinity(Metric):
    """:mod:`shardeval.pipeline.fid.infinity`: FID at 15 nested subset sizes, extrapolated to 1/N =
    0."""

    name = "fid_inf"
    title = "FID∞ (FID extrapolated to infinitely many samples)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("seed", int, SEED, "seed of the nested subsets", check=seed_problem, metavar="S"),
        Param("nonfinite", str, "error", "rows with NaN/inf: fail or drop", NONFINITE_POLICIES),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("fid_inf", "", "intercept of FID_N against 1/N"),
        Output("fid_inf_slope", "", "slope b of FID_N = FID∞ + b/N"),
        Output("fid_inf_r2", "", "R² of the line"),
        Output("fid_inf_fid", "", "FID of the whole entry"),
        Output("fid_inf_sizes", "rows", "sizes of the nested subsets", array=True),
        Output("fid_inf_fids", "", "FID at each size", array=True),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("FID∞ and FID over steps", "steps", ("fid_inf", "fid_inf_fid"), "FID"),
        Plot("FID at the nested sizes (latest entry)", "curve", ("fid_inf_fids",), "FID"),
    )

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        import numpy as np

        from shardeval.pipeline.fid.infinity import fid_infinity

        r = fid_infinity(
            context.reference.statistics(),
            entry,
            engine=context.engine,
            seed=self.options["seed"],
            nonfinite=self.options["nonfinite"],
            device=context.device,
            backend=context.backend,
            progress=context.progress,
        )
        return {
            "fid_inf": r.fid_infinity,
            "fid_inf_slope": r.slope,
            "fid_inf_r2": r.r2,
            "fid_inf_fid": r.fid,
            "fid_inf_sizes": np.asarray(r.sizes, dtype=np.float64),
            "fid_inf_fids": np.asarray(r.fids),
        }
