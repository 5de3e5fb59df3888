"""The Inception Score's plug-in: a metric of the entry alone (no reference), from its logits
(an extraction store's ``logits`` array, or the entry itself when it is an (N, C) array of
logits)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.inception_score import SEED
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.metrics.intervals import (
    NORMAL_CI,
    normal_interval,
    rows_for_target,
    se_target_lines,
    se_target_output,
    se_target_param,
)
from shardeval.pipeline.runoptions import SEED_RANGE, Flag, Interval

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side


class InceptionScore(Metric):
    """Inception Score (Salimans et al. 2016), :mod:`shardeval.pipeline.inception_score.score`:
    exact over all samples with its standard error; ``splits`` adds the peers' protocol.

    «ci» gives exp(log IS ∓ z·SE(log IS)), SE(log IS) = SE/IS by the delta method: an interval
    normal on the log scale, inside (0, ∞) as IS is (≥ 1, in fact), and asymmetric about IS."""

    name = "is"
    title = "Inception Score (IS)"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "splits",
            Interval(int, 0, None, text="0 (all samples only) or a positive number of splits"),
            0,
            "0: IS over all samples with its standard error; S: also the peers' protocol "
            "(torch-fidelity's isc, mean and std over S splits; 10 in papers)",
            "S",
        ),
        Param(
            "seed",
            SEED_RANGE,
            SEED,
            "seed of the splits' row order (torch-fidelity's rng_seed)",
            "SEED",
            applies_with="splits",
        ),
        Param(
            "as_logits",
            Flag(),
            False,
            "read the array as class logits whatever its name, width or signs (else one that "
            "nothing names as logits, 2,048 wide as the Inception's pool3 features, or ≥ 0 "
            "everywhere as features after a ReLU, is refused)",
        ),
        NORMAL_CI,
        se_target_param("is"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("is", "", "Inception Score over all samples, exp(E KL(p(y|x) ‖ p(y)))"),
        Output("is_standard_error", "", "its standard error (delta method on log IS)"),
        Output("is_n", "rows", "rows of the set"),
        Output("is_classes", "", "classes (logits per row)"),
        Output("is_log_clamped", "nats", "rounding below 0 in a class's term of log IS, set to 0"),
        Output("is_split_mean", "", "peers' protocol: mean IS over the splits", optional=True),
        Output("is_split_std", "", "peers' protocol: std (ddof 0) over the splits", optional=True),
        Output(
            "is_ci_low",
            "",
            "lower end of the interval («ci»): exp(log IS − z·SE/IS), normal on log IS",
            optional=True,
        ),
        Output(
            "is_ci_high",
            "",
            "upper end of the interval («ci»): exp(log IS + z·SE/IS), normal on log IS",
            optional=True,
        ),
        se_target_output("is", "rows of the set"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Inception Score over steps", "steps", ("is", "is_split_mean"), "IS"),
    )
    needs_reference = False
    reads = "logits"
    run_options = ()  # a float64 softmax in numpy: no kernel, no products to make in fp32

    def check(self, real: Side | None, gen: Side, context: Context) -> None:
        from shardeval.pipeline.inception_score.logits import logits_of

        logits_of(  # reads metadata only
            gen.rows(), context.block_rows, named=context.named, as_logits=self.options["as_logits"]
        )

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.inception_score.logits import logits_of
        from shardeval.pipeline.inception_score.score import inception_score

        declared = self.options["as_logits"]
        result = inception_score(
            logits_of(gen.rows(), context.block_rows, named=context.named, as_logits=declared),
            as_logits=declared,
            splits=self.options["splits"],
            seed=self.options["seed"],
            engine=context.engine,
            split_every=context.split_every,
            progress=context.progress,
        )
        low = high = None
        if self.options["ci"]:
            low, high = (
                math.exp(end)
                for end in normal_interval(
                    result.log_inception_score, result.log_standard_error, self.options["ci"]
                )
            )
        return {
            "is": result.inception_score,
            "is_standard_error": result.standard_error,
            "is_n": result.n,
            "is_classes": result.classes,
            "is_log_clamped": result.log_clamped,
            "is_split_mean": result.split_mean,
            "is_split_std": result.split_std,
            "is_ci_low": low,
            "is_ci_high": high,
            "is_rows_for_se_target": rows_for_target(self.options, result.standard_error, result.n),
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o, opt = outputs, self.options
        lines = [
            f"IS {o['is']:.6g} ± {o['is_standard_error']:.3g}   [all {o['is_n']:,} samples, "
            "exact; standard error by the delta method on log IS]"
        ]
        if o.get("is_ci_low") is not None:
            lines.append(
                f"  {opt['ci']:.0%} interval [{o['is_ci_low']:.6g}, {o['is_ci_high']:.6g}] "
                "(normal on log IS, from its delta-method standard error)"
            )
        lines += se_target_lines(
            o.get("is_rows_for_se_target"), opt["se_target"], o["is_standard_error"], "of the set"
        )
        if opt["splits"]:
            lines.append(
                f"IS {o['is_split_mean']:.6g} ± {o['is_split_std']:.3g}   [peers' protocol: "
                f"mean ± std over {opt['splits']} splits, rows shuffled by seed {opt['seed']}, "
                "as torch-fidelity's isc]"
            )
        return lines
