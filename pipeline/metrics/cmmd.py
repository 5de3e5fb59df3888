"""CMMD of an entry against the reference's embeddings, exact over all pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.metrics.base import Context, Metric, Output, Param, Plot

if TYPE_CHECKING:
    from pipeline.sources import FeatureSource


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


class CMMD(Metric):
    """CMMD (Jayasumana et al. 2024), :mod:`pipeline.cmmd`."""

    name = "cmmd"
    title = "CMMD (RBF MMD of CLIP embeddings)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("sigma", float, 10.0, "RBF bandwidth on unit-norm embeddings", None, _positive),
        Param("unbiased", bool, False, "the U-statistic instead of the reference's V-statistic"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("cmmd", "×10⁻³", "1000 × squared MMD under exp(−‖x̂−ŷ‖²/2σ²)"),
        Output("cmmd_n", "rows", "rows of the entry"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (Plot("CMMD over steps", "steps", ("cmmd",), "CMMD"),)
    needs_reference_features = True

    def sample_request(self) -> dict[str, Any]:
        from pipeline.samples import CMMDParams

        return {"cmmd": CMMDParams(sigma=self.options["sigma"], unbiased=self.options["unbiased"])}

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        return {"cmmd": context.samples(entry)["cmmd"].cmmd, "cmmd_n": entry.n}
