"""Run options, declared once: how a computation reads its inputs and where it runs.

Each :class:`Option` names one option, its constraint (one vocabulary, as scikit-learn's
parameter constraints: :class:`Interval`, :class:`OneOf`, :class:`Path`…), its default and
one line of help. From the declarations come the command line's flags (``--shard-rows``), the
job file's ``[run]`` keys, the Python API's keyword arguments and their docstrings, and the one
check at the boundary (:func:`check_run_options`), which returns a frozen, typed
:class:`RunOptions` that travels to the pipeline as one object. No option is renamed on the way.

Metrics say which of these they take (``Metric.run_options``); a command or call refuses one
given that none of its metrics takes.

Nothing heavy is imported here: parsing arguments and reading job files stay instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from shardeval.pipeline.options import (
    BACKENDS,
    BANDWIDTH_RULES,
    DEFAULT_SPLIT_EVERY,
    DEVICES,
    MAX_COUNT,
    MAX_SEED,
    NONFINITE_POLICIES,
    PRECISIONS,
    encoder_help,
    encoder_problem,
    resize_choices,
    resize_help,
)

# ---------------------------------------------------------------------------------------------
# the constraint vocabulary


def _is_integer(value: object) -> bool:
    """An integer, Python's or numpy's (anything with ``__index__``), not a bool."""
    return not isinstance(value, bool) and hasattr(type(value), "__index__")


def _is_real(value: object) -> bool:
    """A real number: an integer, or anything with ``__float__`` (numpy's floats), not a bool."""
    return _is_integer(value) or (not isinstance(value, bool) and hasattr(type(value), "__float__"))


@dataclass(frozen=True)
class Interval:
    """A number in an interval: ``kind`` int or float, bounds None for unbounded, ``closed``
    which ends belong to it. Floats must be finite. Parsed from text by ``kind``.

    Example:
        >>> Interval(int, 1, None).problem(0)
        'expected an integer of at least 1, got 0'
        >>> Interval(float, 0, None, closed="neither").problem(float("inf"))
        'expected a finite number above 0, got inf'
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right" or "neither"
    #: how the values are named in messages (default from kind and bounds)
    text: str | None = None

    def describe(self) -> str:
        if self.text:
            return self.text
        noun = "an integer" if self.kind is int else "a finite number"
        low_in = self.closed in ("both", "left")
        high_in = self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            ends = (
                ("[" if low_in else "(")
                + f"{self.low:g}, {self.high:g}"
                + ("]" if high_in else ")")
            )
            return f"{noun} in {ends}"
        if self.low is not None:
            return f"{noun} {'of at least' if low_in else 'above'} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'of at most' if high_in else 'below'} {self.high:g}"
        return noun

    def problem(self, value: object) -> str | None:
        ok = _is_integer(value) if self.kind is int else _is_real(value)
        if not ok:
            return f"expected {self.describe()}, got {value!r}"
        number = int(value) if self.kind is int else float(value)  # type: ignore[call-overload, arg-type]
        if isinstance(number, float) and not math.isfinite(number):
            return f"expected {self.describe()}, got {value}"
        low_in = self.closed in ("both", "left")
        high_in = self.closed in ("both", "right")
        if self.low is not None and (number < self.low or (number == self.low and not low_in)):
            return f"expected {self.describe()}, got {value}"
        if self.high is not None and (number > self.high or (number == self.high and not high_in)):
            # a bound the words leave out (a count's 2^62) is said
            beyond = "" if self.text is None else f", beyond {self.high:,}"
            return f"expected {self.describe()}, got {value}{beyond}"
        return None

    def parse(self, text: str) -> Any:
        try:
            return self.kind(text)
        except ValueError:
            raise ValueError(f"expected {self.describe()}, got {text!r}") from None


@dataclass(frozen=True)
class OneOf:
    """One of a closed set of values (strings); parsed as the text itself."""

    values: tuple[Any, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.values))

    def problem(self, value: object) -> str | None:
        if isinstance(value, str) and value in self.values:
            return None
        return f"expected {self.describe()}, got {value!r}"

    def parse(self, text: str) -> Any:
        return text


@dataclass(frozen=True)
class Either:
    """Any of several constraints (a Parzen bandwidth: a number or a rule)."""

    options: tuple[Any, ...]

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.options)

    def problem(self, value: object) -> str | None:
        if any(c.problem(value) is None for c in self.options):
            return None
        return f"expected {self.describe()}, got {value!r}"

    def parse(self, text: str) -> Any:
        for constraint in self.options:
            try:
                value = constraint.parse(text)
            except ValueError:
                continue
            if constraint.problem(value) is None:
                return value
        raise ValueError(f"expected {self.describe()}, got {text!r}")


class _Simple:
    """A constraint by a predicate, with the words of its expectation."""

    expected: str = ""

    def describe(self) -> str:
        return self.expected

    def ok(self, value: object) -> bool:
        raise NotImplementedError

    def problem(self, value: object) -> str | None:
        return None if self.ok(value) else f"expected {self.expected}, got {value!r}"

    def parse(self, text: str) -> Any:
        return text


@dataclass(frozen=True)
class Flag(_Simple):
    """True or False (a switch on the command line)."""

    expected: str = "True or False"

    def ok(self, value: object) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Text(_Simple):
    """A non-empty string (a name)."""

    expected: str = "a name"

    def ok(self, value: object) -> bool:
        return isinstance(value, str) and bool(value)


@dataclass(frozen=True)
class Path(_Simple):
    """A path: a non-empty string or an ``os.PathLike``."""

    expected: str = "a path"

    def ok(self, value: object) -> bool:
        return (isinstance(value, str) and bool(value)) or hasattr(value, "__fspath__")

    def problem(self, value: object) -> str | None:
        if value == "":  # never taken for "not given": that is None
            return "expected a path, got an empty one ('')"
        return super().problem(value)


@dataclass(frozen=True)
class Function(_Simple):
    """A callable (Python only)."""

    expected: str = "a function"

    def ok(self, value: object) -> bool:
        return callable(value)


@dataclass(frozen=True)
class Scheduler(_Simple):
    """'threads', 'sync', a scheduler address, or (Python) a ``distributed.Client``."""

    expected: str = "'threads', 'sync', an address (tcp://host:8786) or a distributed.Client"

    def ok(self, value: object) -> bool:
        if isinstance(value, str):
            return bool(value)
        return getattr(getattr(value, "scheduler", None), "address", None) is not None


@dataclass(frozen=True)
class Encoder(_Simple):
    """An encoder: a registered name, ``timm:NAME``, ``open_clip:NAME:PRETRAINED``,
    ``hf:MODEL_ID``, or (Python) a torch module or callable."""

    expected: str = "an encoder"

    def ok(self, value: object) -> bool:
        return encoder_problem(value) is None

    def problem(self, value: object) -> str | None:
        return encoder_problem(value)


@dataclass(frozen=True)
class Mode(_Simple):
    """A preprocessing mode's name: which encoder takes which is checked against it (a
    user's encoder has modes of its own)."""

    def describe(self) -> str:
        return f"a preprocessing mode ({', '.join(resize_choices())})"

    def ok(self, value: object) -> bool:
        return isinstance(value, str) and bool(value)

    def problem(self, value: object) -> str | None:
        return None if self.ok(value) else f"expected {self.describe()}, got {value!r}"


Constraint = Interval | OneOf | Either | Flag | Text | Path | Function | Scheduler | Encoder | Mode

#: A count of rows, threads, images: a positive integer that still fits int64.
COUNT = Interval(int, 1, MAX_COUNT, text="a positive integer")
#: A merge tree's fan-in.
FAN_IN = Interval(int, 2, MAX_COUNT, text="an integer of at least 2 (a merge tree's fan-in)")
#: A seed of a subset draw: numpy's legacy generator (the peers' KID subsets) takes [0, 2^32).
SEED_RANGE = Interval(int, 0, MAX_SEED, text=f"a seed, an integer in [0, {MAX_SEED}]")
#: A positive, finite number.
POSITIVE = Interval(float, 0, None, closed="neither", text="a positive finite number")


# ---------------------------------------------------------------------------------------------
# the declarations


@dataclass(frozen=True)
class Option:
    """One run option.

    Attributes:
        name: the Python keyword, the job key and (dashed) the command-line flag.
        constraint: what a given value must be (checked once, at the boundary).
        help: one line for ``--help`` and docstrings.
        group: where ``--help`` shows it (``engine``, ``input``, ``kernels``, ``images``…).
        default: what applies when it is not given (``None``: decided where it is used, and
            ``default_text`` says how).
        default_text: the default as people read it.
        metavar: how the value is shown in a usage line.
        api_only: a Python value (a function, a client): no flag, no job key.
        cli_only: not a keyword of the API.
        job: a job file may set it (``[run]``).
    """

    name: str
    constraint: Any
    help: str | Callable[[], str]
    group: str
    default: Any = None
    default_text: str = ""
    metavar: str | None = None
    api_only: bool = False
    job: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_flag(self) -> bool:
        return isinstance(self.constraint, Flag)

    def problem(self, value: object) -> str | None:
        """Why ``value`` cannot be this option's (None: it can, or it was not given)."""
        return None if value is None else self.constraint.problem(value)

    def describe(self) -> str:
        """One line: what it is and its default."""
        text = self.help() if callable(self.help) else self.help
        default = self.default_text or (repr(self.default) if self.default is not None else "")
        return f"{text} (default {default})" if default else text


#: Every run option, in the order ``--help`` shows them.
OPTIONS: tuple[Option, ...] = (
    # engine
    Option(
        "scheduler",
        Scheduler(),
        "'threads' (in-process), 'sync', or a running distributed scheduler (tcp://host:8786); "
        "DASK_SCHEDULER_ADDRESS when not given",
        "engine",
        default_text="threads",
        metavar="ADDRESS",
    ),
    Option(
        "cluster",
        Path(),
        "start a Dask cluster from a spec file (cluster/local.yaml, cuda.yaml, slurm.yaml), "
        "run on it, then close it",
        "engine",
        metavar="SPEC",
    ),
    Option(
        "threads",
        COUNT,
        "Dask threads of the threaded scheduler",
        "engine",
        default_text="all cores",
        metavar="N",
    ),
    Option(
        "performance_report",
        Path(),
        "save Dask's HTML performance report (needs a distributed scheduler or a cluster)",
        "engine",
        metavar="FILE.html",
        job=False,
    ),
    # reading inputs
    Option(
        "shard_rows",
        COUNT,
        "rows per shard (pair metrics: rows per block, one task each)",
        "input",
        default_text="whole stored chunks, about 64 MiB a shard; 32 MiB a block",
        metavar="N",
    ),
    Option(
        "array",
        Text(),
        "the variable inside a Zarr group, xarray dataset or .npz",
        "input",
        metavar="NAME",
    ),
    Option(
        "split_every",
        FAN_IN,
        "fan-in of a balanced merge tree",
        "input",
        default_text=f"a chain of merges on one machine, {DEFAULT_SPLIT_EVERY} on a cluster",
        metavar="K",
    ),
    Option(
        "nonfinite",
        OneOf(NONFINITE_POLICIES),
        "rows with NaN/inf: fail naming them, or drop and count them",
        "input",
        default="error",
    ),
    # kernels
    Option(
        "device",
        OneOf(DEVICES),
        "where shard kernels run (auto: a worker's GPU if it has one, else its CPU)",
        "kernels",
        default="auto",
    ),
    Option(
        "backend",
        OneOf(BACKENDS),
        "kernel implementation (auto: Triton on GPU, BLAS/torch on CPU)",
        "kernels",
        default="auto",
    ),
    Option(
        "precision",
        OneOf(PRECISIONS),
        "products inside a shard: fp32 (float64 and wide-integer data stay exact) or fp64",
        "kernels",
        default="fp32",
    ),
    # image inputs
    Option("encoder", Encoder(), encoder_help, "images", metavar="ENCODER"),
    Option("resize", Mode(), resize_help, "images", metavar="MODE"),
    Option(
        "weights",
        Path(),
        "weights file (inception, timm, open_clip) or Hugging Face model folder (ViTs, hf:); "
        "'random' (or "
        "random:SEED): the Inception with seeded random weights, a smoke test of the image path "
        "without the published file (every number it gives is marked as such; a file named "
        "random is ./random)",
        "images",
        default_text="torch hub's checkpoints / the Hugging Face cache",
        metavar="PATH",
    ),
    Option(
        "batch_size",
        COUNT,
        "images per forward pass and rows per chunk of an extraction store",
        "images",
        default_text="32",
        metavar="B",
    ),
    Option(
        "cache_root",
        Path(),
        "the feature cache of image inputs",
        "images",
        default_text="$SHARDEVAL_CACHE, else $XDG_CACHE_HOME/shardeval or ~/.cache/shardeval",
        metavar="FOLDER",
    ),
    Option(
        "verify",
        Flag(),
        "reuse cached features of images only if the images' bytes are those they were "
        "extracted from (reads every image once); otherwise their listing decides",
        "images",
        default=False,
    ),
    Option(
        "skip_bad",
        Flag(),
        "leave out images that cannot be read or decoded (the report names them)",
        "images",
        default=False,
    ),
    # likelihoods and weights (nll, ess)
    Option(
        "reff",
        POSITIVE,
        "relative efficiency of the draws for the PSIS tail, as az.loo computes it (< 1 for MCMC)",
        "likelihood",
        default=1.0,
        metavar="R",
    ),
    Option(
        "dims",
        COUNT,
        "dimensions per sample, for bits/dim (e.g. 3072 for 32x32 RGB)",
        "likelihood",
        metavar="D",
    ),
    Option(
        "bandwidth",
        Either((POSITIVE, OneOf(BANDWIDTH_RULES))),
        "Parzen bandwidth: a number, 'silverman' or 'cv' (held-out likelihood on a log grid)",
        "likelihood",
        default="silverman",
        metavar="H",
    ),
    # Python only
    Option(
        "progress",
        Function(),
        "called with (done, total) as tasks finish",
        "python",
        api_only=True,
        job=False,
    ),
    Option("log", Function(), "called with notices", "python", api_only=True, job=False),
)

#: The options by name.
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

#: The options of the engine (what a computation on statistics alone does not take).
ENGINE = tuple(o.name for o in OPTIONS if o.group == "engine")
#: How image inputs become features.
IMAGES = tuple(o.name for o in OPTIONS if o.group == "images")
#: How feature stores are read and reduced, and where kernels run: metrics declare which of
#: these they take.
READING = tuple(o.name for o in OPTIONS if o.group in ("input", "kernels"))


def run_option_names(groups: Iterable[str]) -> tuple[str, ...]:
    """The options of the groups named, in declaration order."""
    wanted = set(groups)
    return tuple(o.name for o in OPTIONS if o.group in wanted)


@dataclass(frozen=True)
class RunOptions:
    """The run options of one call, checked: every field holds a given value or None (not
    given: the default applies where the option is used), and ``given`` names those given.

    Read a value with its default applied by :meth:`value`.
    """

    scheduler: Any = None
    cluster: str | None = None
    threads: int | None = None
    performance_report: str | None = None
    shard_rows: int | None = None
    array: str | None = None
    split_every: int | None = None
    nonfinite: str | None = None
    device: str | None = None
    backend: str | None = None
    precision: str | None = None
    encoder: str | None = None
    resize: str | None = None
    weights: str | None = None
    batch_size: int | None = None
    cache_root: str | None = None
    verify: bool | None = None
    skip_bad: bool | None = None
    reff: float | None = None
    dims: int | None = None
    bandwidth: float | str | None = None
    progress: Callable[[int, int], None] | None = None
    log: Callable[[str], None] | None = None
    given: frozenset[str] = field(default_factory=frozenset)

    def value(self, name: str) -> Any:
        """The option's value, or its declared default when not given."""
        value = getattr(self, name)
        return BY_NAME[name].default if value is None else value

    def replace(self, **values: Any) -> RunOptions:
        """A copy with ``values`` set (checked) and counted as given."""
        merged = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "given"}
        merged.update(values)
        return check_run_options({k: v for k, v in merged.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """The given options as keyword arguments."""
        return {name: getattr(self, name) for name in sorted(self.given)}


#: Keywords of the API functions that are not run options, and their constraints.
_OTHER: dict[str, Any] = {
    "seed": SEED_RANGE,
    "infinity": Flag(),
    "real_is_statistics": Flag(),
    "overwrite": Flag(),
    "check_progress": Function(),
}


def option_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be the option ``name`` (a run option, or one of the functions'
    own switches), or None: it can, it was not given (None), or the name is not declared."""
    if value is None:
        return None
    if name in BY_NAME:
        return BY_NAME[name].problem(value)
    constraint = _OTHER.get(name)
    return None if constraint is None else constraint.problem(value)


def is_given(value: object) -> bool:
    """Whether an option's value says the caller gave it: anything but None (not given) and
    False (a switch left off). Not ``value not in (None, False)``: 0 == False, and a seed of 0
    or a count of 0 is a value."""
    return value is not None and value is not False


def check_run_options(given: Mapping[str, Any]) -> RunOptions:
    """The run options in ``given`` (keyword arguments; None or False where not given),
    checked against their declarations, as one typed object.

    Raises:
        OptionError: a value that its declaration refuses, named as «name» (the command line
            shows its flag), or an unknown name.
    """
    from shardeval.pipeline.errors import OptionError

    unknown = sorted(set(given) - set(BY_NAME))
    if unknown:
        raise OptionError(f"unknown run option(s) {', '.join(f'«{n}»' for n in unknown)}")
    values: dict[str, Any] = {}
    for name, value in given.items():
        problem = BY_NAME[name].problem(value)
        if problem:
            raise OptionError(f"«{name}»: {problem}")
        values[name] = value
    names = frozenset(n for n, v in values.items() if is_given(v))
    return RunOptions(**{**values, "given": names})


__all__ = [
    "BY_NAME",
    "COUNT",
    "ENGINE",
    "FAN_IN",
    "IMAGES",
    "OPTIONS",
    "POSITIVE",
    "READING",
    "SEED_RANGE",
    "Constraint",
    "Either",
    "Flag",
    "Function",
    "Interval",
    "OneOf",
    "Option",
    "Path",
    "RunOptions",
    "Scheduler",
    "Text",
    "check_run_options",
    "is_given",
    "option_problem",
    "run_option_names",
]
