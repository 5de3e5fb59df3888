"""``se.compare``: two generated sets, A and B, against one reference, and for each metric the
difference M(ref, A) − M(ref, B) with a standard error and an interval that count the reference
the two share (:mod:`shardeval.pipeline.metrics.paired`).

The metrics are evaluated as :func:`~shardeval.api.evaluate.evaluate` evaluates them, once per
set on one engine, with the reference opened once (its passes serve both sets); each metric's
:meth:`~shardeval.pipeline.metrics.base.Metric.difference` then reads the passes both made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardeval.api.contexts import metric_context, prefetch_passes
from shardeval.api.evaluate import Evaluation, _Inputs, _open_sides, taken_options
from shardeval.api.functions import _noted, _running, with_features
from shardeval.api.inputs import describe_input, is_images
from shardeval.api.report import _settings, side_line
from shardeval.api.results import Report, engine_text, features_made, jsonable
from shardeval.pipeline.errors import OptionError, ShapeError, StoreError
from shardeval.pipeline.runoptions import BY_NAME

#: The roles of the three inputs in the report (``inputs``, ``features_made_by``).
ROLES = ("real", "gen_a", "gen_b")


def compare_level(ci: Any) -> float:
    """The comparison's confidence level: ``ci``, or 0.95 when None.

    Raises:
        OptionError: a level outside (0, 1).
    """
    from shardeval.pipeline.metrics.paired import DEFAULT_LEVEL, LEVEL

    if ci is None:
        return DEFAULT_LEVEL
    if isinstance(ci, int) and not isinstance(ci, bool):
        ci = float(ci)
    problem = LEVEL.problem(ci)
    if problem:
        raise OptionError(f"«ci»: {problem}")
    return float(ci)


def compare(
    real: Any,
    gen_a: Any,
    gen_b: Any,
    metrics: Sequence[str] | str = "fid",
    *,
    ci: float | None = None,
    **options: Any,
) -> Report:
    """Two generated sets against one reference: each metric of A and of B, their difference
    a − b, its standard error and an interval, and a verdict ("a is lower", "a is higher",
    "within noise": the interval holds 0).

    Both values share the reference, so they move together when its rows vary: the
    difference's standard error counts that (the variance of a difference is not the sum of
    the variances). FID: the delete-a-group jackknife, group g of rows dropped from the
    reference and from both sets at once, a t interval (a reference given as statistics is
    held fixed: the interval is then conditional on it). KID: the Hoeffding decomposition of
    its U-statistics, in which the term within the reference cancels and the two cross terms
    covary through the reference's rows, a normal interval. Other metrics are refused.

    Args:
        real: the reference: features, or statistics for FID (held fixed); see
            :mod:`shardeval.api.inputs`.
        gen_a, gen_b: the two generated sets: features (their rows are grouped or paired).
        metrics: names among those that compare (``fid``, ``kid``), as a list or as the
            command line's comma-separated text (``"fid,kid"``).
        ci: the interval's confidence level, in (0, 1) (default 0.95).
        **options: the metrics' own options (``ci_groups``, ``ci_seed`` of FID's jackknife)
            and the run options (``shard_rows``, ``scheduler``…), as :func:`shardeval.metrics`
            takes them.

    Returns:
        :class:`~shardeval.api.results.Report`: ``results[name]`` each metric's
        :class:`~shardeval.pipeline.metrics.paired.PairedDifference`; ``to_dict()[name]`` its
        section (``fid_a``, ``fid_b``, ``fid_difference``, ``fid_difference_standard_error``,
        ``fid_difference_ci_low``/``_high``, ``fid_difference_method``…), ``to_dict()["gen_a"]``
        and ``["gen_b"]`` each set's own outputs; ``float()`` the first metric's difference.

    Raises:
        OptionError: a metric that does not compare, a level outside (0, 1), an option that
            does not apply.
        MetricOptionError: an option's value its declaration refuses (KID's «subsets»).
        ShapeError: feature dimensions that differ; too few rows for the groups.
        StoreError: a generated set given as statistics (its rows are needed).

    Example:
        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.normal(size=(400, 4))
        >>> a, b = rng.normal(0.3, 1, size=(400, 4)), rng.normal(0.5, 1, size=(400, 4))
        >>> r = se.compare(ref, a, b, "fid,kid")
        >>> r["fid"].verdict, bool(r["kid"].standard_error > 0)
        ('a is lower', True)
    """
    from shardeval.pipeline.metrics import metric_names
    from shardeval.pipeline.metrics.paired import comparable

    names = metric_names(metrics)
    refused = [n for n in names if n not in comparable()]
    if refused:
        raise OptionError(
            f"compare supports {', '.join(comparable())}; not {', '.join(refused)}: "
            "no standard error of the difference that counts the shared reference"
        )
    level = compare_level(ci)
    run_options = {k: v for k, v in options.items() if k in BY_NAME}
    own = {k: v for k, v in options.items() if k not in BY_NAME}
    evaluation = Evaluation(names, metric_options={**own, "ci": level}, run_options=run_options)
    for m in evaluation.instances:
        m.check_difference()
    inputs_a = evaluation.inputs(real, gen_a, images_elsewhere=is_images(gen_b))
    inputs_b = evaluation.inputs(real, gen_b, images_elsewhere=is_images(gen_a))
    for gen, inputs in ((gen_a, inputs_a), (gen_b, inputs_b)):
        if inputs.statistics[1]:
            raise StoreError(
                f"{describe_input(gen)!r} holds statistics, but a comparison needs the rows of "
                "both generated sets (their groups, their pairs): give its feature store"
            )
    images = any(inputs_a.images) or any(inputs_b.images)
    with _noted() as notes, _running(evaluation.run_options()) as run:
        ref_side, a_side = evaluation.sides(run, inputs_a)
        b_side = _second_set(run, evaluation, inputs_b)
        sides = dict(zip(ROLES, (ref_side, a_side, b_side), strict=True))
        dims = {s.shown: s.d for s in sides.values()}
        if len(set(dims.values())) > 1:
            listing = ", ".join(f"{p!r} has d={d}" for p, d in dims.items())
            raise ShapeError(f"feature dimensions differ: {listing}; compare features of one model")
        instances = evaluation.instances
        context = metric_context(run, instances, a_side)
        for gen in (a_side, b_side):  # before any pass: a run that fails spends none
            for m in instances:
                m.check(ref_side, gen, context)
        outputs = []
        for gen in (a_side, b_side):
            prefetch_passes(context, instances, ref_side, gen)
            outputs.append(
                {m.name: m.check_outputs(m.compute(ref_side, gen, context)) for m in instances}
            )
        paired = {
            m.name: m.difference(
                ref_side, a_side, b_side, context, (outputs[0][m.name], outputs[1][m.name])
            )
            for m in instances
        }
        return _report(run, notes, instances, paired, outputs, sides, images)


def _second_set(run: Any, evaluation: Evaluation, inputs: _Inputs) -> Any:
    """GEN_B as a side (the reference is opened once, with GEN_A); images extracted into the
    feature cache, which must lie outside the reference too."""
    opened = [None, with_features(run, inputs.values, [False, inputs.images[1]])[1]]
    alone = _Inputs(
        [None, inputs.values[1]], [False, inputs.statistics[1]], [False, inputs.images[1]]
    )
    return _open_sides(run, opened, alone, evaluation._arrays(run, opened, alone))[1]


def _report(
    run: Any,
    notes: Any,
    instances: Sequence[Any],
    paired: dict[str, Any],
    outputs: list[dict[str, Any]],
    sides: dict[str, Any],
    images: bool,
) -> Report:
    """The comparison's report: each metric's difference, each set's own outputs, the inputs,
    how their features were made, the settings and the engine."""
    data: dict[str, Any] = {"metric": "compare", "metrics": list(paired)}
    for name, difference in paired.items():
        data[name] = jsonable(difference.outputs())
    data["gen_a"], data["gen_b"] = (jsonable(o) for o in outputs)
    data["options"] = {m.name: dict(m.options) for m in instances}
    data["inputs"] = {role: s.provenance for role, s in sides.items()}
    made = features_made({role: s.provenance for role, s in sides.items()}, run.cached)
    notes.extend(made.warnings)
    data.update(made.data)
    data["settings"] = _settings(run, instances, taken_options(instances, images))
    tail = run.tail(notes)
    data.update(tail)
    lines = []
    for difference in paired.values():
        lines += [difference.summary(), f"  {difference.method}"]
    labels = {"real": "ref", "gen_a": "a", "gen_b": "b"}
    lines += [side_line(s, labels[role]) for role, s in sides.items()]
    lines += made.lines
    lines.append(f"  {tail['seconds']:.2f} s {engine_text(tail['engine'])}")
    first = next(iter(paired.values()))
    return Report("compare", paired, data, "\n".join(lines), float(first.difference))


__all__ = ["compare", "compare_level"]
