"""The constraint vocabulary of options and metric parameters (scikit-learn's parameter
constraints are the model): :class:`Interval`, :class:`OneOf`, :class:`Either`, :class:`Flag`,
:class:`Text`, :class:`Path`, :class:`Function`, :class:`Scheduler`, :class:`Encoder` and
:class:`Mode`, and the few intervals that several declarations share (:data:`COUNT`,
:data:`FAN_IN`, :data:`SEED_RANGE`, :data:`POSITIVE`).

Each constraint says whether a value is acceptable (``ok``), what it expects in words
(``describe``) and, when not, why (``problem``); the command line parses text by the same
constraint. Nothing heavy is imported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shardeval.pipeline.options import (
    MAX_COUNT,
    MAX_SEED,
    encoder_problem,
    resize_choices,
)


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
