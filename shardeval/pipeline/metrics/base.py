"""The metric plug-in interface.

A metric declares its parameters (names, types, defaults, choices), the named results it
returns (scalars and per-entry arrays, every name prefixed by the metric's own, each with a
unit), and its plots; it computes those results for one feature store against a reference.
Job files, the history and the reports go through these declarations and know no metric by
name.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from shardeval.pipeline.errors import NumericalError, ShardevalError

if TYPE_CHECKING:
    import numpy as np

    from shardeval.pipeline.core.engine import Engine, Progress
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.stores import FeatureSource


class MetricOptionError(ShardevalError):
    """A metric's options are wrong (unknown name, wrong type, a value out of its choices)."""


@dataclass(frozen=True)
class Param:
    """One option of a metric.

    Attributes:
        name: as written in a job file (``[metrics.NAME] option = value``).
        kind: its Python type (``bool``, ``int``, ``float`` or ``str``); a ``float`` is
            refused at ±inf and NaN whatever ``check`` says.
        default: the value when the option is not given.
        help: one line for the documentation.
        choices: the values allowed, when there is a closed set.
        check: returns an error text for a value that has the right type but is not valid.
        metavar: how the value is shown in a usage line (default: the name in capitals).
        applies_with: the option of the same metric without which this one means nothing
            (KID's ``seed`` draws subsets: it applies with ``subsets``); None: it always
            applies. An option several metrics declare goes to those it applies to.

    The declaration is the option everywhere: job files validate with it, the command line
    makes its flag from it (``--name``, a switch for a ``bool``), the Python API takes it as
    a keyword argument, and all document it from ``help`` and ``default``.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    metavar: str | None = None
    applies_with: str | None = None

    def describe(self) -> str:
        """One line: what it is and its default."""
        return f"{self.help} (default {self.default!r})"

    def validate(self, metric: str, value: Any) -> Any:
        # TOML integers are valid floats; booleans are not integers.
        ok = isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise MetricOptionError(
                f"metric {metric!r}: option {self.name!r} must be {self.kind.__name__}, "
                f"got {value!r}"
            )
        if self.kind is float and not math.isfinite(value):
            # No option of a metric means anything at ±inf or NaN, and comparisons with NaN
            # are all False, so a declared check (value > 0) would not catch it.
            raise MetricOptionError(
                f"metric {metric!r}: option {self.name!r} must be a finite number, got {value}"
            )
        if self.choices is not None and value not in self.choices:
            raise MetricOptionError(
                f"metric {metric!r}: option {self.name!r} must be one of "
                f"{list(self.choices)}, got {value!r}"
            )
        problem = self.check(value) if self.check else None
        if problem:
            raise MetricOptionError(f"metric {metric!r}: option {self.name!r} {problem}")
        return value


@dataclass(frozen=True)
class Output:
    """One named result of a metric.

    Attributes:
        name: the result's name, prefixed by the metric's (``fid``, ``fid_mean_term``).
        unit: for headers and axes ("" for a dimensionless number).
        description: one line.
        array: a per-entry array (e.g. an eigen-spectrum) rather than a scalar.
        optional: a scalar the metric's options may not ask for (e.g. the peers' protocol
            beside an exact estimate): then it is None, recorded as missing, never a number.
    """

    name: str
    unit: str
    description: str
    array: bool = False
    optional: bool = False


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


@dataclass(frozen=True, eq=False)
class Reference:
    """What every metric of a job may use of the reference: its Gaussian statistics, and its
    features when the job names a store (pair metrics need them).

    Attributes:
        gaussian: mean and covariance (None where no metric asked uses them: pair metrics
            alone need only the features).
        fingerprint: digest of the reference (and the array read from it).
        location: where it is.
        source: the reference's feature store, or None for statistics.
        cache: results about the reference that every entry reuses (its own block pairs).
    """

    gaussian: Gaussian | None
    fingerprint: str
    location: str = ""
    source: FeatureSource | None = None
    cache: dict[Any, Any] = field(default_factory=dict)

    @functools.cached_property
    def spectrum(self) -> np.ndarray:
        """Eigenvalues of the reference covariance, largest first."""
        return spectrum(self.statistics().cov, self.location)

    def statistics(self) -> Gaussian:
        """The reference Gaussian.

        Raises:
            NumericalError: the reference was given without its statistics.
        """
        if self.gaussian is None:
            raise NumericalError(f"the reference {self.location!r} was given without statistics")
        return self.gaussian


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
    """What a metric may use for one entry: the reference, where and how to run, and the
    entry's merged moments, computed once and shared by every metric that asks for them."""

    reference: Reference
    engine: Engine
    progress: Progress | None = None
    device: str = "auto"
    backend: str = "auto"
    sample_requests: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    split_every: int | None = None
    block_rows: int | None = None
    #: whether the user named the entry's array as what every metric asked reads (see
    #: :attr:`Metric.reads`): True when «array» was given or an array passed in memory, False
    #: when it could have been, None where the run's «array» names features only (a job's)
    named: bool | None = None
    _moments: dict[tuple[str, str], tuple[Moments, int]] = field(default_factory=dict)
    _samples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def moments(self, entry: FeatureSource, nonfinite: str = "error") -> tuple[Moments, int]:
        """The entry's merged moments and the non-finite rows dropped (one pass per entry)."""
        from shardeval.pipeline.fid.moments import feature_moments

        key = (entry.location, nonfinite)
        if key not in self._moments:
            ((moments, dropped),) = feature_moments(
                [entry],
                engine=self.engine,
                device=self.device,
                backend=self.backend,
                nonfinite=nonfinite,
                precision=self.precision,
                split_every=self.split_every,
                progress=self.progress,
            )
            self._moments[key] = (moments, dropped)
        return self._moments[key]

    def samples(self, entry: FeatureSource) -> dict[str, Any]:
        """The pair metrics every metric of the job asked for (``sample_requests``), computed
        together for this entry (one pass over the cross pairs serves all of them; the
        reference's own pairs are computed once per run)."""
        from shardeval.pipeline.pairwise.passes import sample_metrics

        if self.reference.source is None:
            raise NumericalError("pair metrics need the reference's features, not statistics")
        if entry.location not in self._samples:
            self._samples[entry.location] = sample_metrics(
                self.reference.source,
                entry,
                engine=self.engine,
                progress=self.progress,
                reference_cache=self.reference.cache,
                device=self.device,
                backend=self.backend,
                precision=self.precision,
                split_every=self.split_every,
                block_rows=self.block_rows,
                **self.sample_requests,
            )
        return self._samples[entry.location]


