"""NLL of the generated set's feature rows under the reference Gaussian."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.fid.metrics import NONFINITE
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.mmd.metrics import reference

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side


class GaussianNLL(Metric):
    """Mean negative log-likelihood of the generated set's rows under N(μ_r, Σ_r),
    :mod:`shardeval.pipeline.likelihood.gaussian_nll`."""

    name = "nll_gaussian"
    title = "Gaussian NLL under the reference"
    params: ClassVar[tuple[Param, ...]] = (NONFINITE,)
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("nll_gaussian", "nats/dim", "mean NLL per feature dimension"),
        Output("nll_gaussian_per_sample", "nats", "mean NLL per row"),
        Output("nll_gaussian_standard_error", "nats", "standard error of the per-row mean"),
        Output("nll_gaussian_n", "rows", "rows of the set"),
        Output("nll_gaussian_nonfinite_dropped", "rows", "rows left out as non-finite"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Gaussian NLL over steps", "steps", ("nll_gaussian",), "NLL"),
    )
    takes_statistics = ("real",)
    run_options = ("device", "backend", "precision", "nonfinite")

    def moment_roles(self) -> tuple[str, ...]:
        return ("real",)

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian

        statistics, _ = reference(real).gaussian(context, self.options["nonfinite"])
        result = nll_gaussian(
            statistics,
            gen.rows(),
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
