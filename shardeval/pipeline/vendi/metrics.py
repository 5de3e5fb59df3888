"""The Vendi score's plug-in: a metric of the set alone (no reference), from the second moment
of its unit rows (:mod:`shardeval.pipeline.vendi.score`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.fid.metrics import NONFINITE
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.runoptions import Interval

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side


class Vendi(Metric):
    """Vendi score (Friedman & Dieng 2023) with the cosine kernel,
    :mod:`shardeval.pipeline.vendi.score`: the exponential of the entropy of the eigenvalues
    of K/N, exact for any N from the d × d second moment of the unit rows."""

    name = "vendi"
    title = "Vendi score (cosine kernel)"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "q",
            Interval(float, 0, None, closed="neither"),
            1.0,
            "order of the entropy: 1 the paper's (Shannon's), else VS_q = (Σ λ^q)^(1/(1−q))",
            "Q",
        ),
        NONFINITE,
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("vendi", "", "Vendi score: the effective number of distinct rows"),
        Output("vendi_entropy", "nats", "its logarithm, the entropy of the spectrum of K/N"),
        Output("vendi_n", "rows", "rows of the set"),
        Output("vendi_nonfinite_dropped", "rows", "rows left out as non-finite"),
        Output("vendi_eigenvalues_clamped", "", "eigenvalues within rounding of 0, set to 0"),
        Output("vendi_spectrum", "", "eigenvalues of K/N that can be nonzero", array=True),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Vendi score over steps", "steps", ("vendi",), "Vendi score"),
        Plot("Spectrum of K/N (latest entry)", "curve", ("vendi_spectrum",), "eigenvalue", True),
    )
    needs_reference = False
    run_options = ("nonfinite",)  # float64 numpy: no kernel, no products in fp32

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.vendi.score import vendi_score

        result = vendi_score(
            gen.rows(),
            q=self.options["q"],
            nonfinite=self.options["nonfinite"],
            engine=context.engine,
            split_every=context.split_every,
            progress=context.progress,
        )
        return {
            "vendi": result.score,
            "vendi_entropy": result.entropy,
            "vendi_n": result.n,
            "vendi_nonfinite_dropped": result.nonfinite,
            "vendi_eigenvalues_clamped": result.clamped,
            "vendi_spectrum": result.spectrum,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o, q = outputs, self.options["q"]
        order = "" if q == 1 else f" of order q = {q:g}"
        return [
            f"Vendi score{order} {o['vendi']:.6g}   (exp of the entropy {o['vendi_entropy']:.6g} "
            f"nats of the eigenvalues of K/N, K the cosine kernel of all {o['vendi_n']:,} rows; "
            "exact, from the d × d second moment of the unit rows)"
        ]
