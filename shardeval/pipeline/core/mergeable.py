"""What a mergeable state is: the :class:`State` protocol, the one registry (:func:`state`), and
the merge primitives the states share.

Registering a state gives Dask its true byte size (through ``__sizeof__``, so nothing here imports
Dask) and records its examples, on which ``tests/pipeline/test_state_laws.py`` runs the merge laws
(identity, associativity, order invariance, pickling) for every registered state. The merges
(Chan, Golub & LeVeque's moments, log-sum-exp pairs, field by field for composite states) are
here so that every state merges through the same few lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from types import MappingProxyType
from typing import Any, Protocol, Self, TypeAlias, TypeVar, runtime_checkable

import numpy as np


@runtime_checkable
class State(Protocol):
    """A mergeable statistic: a frozen dataclass whose ``merge`` is pure (returns a new state,
    or one of its operands unchanged; never mutates), associative and, up to float64
    rounding, order invariant, with an identity element (an empty state).

    The identity is no method here, since what it needs differs by state (d, rows, the tail
    kept, bin edges): a state's ``empty(...)`` takes its own, and its registered examples carry
    one. ``__sizeof__`` counts the bytes the state's arrays hold, which is what Dask's ``sizeof``
    reports (through ``sys.getsizeof``) when it places tasks and accounts worker memory;
    :func:`state` installs it."""

    def merge(self, other: Self) -> Self: ...

    def __sizeof__(self) -> int: ...


S = TypeVar("S", bound=State)


#: What a state's examples factory returns: an identity element and three mutually mergeable,
#: non-trivial states built from random data.
Examples: TypeAlias = tuple[S, list[S]]


_REGISTRY: dict[type, Callable[[np.random.Generator], Examples[Any]]] = {}


def _payload_bytes(value: Any) -> int:
    """Bytes a field holds: an array's data, a nested state's own size, a container's items."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple | list):
        return sys.getsizeof(value) + sum(_payload_bytes(v) for v in value)
    if isinstance(value, dict):
        items = sum(_payload_bytes(k) + _payload_bytes(v) for k, v in value.items())
        return sys.getsizeof(value) + items
    return sys.getsizeof(value)  # a nested state lands in its own __sizeof__


def _state_sizeof(self: Any) -> int:
    # Dask sizes objects it does not know by sys.getsizeof, i.e. a few dozen bytes, while a
    # d × d co-moment is megabytes: the truth lets the scheduler place merges and account memory.
    return object.__sizeof__(self) + sum(
        _payload_bytes(getattr(self, f.name)) for f in fields(self)
    )


def state(
    *, examples: Callable[[np.random.Generator], Examples[S]]
) -> Callable[[type[S]], type[S]]:
    """Register a state type (a class decorator, outermost, above ``@dataclass(frozen=True)``).

    Args:
        examples: ``examples(rng)`` returns ``(empty, [a, b, c])``: an identity element and
            three mutually mergeable, non-trivial states from random data, on which the law
            test runs. Write it beside the state, in the same module.

    Raises:
        TypeError: the class is not a frozen dataclass with a ``merge`` method.
    """

    def register(cls: type[S]) -> type[S]:
        params = getattr(cls, "__dataclass_params__", None)
        if not (is_dataclass(cls) and params is not None and params.frozen):
            raise TypeError(f"state {cls.__qualname__} must be a frozen dataclass")
        if not callable(getattr(cls, "merge", None)):
            raise TypeError(f"state {cls.__qualname__} has no merge method")
        cls.__sizeof__ = _state_sizeof
        _REGISTRY[cls] = examples
        return cls

    return register


def registered_states() -> Mapping[type, Callable[[np.random.Generator], Examples[Any]]]:
    """Every registered state type and its examples factory (read-only; a state module
    registers its states when it is imported)."""
    return MappingProxyType(_REGISTRY)


def examples_of(cls: type[S], rng: np.random.Generator) -> Examples[S]:
    """A registered state's examples (composite states build theirs from their parts').

    Raises:
        TypeError: ``cls`` is not registered.
    """
    factory = _REGISTRY.get(cls)
    if factory is None:
        raise TypeError(f"{cls.__qualname__} is not a registered state; decorate it with @state")
    return factory(rng)


def chan_merge(
    n_a: Any,
    mean_a: Any,
    m2_a: Any,
    n_b: Any,
    mean_b: Any,
    m2_b: Any,
    diagonal: bool = False,
) -> tuple[Any, Any]:
    """Chan, Golub & LeVeque's pairwise update of (mean, m2) for vectors (m2 a d × d co-moment)
    and scalars alike: δ = mean_b − mean_a, n = n_a + n_b, mean = mean_a + δ·n_b/n,
    m2 = m2_a + m2_b + δδᵀ·n_a·n_b/n. Both counts must be positive; they may be sums of
    weights (a Gaussian mixture's responsibilities), which the same update merges exactly.
    ``diagonal``: m2 holds only the diagonal (d,) of the co-moment, updated by δ².

    The one Chan merge of the code: numpy arrays (the registered states' merges) and torch
    tensors on any device (a training-loop FID's running state, which never leaves its GPU)
    alike. δδᵀ is the product of one vector with itself, exactly symmetric."""
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    elementwise = diagonal or getattr(delta, "ndim", 0) == 0
    outer = delta * delta if elementwise else delta[:, None] * delta[None, :]
    m2 = m2_a + m2_b + outer * (n_a * n_b / n)
    return mean, m2


def lse_merge(m_a: Any, s_a: Any, m_b: Any, s_b: Any, power: int = 1) -> tuple[Any, Any]:
    """Merge log-sum-exp pairs (scalars or arrays, element-wise): m = max(m_a, m_b),
    s = s_a·e^(p(m_a − m)) + s_b·e^(p(m_b − m)); where m = −inf (only −inf seen) it scales
    nothing. ``power`` p = 2 merges sums of exp(2(x − m)) kept against the same max."""
    m = np.maximum(m_a, m_b)
    safe = np.where(np.isneginf(m), 0.0, m)
    return m, s_a * np.exp(power * (m_a - safe)) + s_b * np.exp(power * (m_b - safe))


T = TypeVar("T")


def merge_fieldwise(a: T, b: T) -> T:
    """Merge two composite states of one dataclass type field by field: fields that are states
    merge, integer counts add. Shard summaries that bundle several states use it as ``merge``."""
    merged = {}
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        merged[f.name] = x + y if isinstance(x, int) else x.merge(y)
    return type(a)(**merged)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a
