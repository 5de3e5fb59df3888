"""Every metric's uncertainty, declared once: the «ci» level (a normal interval from a
reported standard error, or a metric's own method), «se_target» (how many rows give a chosen
standard error), and the intervals themselves."""

from __future__ import annotations

import math
from typing import Any

from shardeval.pipeline.metrics.base import Output, Param
from shardeval.pipeline.runoptions import Interval

#: A confidence level: the constraint of the «ci» option of every metric that reports an
#: interval (0: none).
CI_LEVEL = Interval(
    float, 0, 1, closed="left", text="0 (no interval) or a confidence level in (0, 1)"
)


#: A standard error to reach: the constraint of the «se_target» option of every metric that
#: reports an interval (0: none).
SE_TARGET = Interval(float, 0, None, text="0 (none) or a positive standard error to reach")


def rows_for(standard_error: float, n: int, target: float) -> int:
    """About how many rows per side give a standard error of ``target``, from one of
    ``standard_error`` measured at ``n`` rows per side and the 1/√N scaling of a standard
    error: ⌈n · (SE / target)²⌉.

    A bound more than an estimate: a metric's variance is A/N + B/N² + … with A, B ≥ 0 (its
    first- and second-order Hoeffding terms), so it falls at least as fast as 1/N, and the
    rows it gives are at most those needed for a target below the measured SE (at least
    those for one above). Where the second-order term is large (a distance near 0, or d
    large against N, as FID's often is) the rows needed are fewer, down to n · SE/target.
    """
    return max(2, math.ceil(n * (standard_error / target) ** 2))


def rows_for_target(options: dict[str, Any], standard_error: float, n: int) -> int | None:
    """:func:`rows_for` the metric's «se_target», or None when it was not asked."""
    target = options.get("se_target")
    return rows_for(standard_error, n, target) if target else None


def se_target_output(metric: str, rows: str = "generated rows (the reference's alike)") -> Output:
    """The output that answers «se_target»."""
    return Output(
        f"{metric}_rows_for_se_target",
        "rows",
        f"{rows} that give «se_target», at most",
        optional=True,
    )


def se_target_lines(
    rows: int | None, target: float, standard_error: float, per: str = "per side"
) -> list[str]:
    """The summary's line for «se_target» (none when it was not asked)."""
    if rows is None:
        return []
    bound = "at most" if target < standard_error else "at least"
    return [
        f"  {bound} about {rows:,} rows {per} would give a standard error of {target:.3g} "
        "(the 1/√N scaling of the measured one, the slowest a standard error falls)"
    ]


def se_target_param(metric: str) -> Param:
    """The «se_target» option of ``metric`` (it applies with «ci»)."""
    return Param(
        "se_target",
        SE_TARGET,
        0.0,
        f"a standard error to reach: the report adds how many rows per side give it at most "
        f"({metric}_rows_for_se_target, from the measured one and the 1/√N scaling, the "
        "slowest a standard error falls); 0: none",
        "SE",
        applies_with="ci",
    )


def normal_interval(estimate: float, standard_error: float, level: float) -> tuple[float, float]:
    """estimate ∓ z·SE, z the standard normal's (1 + level)/2 quantile."""
    from scipy import stats

    half = float(stats.norm.ppf((1 + level) / 2)) * standard_error
    return estimate - half, estimate + half


def wilson_interval(proportion: float, n: int, level: float) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion observed over ``n`` trials (Wilson
    1927): the p with |p̂ − p| ≤ z·√(p(1 − p)/n), z the standard normal's (1 + level)/2
    quantile,

        (p̂ + z²/2n ∓ z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n).

    Unlike p̂ ∓ z·√(p̂(1 − p̂)/n) it stays inside [0, 1] and is not a point at p̂ = 0 or 1
    (Brown, Cai & DasGupta 2001 compare the two).
    """
    from scipy import stats

    z = float(stats.norm.ppf((1 + level) / 2))
    shrink = 1 + z * z / n
    centre = (proportion + z * z / (2 * n)) / shrink
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / shrink
    return max(0.0, centre - half), min(1.0, centre + half)


#: The «ci» of a metric whose interval is normal, from the standard error it reports (KID,
#: CMMD, the Inception Score on the log scale, the Gaussian NLL): one declaration, so one help
#: line for the flag every such metric shares.
NORMAL_CI = Param(
    "ci",
    CI_LEVEL,
    0.0,
    "confidence level of an interval (e.g. 0.95): normal, from the standard error reported "
    "(the Inception Score's on log IS); 0: none",
    "LEVEL",
)
