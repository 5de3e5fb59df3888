"""The Inception Score's plug-in: a metric of the entry alone (no reference), from its logits
(an extraction store's ``logits`` array, or the entry itself when it is an (N, C) array of
logits)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.inception_score import SEED
from shardeval.pipeline.metrics.base import Context, Metric, MetricOptionError, Output, Param, Plot
from shardeval.pipeline.options import seed_problem

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 (all samples only) or a positive number of splits"


class InceptionScore(Metric):
    """Inception Score (Salimans et al. 2016), :mod:`shardeval.pipeline.inception_score.score`."""

    name = "is"
    title = "Inception Score (IS)"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "splits",
            int,
            0,
            "0: IS over all samples with its standard error; S: also the peers' protocol "
            "(torch-fidelity's isc, mean and std over S splits; 10 in papers)",
            None,
            _non_negative,
            "S",
        ),
        Param(
            "seed",
            int,
            SEED,
            "seed of the splits' row order (torch-fidelity's rng_seed)",
            check=seed_problem,
            metavar="SEED",
            applies_with="splits",
        ),
        Param(
            "as_logits",
            bool,
            False,
            "read the array as class logits whatever its name, width or signs (else one that "
            "nothing names as logits, 2,048 wide as the Inception's pool3 features, or ≥ 0 "
            "everywhere as features after a ReLU, is refused)",
        ),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("is", "", "Inception Score over all samples, exp(E KL(p(y|x) ‖ p(y)))"),
        Output("is_standard_error", "", "its standard error (delta method on log IS)"),
        Output("is_n", "rows", "rows of the entry"),
        Output("is_split_mean", "", "peers' protocol: mean IS over the splits", optional=True),
        Output("is_split_std", "", "peers' protocol: std (ddof 0) over the splits", optional=True),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Inception Score over steps", "steps", ("is", "is_split_mean"), "IS"),
    )
    needs_reference = False
    reads = "logits"
    run_options = ()  # a float64 softmax in numpy: no kernel, no products to make in fp32

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        if "seed" in options and not self.options["splits"]:
            raise MetricOptionError(
                "«seed» applies with «splits» (the peers' protocol); the Inception Score over "
                "all samples has no random order"
            )

    def check(self, entry: FeatureSource, context: Context) -> None:
        from shardeval.pipeline.inception_score.logits import logits_of

        logits_of(  # reads metadata only
            entry, context.block_rows, named=context.named, as_logits=self.options["as_logits"]
        )

    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.inception_score.logits import logits_of
        from shardeval.pipeline.inception_score.score import inception_score

        declared = self.options["as_logits"]
        result = inception_score(
            logits_of(entry, context.block_rows, named=context.named, as_logits=declared),
            as_logits=declared,
            splits=self.options["splits"],
            seed=self.options["seed"],
            engine=context.engine,
            split_every=context.split_every,
            progress=context.progress,
        )
        return {
            "is": result.inception_score,
            "is_standard_error": result.standard_error,
            "is_n": result.n,
            "is_split_mean": result.split_mean,
            "is_split_std": result.split_std,
        }
