"""Precision, recall, density and coverage of an entry against the reference's features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource


#: Neighbours of density and coverage (Naeem et al.'s 5) and of precision and recall
#: (Kynkäänniemi et al.'s 3).
K = 5
PR_K = 3


def _positive(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


class PRDC(Metric):
    """Kynkäänniemi et al. 2019 and Naeem et al. 2020, :mod:`shardeval.pipeline.neighbours.prdc`."""

    name = "prdc"
    title = "Precision, recall, density and coverage"
    params: ClassVar[tuple[Param, ...]] = (
        Param("k", int, K, "neighbours for density and coverage", None, _positive, "K"),
        Param("pr_k", int, PR_K, "neighbours for precision and recall", None, _positive, "K"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("prdc_precision", "fraction", "generated rows inside the reference's manifold"),
        Output("prdc_recall", "fraction", "reference rows inside the generated manifold"),
        Output("prdc_density", "", "mean count of reference balls holding a generated row / k"),
        Output("prdc_coverage", "fraction", "reference balls holding a generated row"),
        Output("prdc_n", "rows", "rows of the entry"),
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

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        r = context.samples(entry)["prdc"]
        return {
            "prdc_precision": r.precision,
            "prdc_recall": r.recall,
            "prdc_density": r.density,
            "prdc_coverage": r.coverage,
            "prdc_n": entry.n,
        }
