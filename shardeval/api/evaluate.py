"""The one route of every metric: its options routed and checked, the inputs opened as two
sides, each plug-in's :meth:`~shardeval.pipeline.metrics.Metric.compute` (the only computation
of a metric), and one report (:mod:`shardeval.api.report`).

``se.fid``, ``se.kid``, ``se.cmmd``, ``se.prdc``, ``se.fid_infinity``, ``se.inception_score``
and ``se.metrics`` are :func:`evaluate` with their metric names; the commands of the same names
parse, call them and format; a job evaluates each entry through ``se.metrics``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shardeval.api.contexts import metric_context, prefetch_passes
from shardeval.api.functions import (
    _must_exist,
    _noted,
    _running,
    image_flags,
    refuse,
    with_features,
)
from shardeval.api.heldout import check_test, check_test_side
from shardeval.api.inputs import (
    arrays_for,
    describe_input,
    features,
    is_images,
    is_path,
    is_statistics,
    statistics,
)
from shardeval.api.report import build_report
from shardeval.api.results import Report
from shardeval.api.spatial_inputs import reads_spatial, spatial_arrays, spatial_statistics
from shardeval.pipeline.errors import OptionError, ShapeError, StoreError
from shardeval.pipeline.runoptions import IMAGES, check_run_options

#: Run options that every metric reading rows takes: how the rows are read and merged.
_ROWS = ("shard_rows", "array", "split_every")


def metric_instances(names: Sequence[str] | str, options: dict[str, Any]) -> list[Any]:
    """The plug-ins ``names`` asks for, each with the options given that are its own.

    An option several asked metrics declare (``seed``) goes to those it means something to
    (beside ``fid_inf``, an exact KID draws no subsets and takes no seed); one that means
    nothing to any of them, or that no asked metric declares, is refused.

    Raises:
        OptionError: an unknown metric, or an option no asked metric takes.
        MetricOptionError: a value that a declaration refuses.
    """
    from shardeval.pipeline.metrics import METRICS, metric_names

    wanted = metric_names(names)
    declared = {m: {p.name for p in METRICS[m].params} for m in wanted}
    for option, value in options.items():
        if value is None or any(option in d for d in declared.values()):
            continue
        owners = [m for m in METRICS if option in {p.name for p in METRICS[m].params}]
        if not owners:
            raise OptionError(f"no metric takes «{option}»")
        verb = "is" if len(owners) == 1 else "are"
        raise OptionError(f"«{option}» applies to {', '.join(owners)}, which {verb} not asked for")
    given_to = {
        m: {k: v for k, v in options.items() if k in declared[m] and v is not None} for m in wanted
    }
    for option in sorted({k for m in wanted for k in given_to[m]}):
        owners = [m for m in wanted if option in given_to[m]]
        if len(owners) < 2:
            continue  # one metric's own: it refuses a value that means nothing to it
        takers = [m for m in owners if METRICS[m].applies(option, given_to[m])]
        if not takers:
            needs = sorted({_needed(m, option) for m in owners})
            raise OptionError(
                f"«{option}» means nothing to {', '.join(owners)} as asked (it applies with "
                f"{', '.join(needs)})"
            )
        for m in set(owners) - set(takers):
            del given_to[m][option]
    return [METRICS[m](given_to[m]) for m in wanted]


def _needed(metric: str, option: str) -> str:
    """The option without which ``option`` means nothing to ``metric`` (marked)."""
    from shardeval.pipeline.metrics import METRICS

    param = next(p for p in METRICS[metric].params if p.name == option)
    return f"«{param.applies_with}» for {metric}" if param.applies_with else metric


def taken_options(instances: Sequence[Any], images: bool) -> tuple[str, ...]:
    """The run options the metrics asked take: reading rows, what each declares, and the
    image options when an input is images."""
    declared = [*_ROWS, *(o for m in instances for o in m.run_options)]
    taken = [o for o in declared if any(_takes(m, o) for m in instances)]
    if images:
        taken += IMAGES
    return tuple(dict.fromkeys(taken))


def _refuse_untaken(instances: Sequence[Any], given: dict[str, Any]) -> None:
    """Run options no asked metric takes are refused, never recorded and ignored."""
    names = [m.name for m in instances]
    declined: dict[str, list[str]] = {}
    for m in instances:  # an option that this instance declines and no other takes
        for option, why in m.declines().items():
            if not any(_takes(o, option) for o in instances if o is not m):
                declined.setdefault(why, []).append(option)
    for why, options in declined.items():
        refuse(given, list(dict.fromkeys(options)), why)
    taken = {o for m in instances for o in m.run_options}
    precision = given.get("precision")
    fixed = {getattr(m, "products", None) for m in instances if "precision" not in m.run_options}
    if precision is not None and "precision" not in taken:
        if fixed == {precision}:
            given = {**given, "precision": None}  # what they always do: fp64
        elif precision == "fp32" and None not in fixed:
            raise OptionError(
                f"«precision='fp32'» cannot apply to {' or '.join(names)}: their kernel sums "
                "always take float64 products of centred rows, since no bound on fp32 rounding "
                "holds their value to 1e-5 (docs/numerics.md); «precision» applies to "
                f"{_takers('precision')}"
            )
    if given.get("nonfinite") == "drop":
        keep = [m.name for m in instances if "nonfinite" not in m.options]
        if keep:
            one = len(keep) == 1
            raise OptionError(
                f"«nonfinite='drop'» cannot apply to {', '.join(keep)}, which "
                f"need{'s' if one else ''} every row"
            )
    untaken = [o for o in ("device", "backend", "precision", "nonfinite") if o not in taken]
    refuse(given, untaken, f"do not apply to the metrics asked ({', '.join(names)})")


def _takes(metric: Any, option: str) -> bool:
    """Whether a metric instance takes the run option ``option``."""
    declared = option in _ROWS or option in metric.run_options
    return declared and option not in metric.declines()


def _takers(option: str) -> str:
    from shardeval.pipeline.metrics import METRICS

    return ", ".join(m for m in METRICS if option in METRICS[m].run_options)


def _check_references(instances: Sequence[Any], real: Any) -> None:
    compared = [m.name for m in instances if m.needs_reference]
    if real is None and compared:
        raise OptionError(
            f"{', '.join(compared)} compare{'s' if len(compared) == 1 else ''} the set with a "
            "reference, and none was given"
        )
    if real is not None and not compared:
        one = len(instances) == 1
        names = ", ".join(m.name for m in instances)
        raise OptionError(
            f"{names} measure{'s' if one else ''} the set alone and take{'s' if one else ''} "
            "no reference: give the set alone"
        )


def _statistics_role(instances: Sequence[Any], x: Any, role: str, forced: bool) -> bool:
    """Whether the input of ``role`` is read as statistics (refused where a metric asked needs
    its rows; a guided-diffusion reference batch holds both, and gives its rows then)."""
    from shardeval.pipeline.io.statsio import is_adm_reference

    if x is None or not (forced or is_statistics(x)):
        return False
    rows = [m.name for m in instances if role not in m.takes_statistics]
    if not rows:
        return True
    if role == "real" and is_path(x) and is_adm_reference(os.fspath(x)):
        return False  # its images give the rows; its statistics stay FID's
    needs = "need" if len(rows) > 1 else "needs"
    what = "the reference's features" if role == "real" else "its rows"
    raise StoreError(
        f"{describe_input(x)!r} holds statistics, but {', '.join(rows)} {needs} {what}: give "
        "its feature store"
    )


@dataclass(frozen=True)
class Reference:
    """A reference given as its rows, its statistics, or both (a job's: its store, and the
    statistics computed once and kept beside the history; a guided-diffusion batch holds
    both). FID reads the statistics where given; the pair metrics read the rows.

    Attributes:
        rows: features (anything :func:`~shardeval.api.inputs.features` opens), or None.
        statistics: statistics (a file, a ``Gaussian``, ``Moments``), or None.
    """

    rows: Any = None
    statistics: Any = None


class Evaluation:
    """Metrics asked once and evaluated for one or more sets against one reference: options
    routed and checked once, the reference opened once, its passes (moments, its own block
    pairs) shared by every set measured. :func:`evaluate` is one such evaluation; a job's run
    is one over its entries.

    Args:
        metrics: registered metric names, or plug-in instances made already (a job's).
        metric_options: the metrics' own options by name (with names).
        run_options: run options by name (:mod:`shardeval.pipeline.runoptions`).

    Raises:
        OptionError, MetricOptionError: options that do not apply or fit.
    """

    def __init__(
        self,
        metrics: Sequence[Any] | str,
        *,
        metric_options: dict[str, Any] | None = None,
        run_options: dict[str, Any] | None = None,
    ) -> None:
        self.given = {k: v for k, v in (run_options or {}).items() if v is not None}
        self.options = check_run_options(self.given)
        if isinstance(metrics, str) or all(isinstance(m, str) for m in metrics):
            instances = metric_instances(metrics, metric_options or {})
        else:
            instances = list(metrics)
        _refuse_untaken(instances, self.given)
        nonfinite = self.options.nonfinite
        if nonfinite is not None:  # the run's policy: each metric that takes one gets it
            instances = [
                type(m)({**m.given, "nonfinite": nonfinite}) if "nonfinite" in m.options else m
                for m in instances
            ]
        self.instances = instances

    def inputs(
        self, real: Any, gen: Any, real_is_statistics: bool = False, images_elsewhere: bool = False
    ) -> _Inputs:
        """What ``real`` and ``gen`` are, checked before any engine starts: statistics where
        the metrics take them, images, or features. ``images_elsewhere``: another input of the
        evaluation is images (a comparison's other set), so the image options apply.

        Raises:
            OptionError: a reference given to metrics of one set, or none where one is needed;
                image or reading options where no input takes them.
            StoreError: statistics where a metric needs rows; a path that does not exist.
        """
        _check_references(self.instances, real)
        _must_exist(real, gen)
        if isinstance(real, Reference):
            return _Inputs([real, gen], [False, False], [False, is_images(gen)])
        as_stats = [
            _statistics_role(self.instances, real, "real", real_is_statistics),
            _statistics_role(self.instances, gen, "gen", False),
        ]
        images = image_flags(
            [None if s else x for x, s in zip((real, gen), as_stats, strict=True)],
            {} if images_elsewhere else self.given,
        )
        if reads_spatial(self.instances) and any(images):
            raise OptionError(
                "sFID reads spatial features, which the feature cache of images does not keep: "
                "extract them with «spatial=True» and give the store"
            )
        readers = [m.name for m in self.instances if m.reads == "logits"]
        encoder = self.given.get("encoder")
        if readers and any(images) and encoder not in (None, "inception"):
            raise OptionError(
                f"«encoder={encoder!r}» has no class logits; {', '.join(readers)} take the "
                "Inception's («encoder='inception'»)"
            )
        if all(as_stats) or (real is None and as_stats[1]):
            reading = [o for o in self.given if o not in ("progress", "log")]
            refuse(self.given, reading, "apply to feature stores; both inputs are statistics")
        return _Inputs([real, gen], as_stats, images)

    def run_options(self) -> dict[str, Any]:
        """The options ``_running`` builds the engine from, with the checked object."""
        return {**self.given, "run_options": self.options}

    def sides(self, run: Any, inputs: _Inputs) -> list[Any]:
        """The inputs as sides (images extracted into the feature cache, stores opened)."""
        opened = with_features(run, inputs.values, inputs.images)
        spatial = reads_spatial(self.instances)
        return _open_sides(run, opened, inputs, self._arrays(run, opened, inputs), spatial)

    def _arrays(self, run: Any, opened: list[Any], inputs: _Inputs) -> list[str | None]:
        """«array» for each side: it picks the variable of each input that holds several and
        leaves an input of one array as it is; metrics that all read logits read GEN's
        ``logits`` array among others unless «array» names another, and sFID an extraction
        store's ``spatial`` array."""
        array = run.options.get("array")
        if {m.reads for m in self.instances} == {"logits"}:  # of GEN alone: no reference
            from shardeval.pipeline.inception_score.logits import array_of_logits

            return [None, array_of_logits(opened[1], array)]
        if array is None and reads_spatial(self.instances):
            return spatial_arrays(opened, inputs.statistics)
        rows = [
            i
            for i, (x, stats) in enumerate(zip(opened, inputs.statistics, strict=True))
            if x is not None and not stats
        ]
        arrays: list[str | None] = [None, None]
        for i, name in zip(rows, arrays_for([opened[i] for i in rows], array), strict=True):
            arrays[i] = name
        return arrays

    def report(
        self, run: Any, notes: Any, real: Any, gen: Any, images: bool = False, test: Any = None
    ) -> Report:
        """The metrics of ``gen`` against ``real`` (sides; ``test``: the held-out test set's
        side, or None), and their report."""
        context = metric_context(run, self.instances, gen, test)
        for m in self.instances:  # before any pass: a run that fails spends none
            m.check(real, gen, context)
        prefetch_passes(context, self.instances, real, gen)
        results = {m.name: m.check_outputs(m.compute(real, gen, context)) for m in self.instances}
        taken = taken_options(self.instances, images)
        return build_report(self.instances, results, real, gen, run, notes, taken, test=test)

    @contextlib.contextmanager
    def session(self, engine: Any, *, progress: Any = None, log: Any = None) -> Iterator[Session]:
        """Evaluations on an engine the caller holds (a job's), one set at a time."""
        from shardeval.api.functions import _Run

        options = {**self.run_options(), "progress": progress, "log": log}
        yield Session(self, _Run(engine, progress, options, time.perf_counter()))


class Session:
    """An :class:`Evaluation` on one engine: the reference opened once (its passes kept for
    every set), then :meth:`measure` per set."""

    def __init__(self, evaluation: Evaluation, run: Any) -> None:
        self.evaluation, self.run = evaluation, run

    def reference(self, real: Reference) -> Any:
        """The reference as a side, opened once (its cache serves every set measured)."""
        array = self.run.options.get("array")
        return _side(self.run, "real", real, real, False, False, array)

    def measure(
        self, real: Any, gen: Any, metrics: Sequence[Any] | None = None, test: Any = None
    ) -> Report:
        """The metrics (all, or ``metrics``, plug-in instances of this evaluation) of the
        features ``gen`` (a feature source) against the side ``real``, with the held-out test
        set ``test`` (a feature source) for the metrics that read one."""
        evaluation = self.evaluation
        if metrics is not None:
            evaluation = Evaluation(list(metrics), run_options=self.evaluation.given)
        check_test(evaluation.instances, test)
        with _noted() as notes:
            array = self.run.options.get("array")
            gen_side = _side(self.run, "gen", gen, gen, False, False, array)
            held_out = (
                None if test is None else _side(self.run, "test", test, test, False, False, array)
            )
            check_test_side(held_out, gen_side)
            return evaluation.report(self.run, notes, real, gen_side, test=held_out)


@dataclass(frozen=True)
class _Inputs:
    """Two inputs as checked: each a statistics input, images, or features."""

    values: list[Any]
    statistics: list[bool]
    images: list[bool]


def evaluate(
    names: Sequence[str] | str,
    real: Any,
    gen: Any,
    *,
    metric_options: dict[str, Any] | None = None,
    run_options: dict[str, Any] | None = None,
    real_is_statistics: bool = False,
    test: Any = None,
) -> Report:
    """The metrics ``names`` of ``gen`` against ``real`` (None for metrics of one set).

    Args:
        names: registered metric names (a list, or the command line's ``"fid,kid"``).
        real, gen: features, statistics or images (see :mod:`shardeval.api.inputs`); ``real``
            may be a :class:`Reference` (rows and statistics).
        metric_options: the metrics' own options by name (see :func:`metric_instances`).
        run_options: run options by name (:mod:`shardeval.pipeline.runoptions`), checked here.
        real_is_statistics: read ``real`` as statistics whatever it looks like.
        test: a held-out test set (features: a store or an array), for the metrics that
            compare with one (``ct``: then ``real`` is the training set); refused by the
            others.

    Returns:
        The :class:`~shardeval.api.results.Report`: one section per metric with its declared
        outputs, ``float()`` the first metric's headline.

    Raises:
        OptionError, MetricOptionError: options that do not apply or fit.
        StoreError, ShapeError, NonFiniteError, NumericalError: inputs, named.
    """
    evaluation = Evaluation(names, metric_options=metric_options, run_options=run_options)
    inputs = evaluation.inputs(real, gen, real_is_statistics)
    check_test(evaluation.instances, test)
    with _noted() as notes, _running(evaluation.run_options()) as run:
        real_side, gen_side = evaluation.sides(run, inputs)
        # «array» as the other inputs take it: the variable of an input that holds several
        others = [x for x in inputs.values if x is not None]
        array = arrays_for([*others, test], run.options.get("array"))[-1]
        held_out = None if test is None else _side(run, "test", test, test, False, False, array)
        check_test_side(held_out, gen_side)
        images = any(inputs.images)
        return evaluation.report(run, notes, real_side, gen_side, images, held_out)


def _open_sides(
    run: Any, opened: list[Any], inputs: _Inputs, arrays: list[str | None], spatial: bool = False
) -> list[Any]:
    """The inputs as sides (``opened``: images already extracted into the feature cache):
    stores opened with their «array», statistics read (a guided-diffusion reference batch's
    sFID statistics where ``spatial``); one feature dimension."""
    sides = [
        _side(run, role, x, original, stats, image, array, spatial)
        for role, x, original, stats, image, array in zip(
            ("real", "gen"),
            opened,
            inputs.values,
            inputs.statistics,
            inputs.images,
            arrays,
            strict=True,
        )
    ]
    dims = {s.shown: s.d for s in sides if s is not None}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{p!r} has d={d}" for p, d in dims.items())
        raise ShapeError(f"feature dimensions differ: {listing}; compare features of one model")
    return sides


def _side(
    run: Any,
    role: str,
    x: Any,
    original: Any,
    stats: bool,
    image: bool,
    array: str | None,
    spatial: bool = False,
) -> Any:
    """One input as a side (None stays None: no reference)."""
    from shardeval.pipeline.io.statsio import is_adm_reference, stats_provenance
    from shardeval.pipeline.metrics.sides import source_side, statistics_side

    if x is None:
        return None
    rows = run.options.get("shard_rows")
    if isinstance(x, Reference):
        if x.rows is None:
            return statistics_side(role, statistics(x.statistics))
        given = None if x.statistics is None else statistics(x.statistics)
        return source_side(role, features(x.rows, array=array, shard_rows=rows), statistics=given)
    path = is_path(original) and not image
    adm = role == "real" and is_path(original) and is_adm_reference(os.fspath(original))
    held = stats_provenance(os.fspath(original)) if is_path(original) and (stats or adm) else None
    read = spatial_statistics if spatial else statistics
    if stats:
        return statistics_side(role, read(x), held, describe_input(original))
    side = source_side(
        role,
        features(x, array=array, shard_rows=rows),
        statistics=read(original) if adm else None,
    )
    if adm and held:
        side.provenance = {**side.provenance, "statistics": held}
    # an array passed in memory has no name; an opened store (a job's) keeps its own
    from shardeval.pipeline.io.stores import FeatureSource

    side.in_memory = not path and not image and not isinstance(x, FeatureSource)
    return side
