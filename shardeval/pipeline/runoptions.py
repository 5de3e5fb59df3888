"""Run options, declared once: how a computation reads its inputs and where it runs.

Each :class:`Option` names one option, its constraint (one vocabulary, as scikit-learn's
parameter constraints: :class:`Interval`, :class:`OneOf`, :class:`Path`…), its default and
one line of help. From the declarations come the command line's flags (``--shard-rows``), the
job file's ``[run]`` keys, the Python API's keyword arguments and their docstrings, and the one
check at the boundary (:func:`check_run_options`), which returns a frozen, typed
:class:`RunOptions` that travels to the pipeline as one object. No option is renamed on the way.

Metrics say which of these they take (``Metric.run_options``); a command or call refuses one
given that none of its metrics takes.

This module holds the check and its result; the vocabulary lives in
:mod:`~shardeval.pipeline.constraints`, the declarations in
:mod:`~shardeval.pipeline.option_table`, and both are re-exported here. Nothing heavy is
imported here: parsing arguments and reading job files stay instant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from shardeval.pipeline.constraints import (
    COUNT,
    FAN_IN,
    POSITIVE,
    SEED_RANGE,
    Constraint,
    Either,
    Encoder,
    Flag,
    Function,
    Interval,
    Mode,
    OneOf,
    Path,
    Scheduler,
    Text,
)
from shardeval.pipeline.option_table import (
    BY_NAME,
    ENGINE,
    IMAGES,
    OPTIONS,
    READING,
    Option,
    run_option_names,
)


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
    covariance: str | None = None
    reg_covar: float | None = None
    tol: float | None = None
    max_iter: int | None = None
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
    "gmm": COUNT,
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
    "Encoder",
    "Flag",
    "Function",
    "Interval",
    "Mode",
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
