"""NLL of the generated set's feature rows under the reference Gaussian."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.fid.metrics import NONFINITE
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.metrics.intervals import NORMAL_CI
from shardeval.pipeline.mmd.metrics import reference

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side

#: What the interval is conditional on (its outputs' descriptions and the summary say it; the
#: same words as :data:`shardeval.pipeline.likelihood.nll.INTERVAL_GIVEN`'s, which importing
#: here would load numpy with the registry).
_GIVEN = "given the reference Gaussian, held fixed"


class GaussianNLL(Metric):
    """Mean negative log-likelihood of the generated set's rows under N(μ_r, Σ_r),
    :mod:`shardeval.pipeline.likelihood.gaussian_nll`, with the standard error of the mean over
    the generated rows.

    «ci» gives the normal interval (mean ∓ z·SE)/d of the headline, nats per dimension. It is
    conditional on the reference Gaussian: μ_r and Σ_r are held fixed, as if known, and only the
    generated rows are taken as a sample, so the interval says nothing of the reference's own
    sampling error (which a finite reference adds on top)."""

    name = "nll_gaussian"
    title = "Gaussian NLL under the reference"
    params: ClassVar[tuple[Param, ...]] = (NONFINITE, NORMAL_CI)
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("nll_gaussian", "nats/dim", "mean NLL per feature dimension"),
        Output("nll_gaussian_per_sample", "nats", "mean NLL per row"),
        Output("nll_gaussian_standard_error", "nats", "standard error of the per-row mean"),
        Output("nll_gaussian_n", "rows", "rows of the set"),
        Output("nll_gaussian_nonfinite_dropped", "rows", "rows left out as non-finite"),
        Output(
            "nll_gaussian_ci_low",
            "nats/dim",
            f"lower end of the interval of the NLL per dimension («ci»), {_GIVEN}",
            optional=True,
        ),
        Output(
            "nll_gaussian_ci_high",
            "nats/dim",
            f"upper end of the interval of the NLL per dimension («ci»), {_GIVEN}",
            optional=True,
        ),
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
        from shardeval.pipeline.likelihood.nll import nll_interval

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
        low = high = None
        if self.options["ci"]:
            d = result.dims or gen.rows().d
            low, high = (end / d for end in nll_interval(result, self.options["ci"]))
        return {
            "nll_gaussian": result.nats_per_dim,
            "nll_gaussian_per_sample": result.nll,
            "nll_gaussian_standard_error": result.standard_error,
            "nll_gaussian_n": result.n,
            "nll_gaussian_nonfinite_dropped": result.nonfinite,
            "nll_gaussian_ci_low": low,
            "nll_gaussian_ci_high": high,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        plain = {k: v for k, v in outputs.items() if "_ci_" not in k}
        lines = super().summary_lines(plain)
        if outputs.get("nll_gaussian_ci_low") is not None:
            lines.append(
                f"  {self.options['ci']:.0%} interval [{outputs['nll_gaussian_ci_low']:.6g}, "
                f"{outputs['nll_gaussian_ci_high']:.6g}] nats/dim (normal, from the standard "
                f"error over the generated rows, {_GIVEN})"
            )
        return lines