class Metric(abc.ABC):
    """A metric: its ``name``, ``title``, ``params``, ``outputs`` (the first is the headline;
    every name starts with the metric's) and ``plots``, and :meth:`compute`.

    Example:
        >>> class Rows(Metric):
        ...     name, title = "rows", "Rows"
        ...     outputs = (Output("rows", "rows", "rows in the store"),)
        ...     def compute(self, entry, context):
        ...         return {"rows": float(entry.n)}
        >>> Rows({}).options
        {}
    """

    name: ClassVar[str]
    title: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]]
    plots: ClassVar[tuple[Plot, ...]] = ()
    #: the metric compares rows of the entry with rows of the reference (not its statistics)
    needs_reference_features: ClassVar[bool] = False
    #: the metric compares the entry with a reference at all (False: computed from the entry
    #: alone, such as the Inception Score; a job of such metrics needs no [reference])
    needs_reference: ClassVar[bool] = True
    #: what it reads of an entry: its ``features``, or class ``logits`` (which a store may keep
    #: beside its features: the Inception Score's)
    reads: ClassVar[str] = "features"
    #: the run options its computation takes beyond reading the entry (shard_rows, array and
    #: split_every are every metric's): kernels' ``device`` and ``backend``, products'
    #: ``precision``; one that no metric asked takes is refused, not ignored
    run_options: ClassVar[tuple[str, ...]] = ("device", "backend", "precision")

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
        of :func:`shardeval.pipeline.pairwise.passes.sample_metrics`), so that the runner asks for
        all at once."""
        return {}

    def check(self, entry: FeatureSource, context: Context) -> None:
        """Refuse an entry this metric cannot read, before any metric computes (a runner
        calls it for every metric asked first, so that no pass is spent on a run that fails);
        :meth:`compute` checks again where it is called alone."""
        return None

    @abc.abstractmethod
    def compute(self, entry: FeatureSource, context: Context) -> dict[str, Any]:
        """The metric's outputs for ``entry``, by name (scalars as float/int, arrays 1-D)."""

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
