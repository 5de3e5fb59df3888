"""The merge laws, run over every registered state (:func:`shardeval.pipeline.core.states.state`).

Every state type registers examples beside its class: an identity element and three mutually
mergeable states from random data. On them this module checks identity on both sides,
associativity, order invariance (under random permutations and random merge trees, with empty
states mixed in), the pickling round trip and the byte size Dask sees. A new state is tested by
registering it; a class with a ``merge`` that is not registered fails the suite.
"""

import importlib
import importlib.util
import pickle
import pkgutil
import zlib
from dataclasses import fields, is_dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from dask.sizeof import sizeof
from hypothesis import given, settings
from hypothesis import strategies as st

# First: a family's metrics module imports cleanly only after the metrics registry has.
import shardeval.pipeline.metrics  # noqa: F401
from shardeval.pipeline.core.states import Moments, State, examples_of, registered_states
from shardeval.pipeline.pairwise.blocks import CrossSums, SetSums

RTOL = 1e-12


def _import_all(package: str) -> tuple[list[ModuleType], dict[str, str]]:
    """Every module of ``package`` (imported, so every state in it is registered), and the
    modules that failed to import, with why."""
    modules, failed = [importlib.import_module(package)], {}
    for info in pkgutil.walk_packages(modules[0].__path__, package + "."):
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError as e:
            failed[info.name] = repr(e)
    return modules, failed


MODULES, IMPORT_ERRORS = _import_all("shardeval.pipeline")
if importlib.util.find_spec("shardeval.api") is not None:
    # The API's modules may hold states too; one that fails to import fails the registry test
    # below, not the collection of the laws for every state that did import.
    _api_modules, _api_errors = _import_all("shardeval.api")
    MODULES += _api_modules
    IMPORT_ERRORS |= _api_errors
