"""Precision, recall, density and coverage of the generated set against the reference's
features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.mmd.metrics import reference
from shardeval.pipeline.neighbours import PR_K, K
from shardeval.pipeline.runoptions import Interval

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side

_NEIGHBOURS = Interval(int, 1, None)


class PRDC(Metric):
    """Kynkäänniemi et al. 2019 and Naeem et al. 2020, :mod:`shardeval.pipeline.neighbours.prdc`:
    exact over the full sets, every distance decision exact in float64."""

    name = "prdc"
    title = "Precision, recall, density and coverage"
    params: ClassVar[tuple[Param, ...]] = (
        Param("k", _NEIGHBOURS, K, "neighbours for density and coverage", "K"),
        Param("pr_k", _NEIGHBOURS, PR_K, "neighbours for precision and recall", "K"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("prdc_precision", "fraction", "generated rows inside the reference's manifold"),
        Output("prdc_recall", "fraction", "reference rows inside the generated manifold"),
        Output("prdc_density", "", "mean count of reference balls holding a generated row / k"),
        Output("prdc_coverage", "fraction", "reference balls holding a generated row"),
        Output("prdc_n", "rows", "rows of the generated set"),
        Output("prdc_n_real", "rows", "rows of the reference"),
        Output("prdc_uncertain", "", "distance comparisons re-decided in float64"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot(
            "Precision, recall, density and coverage over steps",
            "steps",
            ("prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage"),
            "value",
        ),
    )
    needs_reference_features = True

    def sample_request(self) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import PRDCParams

        return {"prdc": PRDCParams(k=self.options["k"], pr_k=self.options["pr_k"])}

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        r = context.samples(reference(real), gen)["prdc"]
        return {
            "prdc_precision": r.precision,
            "prdc_recall": r.recall,
            "prdc_density": r.density,
            "prdc_coverage": r.coverage,
            "prdc_n": r.n_gen,
            "prdc_n_real": r.n_real,
            "prdc_uncertain": r.uncertain,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o, opt = outputs, self.options
        return [
            f"precision {o['prdc_precision']:.4f}  recall {o['prdc_recall']:.4f}  "
            f"(k = {opt['pr_k']})",
            f"density {o['prdc_density']:.4f}  coverage {o['prdc_coverage']:.4f}  (k = {opt['k']})",
        ]
