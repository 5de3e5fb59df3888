"""Paired comparisons: one metric of two generated sets, A and B, against one reference, and the
uncertainty of their difference M(ref, A) − M(ref, B).

The two values share the reference: when its rows vary, both move together, so the variance of
the difference is not the sum of the two variances (that would count the reference's share
twice, and miss how it covaries in the two). A metric that can say how its difference varies
implements :meth:`~shardeval.pipeline.metrics.base.Metric.difference` (FID: the
delete-a-group jackknife dropping group g from the reference and both sets at once; KID: the
Hoeffding decomposition of its U-statistics, whose term within the reference cancels); the
others are refused, never reported with a standard error that ignores the shared reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardeval.pipeline.runoptions import Interval

#: The comparison's confidence level: a level in (0, 1), no «0» (an interval is its point).
LEVEL = Interval(float, 0, 1, closed="neither")
#: The level by default.
DEFAULT_LEVEL = 0.95


def comparable() -> tuple[str, ...]:
    """The registered metrics whose difference a comparison can give: those that implement
    :meth:`~shardeval.pipeline.metrics.base.Metric.difference`."""
    from shardeval.pipeline.metrics import METRICS

    return tuple(m for m in METRICS if METRICS[m].compares_pairs())


@dataclass(frozen=True)
class PairedDifference:
    """M(ref, A) − M(ref, B) of one metric M, with its standard error and interval.

    Attributes:
        metric: the metric's name (``fid``, ``kid``).
        a, b: M(ref, A) and M(ref, B), as the metric alone reports them.
        difference: a − b.
        standard_error: the standard error of the difference, the shared reference counted.
        low, high: the interval at ``level``.
        level: its confidence level.
        method: how the standard error and interval were made, in words.
        a_standard_error, b_standard_error: each value's own standard error (what treating
            the two as independent would combine as √(SE_a² + SE_b²)).
    """

    metric: str
    a: float
    b: float
    difference: float
    standard_error: float
    low: float
    high: float
    level: float
    method: str
    a_standard_error: float
    b_standard_error: float

    def __float__(self) -> float:
        return float(self.difference)

    @property
    def verdict(self) -> str:
        """``a is lower`` or ``a is higher`` when the interval excludes 0, else ``within
        noise``."""
        if self.high < 0:
            return "a is lower"
        if self.low > 0:
            return "a is higher"
        return "within noise"

    def outputs(self) -> dict[str, Any]:
        """The JSON report's section: every name prefixed by the metric's."""
        m = self.metric
        return {
            f"{m}_a": self.a,
            f"{m}_b": self.b,
            f"{m}_difference": self.difference,
            f"{m}_difference_standard_error": self.standard_error,
            f"{m}_difference_ci_low": self.low,
            f"{m}_difference_ci_high": self.high,
            f"{m}_difference_level": self.level,
            f"{m}_difference_method": self.method,
            f"{m}_difference_verdict": self.verdict,
            f"{m}_a_standard_error": self.a_standard_error,
            f"{m}_b_standard_error": self.b_standard_error,
        }

    def summary(self) -> str:
        """One line for people: the two values, the difference ± its standard error, the
        interval, and the verdict.

        Example:
            >>> d = PairedDifference("fid", 3.41, 3.47, -0.06, 0.04, -0.14, 0.02, 0.95, "", 0, 0)
            >>> print(d.summary())
            FID a 3.41, b 3.47: difference -0.06 ± 0.04 (95 % interval [-0.14, 0.02]): within noise
        """
        return (
            f"{self.metric.upper()} a {self.a:.4g}, b {self.b:.4g}: difference "
            f"{self.difference:.3g} ± {self.standard_error:.2g} ({self.level * 100:g} % interval "
            f"[{self.low:.3g}, {self.high:.3g}]): {self.verdict}"
        )


__all__ = ["DEFAULT_LEVEL", "LEVEL", "PairedDifference", "comparable"]