STATES = sorted(registered_states(), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _examples(cls: type) -> tuple[Any, list[Any]]:
    # One seed per state, from its name: the examples do not depend on test order.
    rng = np.random.default_rng(zlib.crc32(cls.__qualname__.encode()))
    return examples_of(cls, rng)


def _close_floats(got: np.ndarray, want: np.ndarray, rtol: float, where: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{where}: NaN at other places"
    infinite = np.isinf(want)
    assert np.array_equal(got[infinite], want[infinite]), f"{where}: infinities differ"
    assert np.isfinite(got[~nan & ~infinite]).all(), f"{where}: infinite where finite expected"
    finite = np.isfinite(want)
    if not finite.any():
        return
    # Relative to the largest magnitude the value holds: an entry near zero of an array whose
    # others are large (a co-moment's off-diagonal) carries their rounding.
    scale = max(float(np.abs(want[finite]).max()), float(np.abs(got[finite]).max()))
    error = float(np.abs(got[finite] - want[finite]).max())
    assert error <= rtol * scale, f"{where}: differs by {error:.3g} (scale {scale:.3g})"


def assert_states_close(got: Any, want: Any, rtol: float = RTOL, where: str = "state") -> None:
    """Recursive approximate equality: floats and float arrays to ``rtol`` of their scale;
    integers, booleans, strings and None exactly; dataclasses, tuples, lists, dicts by part."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if is_dataclass(want):
        for f in fields(want):
            assert_states_close(
                getattr(got, f.name), getattr(want, f.name), rtol, f"{where}.{f.name}"
            )
    elif isinstance(want, np.ndarray):
        assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
        assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
        if want.dtype.kind in "biu":
            assert np.array_equal(got, want), f"{where}: {got} != {want}"
        else:
            _close_floats(got, want, rtol, where)
    elif isinstance(want, float):
        _close_floats(np.array(got), np.array(want), rtol, where)
    elif isinstance(want, tuple | list):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_states_close(g, w, rtol, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), f"{where}: keys {got.keys()} != {want.keys()}"
        for key in want:
            assert_states_close(got[key], want[key], rtol, f"{where}[{key!r}]")
    elif want is None or isinstance(want, bool | int | str | np.integer | np.bool_):
        assert got == want, f"{where}: {got!r} != {want!r}"
    else:
        raise TypeError(f"{where}: no comparison for {type(want).__name__}")


def _array_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if is_dataclass(value) and not isinstance(value, type):
        return sum(_array_bytes(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, tuple | list):
        return sum(_array_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_array_bytes(v) for v in value.values())
    return 0


def _names(states: list[type]) -> list[str]:
    return [cls.__qualname__ for cls in states]


parametrize_states = pytest.mark.parametrize("cls", STATES, ids=_names(STATES))


# ---------------------------------------------------------------------------------------------
# the registry


#: Classes whose ``merge`` is no state's: the base of the training-loop metrics (``se.FID``,
#: the row metrics) is a mutable accumulator, as torchmetrics' metrics are, whose ``merge``
#: folds another object into itself in place. What crosses objects and processes is
#: registered: FID merges and syncs ``Moments`` by ``Moments.merge`` (tests/api/test_streaming.py
#: holds its in-place running update on the device to that merge); the row metrics append
#: rows. An exemption whose class is gone or lost its merge fails the test below.
IN_PLACE_MERGES = frozenset({"shardeval.api.streaming.base.TrainingMetric"})


def test_every_class_with_a_merge_is_a_registered_state():
    assert not IMPORT_ERRORS, f"modules that do not import, unchecked: {IMPORT_ERRORS}"
    merging = {
        f"{module.__name__}.{obj.__qualname__}"
        for module in MODULES
        for obj in vars(module).values()
        if isinstance(obj, type)
        and obj.__module__ == module.__name__
        and "merge" in vars(obj)
        and not getattr(obj, "_is_protocol", False)  # the State protocol declares merge
    }
    registered = {f"{cls.__module__}.{cls.__qualname__}" for cls in registered_states()}
    assert not IN_PLACE_MERGES - merging, f"stale exemptions: {sorted(IN_PLACE_MERGES - merging)}"
    registered |= IN_PLACE_MERGES
    assert merging, "no state found: the module walk imported nothing"
    assert not merging - registered, (
        f"classes with a merge but no @state(examples=...) registration: "
        f"{sorted(merging - registered)}"
    )


def test_registration_refuses_what_is_not_a_frozen_state():
    from dataclasses import dataclass

    from shardeval.pipeline.core.states import state

    def examples(rng: np.random.Generator) -> Any:
        raise AssertionError("never called")

    @dataclass
    class Mutable:
        def merge(self, other: Any) -> Any:
            return self

    @dataclass(frozen=True)
    class NoMerge:
        n: int = 0

    with pytest.raises(TypeError, match="frozen dataclass"):
        state(examples=examples)(Mutable)
    with pytest.raises(TypeError, match="no merge"):
        state(examples=examples)(NoMerge)
    with pytest.raises(TypeError, match="not a registered state"):
        examples_of(NoMerge, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# the laws, for every registered state


@parametrize_states
def test_examples_are_states_of_their_type(cls):
    empty, found = _examples(cls)
    assert len(found) == 3
    for s in [empty, *found]:
        assert type(s) is cls
        assert isinstance(s, State)
    # Non-trivial: no example is the identity itself.
    for s in found:
        with pytest.raises(AssertionError):
            assert_states_close(s, empty)


@parametrize_states
def test_empty_is_an_identity_on_both_sides(cls):
    empty, found = _examples(cls)
    for i, s in enumerate(found):
        assert_states_close(s.merge(empty), s, where=f"{cls.__name__}[{i}] ⊕ empty")
        assert_states_close(empty.merge(s), s, where=f"empty ⊕ {cls.__name__}[{i}]")
    assert_states_close(empty.merge(empty), empty, where="empty ⊕ empty")


@parametrize_states
def test_merge_is_associative(cls):
    _, (a, b, c) = _examples(cls)
    assert_states_close(a.merge(b).merge(c), a.merge(b.merge(c)), where=f"{cls.__name__} (ab)c")


@parametrize_states
def test_merge_is_order_invariant(cls):
    _, (a, b, c) = _examples(cls)
    assert_states_close(a.merge(b), b.merge(a), where=f"{cls.__name__} ab")
    assert_states_close(a.merge(b).merge(c), c.merge(b).merge(a), where=f"{cls.__name__} abc")


@parametrize_states
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_order_and_tree_gives_the_same_state(cls, data):
    empty, found = _examples(cls)
    reference = found[0].merge(found[1]).merge(found[2])
    empties = data.draw(st.integers(0, 2), label="empty states mixed in")
    states = data.draw(st.permutations([*found, *[empty] * empties]), label="order")
    while len(states) > 1:  # a random merge tree: merge some adjacent pair, until one is left
        i = data.draw(st.integers(0, len(states) - 2), label="merge at")
        states[i : i + 2] = [states[i].merge(states[i + 1])]
    assert_states_close(states[0], reference, where=cls.__name__)


@parametrize_states
def test_merge_does_not_change_its_operands(cls):
    empty, (a, b, _) = _examples(cls)
    before = pickle.dumps((a, b, empty))
    a.merge(b)
    a.merge(empty)
    empty.merge(b)
    assert_states_close((a, b, empty), pickle.loads(before), rtol=0.0)


@parametrize_states
def test_pickling_round_trips_type_and_value(cls):
    empty, found = _examples(cls)
    for s in [empty, *found, found[0].merge(found[1])]:
        back = pickle.loads(pickle.dumps(s))
        assert type(back) is cls
        assert_states_close(back, s, rtol=0.0, where=f"{cls.__name__} unpickled")


@parametrize_states
def test_dask_sees_the_bytes_a_state_holds(cls):
    empty, found = _examples(cls)
    for s in [empty, *found]:
        held = _array_bytes(s)
        size = sizeof(s)
        assert size >= held
        assert size <= held + 4096, f"{cls.__name__}: {size} bytes for {held} of arrays"


# ---------------------------------------------------------------------------------------------
# particular states


def test_dask_sizes_moments_by_their_co_moment():
    m = Moments.from_rows(np.random.default_rng(0).standard_normal((10, 128)))
    assert sizeof(m) >= 128 * 128 * 8 + 128 * 8
    # Nested: a composite state counts the co-moments of every part.
    bands = _examples(next(cls for cls in STATES if cls.__name__ == "BandMoments"))[1][0]
    assert sizeof(bands) >= sum(b.m2.nbytes for b in bands.bands)


@pytest.mark.parametrize("sums", [SetSums, CrossSums])
def test_additions_count_only_additions_that_round(sums):
    empty, (a, b, c) = _examples(sums)
    assert a.merge(empty).additions == empty.merge(a).additions == a.additions
    assert a.merge(b).additions == a.additions + b.additions + 1
    abc = a.merge(empty).merge(b).merge(empty).merge(c)
    assert abc.additions == a.additions + b.additions + c.additions + 2
    # Each real addition still widens the bound by u × the magnitudes it adds, never less.
    u = 2.0**-53
    widened = a.merge(b).total_error() - a.total_error() - b.total_error()
    assert widened >= u * (a.magnitude + b.magnitude) * (1 - 1e-9)
