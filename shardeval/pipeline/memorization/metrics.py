"""Authenticity (AuthPct) of the generated set against the training set, and each generated
row's nearest training row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.mmd.metrics import reference
from shardeval.pipeline.runoptions import Flag

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side


class AuthPct(Metric):
    """Alaa et al. 2022 as dgm-eval computes it, :mod:`shardeval.pipeline.memorization.authpct`:
    the percentage of generated rows farther from their nearest training row than that row is
    from its own nearest other training row. **The reference is the training set.** Exact over
    the full sets: every nearest-neighbour decision exact in float64."""

    name = "authpct"
    title = "Authenticity (AuthPct), against the training set"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "per_sample",
            Flag(),
            False,
            "also report each generated row's nearest training row, its distance, and "
            "whether the row is authentic",
        ),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output(
            "authpct",
            "%",
            "generated rows farther from their nearest training row than it is from its own",
        ),
        Output("authpct_copies", "rows", "generated rows equal to a training row"),
        Output("authpct_n", "rows", "rows of the generated set"),
        Output("authpct_n_train", "rows", "rows of the training set (the reference)"),
        Output(
            "authpct_nearest_distance",
            "",
            "each generated row's distance to its nearest training row («per_sample»)",
            array=True,
            optional=True,
            per_row=True,
        ),
        Output(
            "authpct_nearest_index",
            "row",
            "the index of that training row, the first of equals («per_sample»)",
            array=True,
            optional=True,
            per_row=True,
        ),
        Output(
            "authpct_authentic",
            "",
            "whether each generated row is authentic: farther from that training row than it "
            "is from its own nearest other («per_sample»)",
            array=True,
            optional=True,
            per_row=True,
        ),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Authenticity over steps", "steps", ("authpct",), "authentic rows"),
    )
    needs_reference_features = True

    def sample_request(self) -> dict[str, Any]:
        return {"memorization": True}

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        r = context.samples(reference(real), gen)["memorization"]
        per_sample = self.options["per_sample"]
        return {
            "authpct": r.authpct,
            "authpct_copies": r.copies,
            "authpct_n": r.n_gen,
            "authpct_n_train": r.n_train,
            "authpct_nearest_distance": r.nearest_distance if per_sample else None,
            "authpct_nearest_index": r.nearest_index if per_sample else None,
            "authpct_authentic": r.authentic if per_sample else None,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o = outputs
        return [
            f"AuthPct {o['authpct']:.2f} % of {o['authpct_n']:,} generated rows are authentic "
            f"against {o['authpct_n_train']:,} training rows; {o['authpct_copies']:,} are "
            "copies of a training row"
        ]
