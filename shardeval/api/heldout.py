"""The held-out test set some metrics compare with besides the reference (C_T's: the
reference is the training set, the test set rows of its distribution not trained on): checked
at the boundary, then opened as a third side, of the other sides' d."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardeval.api.calls import _must_exist
from shardeval.api.inputs import describe_input, is_images, is_statistics
from shardeval.pipeline.errors import OptionError, ShapeError, StoreError


def check_test(instances: Sequence[Any], test: Any) -> None:
    """A held-out test set is given exactly when a metric asked reads one, as features.

    Raises:
        OptionError: «test» where no metric asked reads it, none where one does, or images.
        StoreError: statistics, or a path that does not exist.
    """
    readers = [m.name for m in instances if m.needs_test]
    if test is None:
        if readers:
            raise OptionError(
                f"{', '.join(readers)} compare{'s' if len(readers) == 1 else ''} the generated "
                "set with a held-out test set (rows of the training distribution not trained "
                "on): give «test»"
            )
        return
    if not readers:
        from shardeval.pipeline.metrics import METRICS

        takers = ", ".join(m for m in METRICS if METRICS[m].needs_test)
        verb = "is" if ", " not in takers else "are"
        raise OptionError(f"«test» applies to {takers}, which {verb} not asked for")
    _must_exist(test)
    if is_images(test):
        raise OptionError(
            f"«test» takes features (a store or an array), not images ({describe_input(test)!r}): "
            "extract them first with the encoder of the other sets"
        )
    if is_statistics(test):
        raise StoreError(
            f"{describe_input(test)!r} holds statistics, but «test» needs its rows: give its "
            "feature store"
        )


def check_test_side(test: Any, gen: Any) -> None:
    """The held-out test set's side (None: not given) is of the generated set's d.

    Raises:
        ShapeError: naming both and their d.
    """
    if test is not None and test.d != gen.d:
        raise ShapeError(
            f"feature dimensions differ: {gen.shown!r} has d={gen.d}, the test set "
            f"{test.shown!r} has d={test.d}; compare features of one model"
        )
