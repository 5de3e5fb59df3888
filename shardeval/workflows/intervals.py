"""The intervals a history records, as the reports show them: error bars on the plots over
steps, and checkpoints that differ from the one before by less than the noise.

A metric's result ``M`` has an interval when its ``M_ci_low`` and ``M_ci_high`` were recorded
(the metric was run with «ci»); the naming is every metric's, so nothing here knows a metric
by name. Two consecutive checkpoints of one series (:func:`~shardeval.workflows.madeby.series_of`)
are *within noise* when |M₂ − M₁| ≤ √(h₁² + h₂²), h the half-widths of their intervals: the
test of a difference of two independent estimates. Checkpoints measured against one
reference are positively correlated through it, which makes the true interval of their
difference narrower, so the mark errs towards "within noise": it never claims a difference
the paired comparison (``shardeval compare``) would not.
"""

from __future__ import annotations

import math
from typing import Any

from shardeval.workflows.madeby import series_of


def interval_of(row: dict[str, Any], name: str) -> tuple[float, float] | None:
    """(low, high) of result ``name`` in a history row, or None when it has none."""
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    if low is None or high is None or row.get(name) is None:
        return None
    return float(low), float(high)


def within_noise(rows: list[dict[str, Any]], name: str) -> dict[int, int]:
    """For result ``name``: the rows (by index) whose value is within noise of the previous
    checkpoint of their series (the row before it in step order), each mapped to that row.

    Rows without a step, or without an interval, are never marked.
    """
    previous: dict[str, int] = {}
    marked: dict[int, int] = {}
    order = sorted(
        (i for i, r in enumerate(rows) if r.get("step", -1) >= 0), key=lambda i: rows[i]["step"]
    )
    for i in order:
        series = series_of(rows[i]["name"])
        j = previous.get(series)
        previous[series] = i
        here, there = (
            interval_of(rows[i], name),
            interval_of(rows[j], name) if j is not None else None,
        )
        if j is None or here is None or there is None:
            continue
        half = math.hypot((here[1] - here[0]) / 2, (there[1] - there[0]) / 2)
        if abs(float(rows[i][name]) - float(rows[j][name])) <= half:
            marked[i] = j
    return marked


def noise_lines(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    """One line per checkpoint within noise of the one before it, for people."""
    lines = []
    for name in names:
        for i, j in sorted(within_noise(rows, name).items()):
            a, b = rows[j], rows[i]
            lines.append(
                f"{b['name']} (step {b['step']}): {name} {b[name]:.6g} is within noise of "
                f"{a['name']} (step {a['step']}, {a[name]:.6g}): the difference is inside their "
                "intervals' half-widths combined"
            )
    return lines


def with_interval(names: list[str], present: Any) -> list[str]:
    """The names among ``names`` whose interval columns are ``present`` (a container of
    column names)."""
    return [n for n in names if f"{n}_ci_low" in present and f"{n}_ci_high" in present]
