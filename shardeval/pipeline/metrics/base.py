"""The metric plug-in interface.

A metric declares its parameters (names, constraints, defaults), the named results it returns
(scalars and per-entry arrays, every name prefixed by the metric's own, each with a unit), its
plots, the run options it takes and what it reads of each side; its :meth:`Metric.compute`,
from the two sides (:mod:`shardeval.pipeline.metrics.sides`), is the only computation of that
metric: the one-shot function, the command, ``metrics``, a job entry and the training-loop
class all call it, so a metric has one JSON shape and one behaviour everywhere. Job files, the
history and the reports go through these declarations and know no metric by name.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from shardeval.pipeline.errors import MetricOptionError, NumericalError
from shardeval.pipeline.runoptions import Flag, Interval, OneOf, RunOptions, Text

if TYPE_CHECKING:
    import numpy as np

    from shardeval.pipeline.core.engine import Engine, Progress
    from shardeval.pipeline.metrics.paired import PairedDifference
    from shardeval.pipeline.metrics.sides import Side


@dataclass(frozen=True)
class Param:
    """One option of a metric.

    Attributes:
        name: as written in a job file (``[metrics.NAME] option = value``).
        constraint: what a value must be, in the run options' vocabulary
            (:class:`~shardeval.pipeline.runoptions.Interval`, ``OneOf``, ``Flag``…), or a
            plain ``bool``, ``int``, ``float`` (finite) or ``str`` (non-empty).
        default: the value when the option is not given.
        help: one line for the documentation.
        metavar: how the value is shown in a usage line (default: the name in capitals).
        applies_with: the option of the same metric without which this one means nothing
            (KID's ``seed`` draws subsets: it applies with ``subsets``); None: it always
            applies. An option several metrics declare goes to those it applies to.

    The declaration is the option everywhere: job files validate with it, the command line
    makes its flag from it (``--name``, a switch for a flag), the Python API takes it as a
    keyword argument, and all document it from ``help`` and ``default``.
    """

    name: str
    constraint: Any
    default: Any
    help: str
    metavar: str | None = None
    applies_with: str | None = None

    def __post_init__(self) -> None:
        # A plain type is the simplest declaration a plug-in can write: any value of it.
        plain = {bool: Flag(), int: Interval(int, None, None), float: Interval(float, None, None)}
        if self.constraint is str:
            object.__setattr__(self, "constraint", Text())
        elif isinstance(self.constraint, type) and self.constraint in plain:
            object.__setattr__(self, "constraint", plain[self.constraint])

    @property
    def kind(self) -> type:
        """The Python type of a value (``bool``, ``int``, ``float`` or ``str``)."""
        if isinstance(self.constraint, Flag):
            return bool
        if isinstance(self.constraint, Interval):
            return self.constraint.kind
        return str

    @property
    def choices(self) -> tuple[Any, ...] | None:
        return self.constraint.values if isinstance(self.constraint, OneOf) else None

    def describe(self) -> str:
        """One line: what it is and its default."""
        return f"{self.help} (default {self.default!r})"

    def validate(self, metric: str, value: Any) -> Any:
        """``value`` checked (a TOML integer is a valid float), or MetricOptionError."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = self.constraint.problem(value)
        if problem:
            raise MetricOptionError(f"metric {metric!r}: option {self.name!r}: {problem}")
        return value


@dataclass(frozen=True)
class Output:
    """One named result of a metric.

    Attributes:
        name: the result's name, prefixed by the metric's (``fid``, ``fid_mean_term``).
        unit: for headers and axes ("" for a dimensionless number).
        description: one line.
        array: a per-entry array (e.g. an eigen-spectrum) rather than a scalar.
        optional: a result the metric's options may not ask for (e.g. the peers' protocol
            beside an exact estimate): then it is None, recorded as missing, never a number.
        per_row: an array with one value per row of the generated set: the reports of one
            evaluation carry it, a history (one row per entry, of any length) does not.
        worst: of a per-row output, what its lowest values mark, as a report heads the rows
            it lists first (``"least realistic"``); "" when its values are not ranked.
    """

    name: str
    unit: str
    description: str
    array: bool = False
    optional: bool = False
    per_row: bool = False
    worst: str = ""


@dataclass(frozen=True)
class Plot:
    """A plot the report draws from a metric's results.

    Attributes:
        title: heading of the plot.
        kind: ``steps`` (scalar results over the entries' steps) or ``curve`` (array results
            of the latest entry, against their index).
        values: the result names drawn, one line each.
        ylabel: axis label (the unit is appended from the outputs).
        log: logarithmic y axis.
    """

    title: str
    kind: Literal["steps", "curve"]
    values: tuple[str, ...]
    ylabel: str
    log: bool = False


def spectrum(cov: np.ndarray, what: str = "covariance") -> np.ndarray:
    """Eigenvalues of a covariance, largest first (the reports' eigen-spectra).

    Raises:
        NumericalError: the covariance holds NaN/inf or its eigenvalues do not converge.
    """
    import numpy as np

    try:
        values = np.linalg.eigvalsh(cov)
    except np.linalg.LinAlgError as exc:
        raise NumericalError(f"the eigen-spectrum of {what} cannot be computed: {exc}") from exc
    if not np.isfinite(values).all():
        raise NumericalError(f"the eigen-spectrum of {what} is not finite")
    return np.sort(values)[::-1]


@dataclass
class Context:
    """Where and how the metrics of one evaluation run, and the passes they share.

    Attributes:
        engine: the Dask engine.
        options: the run options (checked); the kernels' and products' settings come from it.
        progress: called with (done, total) as tasks finish.
        sample_requests: the pair metrics every metric asked wants from the block-pair passes
            (keyword arguments of :func:`~shardeval.pipeline.pairwise.passes.sample_metrics`),
            so that one pass over the pairs serves all of them.
        named: whether the user named the array read as what every metric asked reads (see
            :attr:`Metric.reads`): True when «array» was given or an array passed in memory,
            False when it could have been, None where «array» names features only (a job's).
        test: a held-out test set, for the metrics that compare with one besides the
            reference (:attr:`Metric.needs_test`); None when not given.
    """

    engine: Engine
    options: RunOptions = field(default_factory=RunOptions)
    progress: Progress | None = None
    sample_requests: dict[str, Any] = field(default_factory=dict)
    named: bool | None = None
    test: Side | None = None
    _samples: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return str(self.options.value("device"))

    @property
    def backend(self) -> str:
        return str(self.options.value("backend"))

    @property
    def precision(self) -> str:
        return str(self.options.value("precision"))

    @property
    def split_every(self) -> int | None:
        return self.options.split_every

    @property
    def block_rows(self) -> int | None:
        return self.options.shard_rows

    def prefetch_moments(
        self, sides: Sequence[Side], nonfinite: str = "error", precision: str | None = None
    ) -> None:
        """The moments of every side in ``sides`` that holds rows, in one task graph (one
        engine call for all of them), kept in each side's cache."""
        from shardeval.pipeline.fid.moments import feature_moments

        precision = precision or self.precision
        key = ("moments", nonfinite, precision)
        todo = [s for s in sides if key not in s.cache and s.can_recompute]
        if not todo:
            return
        computed = feature_moments(
            [s.rows() for s in todo],
            engine=self.engine,
            device=self.device,
            backend=self.backend,
            nonfinite=nonfinite,
            precision=precision,
            split_every=self.split_every,
            progress=self.progress,
        )
        for side, result in zip(todo, computed, strict=True):
            side.cache[key] = result

    def samples(self, real: Side, gen: Side) -> dict[str, Any]:
        """The pair metrics every metric asked wants (:attr:`sample_requests`), computed
        together for ``gen`` against ``real``: one pass over the cross pairs serves all of
        them; the reference's own pairs are kept in its side's cache (a job's entries reuse
        them)."""
        from shardeval.pipeline.pairwise.passes import sample_metrics

        key = (id(real), id(gen))
        if key not in self._samples:
            self._samples[key] = sample_metrics(
                real.rows(),
                gen.rows(),
                engine=self.engine,
                progress=self.progress,
                reference_cache=real.cache,
                device=self.device,
                backend=self.backend,
                precision=self.precision,
                split_every=self.split_every,
                block_rows=self.block_rows,
                **self.sample_requests,
            )
        return self._samples[key]


class Metric(abc.ABC):
    """A metric: its ``name``, ``title``, ``params``, ``outputs`` (the first is the headline;
    every name starts with the metric's) and ``plots``, what it reads, and :meth:`compute`.

    Example:
        >>> class Rows(Metric):
        ...     name, title = "rows", "Rows"
        ...     outputs = (Output("rows", "rows", "rows of the set measured"),)
        ...     needs_reference = False
        ...     def compute(self, real, gen, context):
        ...         return {"rows": gen.n}
        >>> Rows({}).options
        {}
    """

    name: ClassVar[str]
    title: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]]
    plots: ClassVar[tuple[Plot, ...]] = ()
    #: the metric compares the set with a reference at all (False: computed from the set
    #: alone, such as the Inception Score; a job of such metrics needs no [reference])
    needs_reference: ClassVar[bool] = True
    #: the metric compares rows of the set with rows of the reference (not its statistics)
    needs_reference_features: ClassVar[bool] = False
    #: the metric also reads a held-out test set, rows of the training distribution not
    #: trained on (C_T's), given as «test» beside the reference (the training set)
    needs_test: ClassVar[bool] = False
    #: the roles that may be statistics rather than rows (FID takes statistics on either side)
    takes_statistics: ClassVar[tuple[str, ...]] = ()
    #: what it reads of a set: its ``features``, class ``logits`` (which a store may keep
    #: beside its features: the Inception Score's), or ``spatial`` features (sFID's, which an
    #: extraction store keeps beside its features when asked to)
    reads: ClassVar[str] = "features"
    #: the run options its computation takes beyond reading the set (shard_rows, array and
    #: split_every are every metric's): kernels' ``device`` and ``backend``, products'
    #: ``precision``, ``nonfinite``; one that no metric asked takes is refused, not ignored
    run_options: ClassVar[tuple[str, ...]] = ("device", "backend", "precision")
    #: the products it always takes, for a metric that takes no «precision» (KID's and CMMD's
    #: kernel sums: ``fp64``); None: it takes «precision», or makes no products
    products: ClassVar[str | None] = None

    def __init__(self, options: dict[str, Any]):
        known = {p.name: p for p in self.params}
        unknown = set(options) - set(known)
        if unknown:
            raise MetricOptionError(
                f"metric {self.name!r} has no option(s) {sorted(unknown)}; "
                f"it takes {sorted(known) or 'none'}"
            )
        self.options = {
            p.name: p.validate(self.name, options[p.name]) if p.name in options else p.default
            for p in self.params
        }
        #: the options as given (the defaults left out): what a copy with another value is
        #: made from
        self.given = dict(options)
        idle: dict[str, list[str]] = {}  # options given without the one they apply with
        for name in sorted(options):
            needed = known[name].applies_with
            if needed is not None and not self.options[needed]:
                idle.setdefault(needed, []).append(name)
        for needed, names in idle.items():
            listed = ", ".join(f"«{n}»" for n in names)
            verb = "applies" if len(names) == 1 else "apply"
            takes = f"no {listed}" if len(names) == 1 else "none of them"
            raise MetricOptionError(
                f"{listed} {verb} with «{needed}» for {self.name}; "
                f"{self.name} without «{needed}» takes {takes}"
            )

    def declines(self) -> dict[str, str]:
        """Run options this instance does not take although its kind does, each with why
        (KID with «subsets»: the peers' protocol runs in numpy, so the kernels' «device» and
        «backend» and the merge tree's «split_every» apply to the exact estimator only)."""
        return {}

    @classmethod
    def applies(cls, name: str, options: dict[str, Any]) -> bool:
        """Whether the option ``name`` means something to this metric with ``options`` given
        beside it (see :attr:`Param.applies_with`)."""
        declared = {p.name: p for p in cls.params}
        needed = declared[name].applies_with if name in declared else None
        if needed is None:
            return name in declared
        return bool(options.get(needed, declared[needed].default))

    def sample_request(self) -> dict[str, Any]:
        """The pair metrics this metric reads from :meth:`Context.samples` (keyword arguments
        of :func:`shardeval.pipeline.pairwise.passes.sample_metrics`), so that the runner asks
        for all at once."""
        return {}

    def moment_roles(self) -> tuple[str, ...]:
        """The sides whose moments this metric reads (the runner computes them together, in
        one task graph)."""
        return ()

    def check(self, real: Side | None, gen: Side, context: Context) -> None:
        """Refuse sides this metric cannot read, before any metric computes (a runner calls it
        for every metric asked first, so that no pass is spent on a run that fails)."""
        return None

    def difference(
        self,
        real: Side,
        gen_a: Side,
        gen_b: Side,
        context: Context,
        outputs: tuple[dict[str, Any], dict[str, Any]],
    ) -> PairedDifference:
        """The difference M(real, A) − M(real, B) of two sets against one reference, with a
        standard error that counts the reference both share (see
        :mod:`shardeval.pipeline.metrics.paired`); ``outputs``: :meth:`compute`'s for A and
        for B, on ``context``. A metric that cannot say how its difference varies leaves this
        out, and comparisons refuse it."""
        raise NotImplementedError

    def check_difference(self) -> None:
        """Refuse, before any pass, options under which :meth:`difference` cannot hold."""
        return None

    @classmethod
    def compares_pairs(cls) -> bool:
        """Whether the metric implements :meth:`difference`."""
        return cls.difference is not Metric.difference

    @abc.abstractmethod
    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        """The metric's outputs for ``gen`` against ``real``, by name (scalars as float or
        int, arrays 1-D; None for an optional output its options did not ask for)."""

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        """The summary's lines for people: by default the scalar outputs on one line, with
        their units, in the declaration's order."""
        shown = []
        for out in self.outputs:
            value = outputs.get(out.name)
            if out.array or value is None:
                continue
            number = f"{value:,}" if isinstance(value, int) else f"{float(value):.6g}"
            shown.append(f"{out.name} {number}{' ' + out.unit if out.unit else ''}")
        return [f"{self.title}: " + ", ".join(shown)]

    @classmethod
    def declaration(cls) -> dict[str, Any]:
        """What the history records so that reports can show the results without the class."""
        return {
            "title": cls.title,
            "outputs": [vars(o).copy() for o in cls.outputs],
            "plots": [{**vars(p), "values": list(p.values)} for p in cls.plots],
        }

    def check_outputs(self, values: dict[str, Any]) -> dict[str, Any]:
        """The declared outputs, each present; a scalar result that is not finite is an error
        (it would be published as a number)."""
        declared = {o.name: o for o in self.outputs}
        missing = set(declared) - set(values)
        extra = set(values) - set(declared)
        if missing or extra:
            raise NumericalError(
                f"metric {self.name!r} returned {sorted(values)}, declared {sorted(declared)}"
            )
        for name, value in values.items():
            if value is None and declared[name].optional:
                continue
            if not declared[name].array and not math.isfinite(float(value)):
                raise NumericalError(f"metric {self.name!r}: {name} is {value}, not a number")
        return values
