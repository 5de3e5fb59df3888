"""FID of an entry's features against the reference statistics, with the entry's covariance
eigen-spectrum beside the reference's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.metrics.base import Context, Metric, Output, Param, Plot, spectrum
from pipeline.options import NONFINITE_POLICIES

if TYPE_CHECKING:
    from pipeline.sources import FeatureSource


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
        from pipeline.frechet import frechet_distance, warn_if_rounding_reached_spectrum
        from pipeline.gaussian import Gaussian

        moments, dropped = context.moments(entry, self.options["nonfinite"])
        gen = Gaussian.from_moments(moments, entry.location)
        result = frechet_distance(context.reference.gaussian, gen)
        # Jobs take fp32 products, except for sides of n ≤ d (float64 whatever was asked).
        reference_n = context.reference.gaussian.n or 0
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
