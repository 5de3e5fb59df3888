"""The MMD family's plug-ins: KID of an entry against the reference's features (exact over all
pairs, or by subsets), and CMMD against the reference's embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.metrics.base import Context, Metric, MetricOptionError, Output, Param, Plot
from shardeval.pipeline.options import seed_problem

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource


#: The peers' subset protocol's defaults (torch-fidelity's): rows per subset and the seed.
SUBSET_SIZE = 1000
SUBSET_SEED = 2020

#: CMMD's reference implementation's bandwidth and scale.
SIGMA = 10.0
SCALE = 1000.0


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 (all pairs) or a positive number of subsets"


def _at_least_two(value: int) -> str | None:
    return None if value >= 2 else "must be at least 2"


class KID(Metric):
    """Kernel Inception Distance (Bińkowski et al. 2018), :mod:`shardeval.pipeline.mmd.kid`."""

    name = "kid"
    title = "Kernel Inception Distance (KID)"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "subsets",
            int,
            0,
            "0: the unbiased estimator over all pairs; S: the peers' protocol, S random subsets",
            None,
            _non_negative,
            "S",
        ),
        Param(
            "subset_size",
            int,
            SUBSET_SIZE,
            "rows per subset",
            None,
            _at_least_two,
            "M",
            applies_with="subsets",
        ),
        Param(
            "seed",
            int,
            SUBSET_SEED,
            "seed of the subsets (torch-fidelity's)",
            check=seed_problem,
            metavar="SEED",
            applies_with="subsets",
        ),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("kid", "", "squared MMD under (x·y/d + 1)³"),
        Output("kid_standard_error", "", "its standard error (all pairs) or std over subsets"),
        Output("kid_n", "rows", "rows of the entry"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (Plot("KID over steps", "steps", ("kid",), "KID"),)
    needs_reference_features = True

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        subset_only = sorted(k for k in ("subset_size", "seed") if k in options)
        if subset_only and not self.options["subsets"]:
            verb = "applies" if len(subset_only) == 1 else "apply"
            raise MetricOptionError(
                f"{', '.join(f'«{k}»' for k in subset_only)} {verb} with «subsets» (the peers' "
                "protocol); the default KID is over all pairs"
            )

    def sample_request(self) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import KIDParams

        return {} if self.options["subsets"] else {"kid": KIDParams()}

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import kid_subsets

        if self.options["subsets"]:
            if context.reference.source is None:  # load_job refuses such jobs
                raise ValueError("KID needs the reference's features")
            result = kid_subsets(
                context.reference.source,
                entry,
                subsets=self.options["subsets"],
                subset_size=self.options["subset_size"],
                seed=self.options["seed"],
                engine=context.engine,
                progress=context.progress,
            )
        else:
            result = context.samples(entry)["kid"]
        return {"kid": result.kid, "kid_standard_error": result.standard_error, "kid_n": entry.n}


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


class CMMD(Metric):
    """CMMD (Jayasumana et al. 2024), :mod:`shardeval.pipeline.mmd.cmmd`."""

    name = "cmmd"
    title = "CMMD (RBF MMD of CLIP embeddings)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("sigma", float, SIGMA, "RBF bandwidth on unit-norm embeddings", None, _positive, "σ"),
        Param("unbiased", bool, False, "the U-statistic instead of the reference's V-statistic"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("cmmd", "×10⁻³", "1000 × squared MMD under exp(−‖x̂−ŷ‖²/2σ²)"),
        Output("cmmd_n", "rows", "rows of the entry"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (Plot("CMMD over steps", "steps", ("cmmd",), "CMMD"),)
    needs_reference_features = True

    def sample_request(self) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import CMMDParams

        return {"cmmd": CMMDParams(sigma=self.options["sigma"], unbiased=self.options["unbiased"])}

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        return {"cmmd": context.samples(entry)["cmmd"].cmmd, "cmmd_n": entry.n}
