"""FID∞ of an entry against the reference statistics (Chong & Forsyth 2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.metrics.base import Context, Metric, Output, Param, Plot
from pipeline.options import NONFINITE_POLICIES, seed_problem

if TYPE_CHECKING:
    from pipeline.sources import FeatureSource


class FIDInfinity(Metric):
    """:mod:`pipeline.fid_infinity`: FID at 15 nested subset sizes, extrapolated to 1/N = 0."""

    name = "fid_inf"
    title = "FID∞ (FID extrapolated to infinitely many samples)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("seed", int, 0, "seed of the nested subsets", check=seed_problem),
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

        from pipeline.fid_infinity import fid_infinity

        r = fid_infinity(
            context.reference.gaussian,
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
