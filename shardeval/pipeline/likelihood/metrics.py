"""NLL of an entry's features under the reference Gaussian."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.options import NONFINITE_POLICIES

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource


class GaussianNLL(Metric):
    """Mean negative log-likelihood of the entry's feature rows under N(μ_r, Σ_r)."""

    name = "nll_gaussian"
    title = "Gaussian NLL under the reference"
    params: ClassVar[tuple[Param, ...]] = (
        Param("nonfinite", str, "error", "rows with NaN/inf: fail or drop", NONFINITE_POLICIES),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("nll_gaussian", "nats/dim", "mean NLL per feature dimension"),
        Output("nll_gaussian_per_sample", "nats", "mean NLL per row"),
        Output("nll_gaussian_standard_error", "nats", "standard error of the per-row mean"),
        Output("nll_gaussian_n", "rows", "rows of the entry"),
        Output("nll_gaussian_nonfinite_dropped", "rows", "rows left out as non-finite"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Gaussian NLL over steps", "steps", ("nll_gaussian",), "NLL"),
    )

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian

        result = nll_gaussian(
            context.reference.statistics(),
            entry,
            engine=context.engine,
            progress=context.progress,
            nonfinite=self.options["nonfinite"],
            device=context.device,
            backend=context.backend,
        )
        return {
            "nll_gaussian": result.nats_per_dim,
            "nll_gaussian_per_sample": result.nll,
            "nll_gaussian_standard_error": result.standard_error,
            "nll_gaussian_n": result.n,
            "nll_gaussian_nonfinite_dropped": result.nonfinite,
        }
