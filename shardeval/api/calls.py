"""What every API function shares: its options checked against their declarations
(:func:`check_options`, :func:`refuse`), the engine it runs on, started and closed with the
call (``_running``), the notices it collects (:class:`Notes`), and the image options that
decide how images become features (:func:`image_flags`, :func:`with_features`).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardeval.api.inputs import (
    IMAGE_OPTIONS,
    extracted,
    is_images,
    is_path,
)
from shardeval.pipeline.errors import OptionError
from shardeval.pipeline.option_table import BY_NAME

Progress = Callable[[int, int], None]


#: The settings a report records, with the value each takes when not given.
SETTINGS = {
    "shard_rows": "whole stored chunks",
    "array": None,
    "split_every": "chain of merges (one machine)",
    "device": "auto",
    "backend": "auto",
    "precision": "fp32",
    "nonfinite": "error",
    "reff": 1.0,
    "bandwidth": "silverman",
    "dims": None,
    **{name: BY_NAME[name].default for name in ("covariance", "reg_covar", "tol", "max_iter")},
}


#: Options of the engine and of reading features: what a computation on statistics alone
#: does not take.
ENGINE_OPTIONS = ("scheduler", "cluster", "threads", "performance_report")


INPUT_OPTIONS = (
    "shard_rows",
    "array",
    "split_every",
    "device",
    "backend",
    "precision",
    "nonfinite",
)


def check_options(options: dict[str, Any]) -> None:
    """Every option given, checked as the command line checks it (the same checks,
    :data:`~shardeval.pipeline.options.OPTION_CHECKS`): a count that is a positive integer,
    a fan-in of at least 2, a positive finite ``reff``, a choice among its choices…

    Raises:
        OptionError: naming the option and the value.
    """
    from shardeval.pipeline.runoptions import option_problem

    for name, value in options.items():
        problem = option_problem(name, value)
        if problem:
            raise OptionError(f"«{name}»: {problem}")


def refuse(given: dict[str, Any], names: Sequence[str], why: str) -> None:
    """Options that cannot apply are an error, never silently ignored (``given``: the
    caller's options, None or False where not given)."""
    from shardeval.pipeline.runoptions import is_given

    bad = [n for n in names if is_given(given.get(n))]
    if not bad:
        return
    if len(bad) == 1:  # the reason is written for several options
        for plural, singular in (("apply ", "applies "), ("do not ", "does not ")):
            if why.startswith(plural):
                why = singular + why[len(plural) :]
    raise OptionError(f"{', '.join(f'«{n}»' for n in bad)} {why}")


@dataclass
class _Run:
    """One call's engine, progress and options, and what its report records (``cached``: the
    feature cache entries its image inputs were read from)."""

    engine: Any
    progress: Progress | None
    options: dict[str, Any]
    start: float
    cached: list[Any] = field(default_factory=list)

    def settings(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The settings as applied (defaults filled in), those in ``names`` or all taken."""
        out = {}
        for name, default in SETTINGS.items():
            if (name in self.options) if names is None else (name in names):
                value = self.options.get(name)
                out[name] = default if value is None else value
        if out.get("split_every") == SETTINGS["split_every"] and self.engine.is_distributed:
            from shardeval.pipeline.options import DEFAULT_SPLIT_EVERY

            out["split_every"] = DEFAULT_SPLIT_EVERY
        return out

    def tail(self, notes: Notes) -> dict[str, Any]:
        from shardeval.pipeline.io.provenance import now_iso, versions

        return {
            "warnings": notes.messages(),
            "engine": self.engine.describe(),
            "seconds": time.perf_counter() - self.start,
            "created": now_iso(),
            "versions": versions(),
        }


def _engine(scheduler: Any, threads: int | None, performance_report: str | None, log: Any) -> Any:
    from shardeval.pipeline.core.engine import Engine

    if scheduler is not None and not isinstance(scheduler, str):
        address = getattr(getattr(scheduler, "scheduler", None), "address", None)
        if address is None:
            raise OptionError(
                f"«scheduler» must be 'threads', 'sync', an address or a distributed.Client; "
                f"got {type(scheduler).__name__}"
            )
        scheduler = address
    name = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
    built = Engine(name, num_workers=threads, log=log, performance_report=performance_report)
    if performance_report and not built.is_distributed:
        raise OptionError(
            "«performance_report» needs a distributed cluster: pass «scheduler=ADDRESS» or "
            "«cluster=SPEC»"
        )
    if threads is not None and name != "threads":
        raise OptionError(f"«threads» sets the threaded scheduler's threads, not {name!r}'s")
    return built


@contextlib.contextmanager
def _running(options: dict[str, Any]) -> Iterator[_Run]:
    """The engine the options describe (a cluster started and closed around the call), the
    options checked first."""
    check_options(options)
    cluster = options.get("cluster")
    address = None
    with contextlib.ExitStack() as stack:
        if cluster:
            from shardeval.pipeline.core.clusters import running_cluster

            refuse(options, ("scheduler", "threads"), "cannot be combined with «cluster»")
            address = stack.enter_context(running_cluster(cluster))
        engine = _engine(
            address or options.get("scheduler"),
            options.get("threads"),
            options.get("performance_report"),
            options.get("log"),
        )
        yield _Run(engine, options.get("progress"), options, time.perf_counter())


class Notes(list[str]):
    """What a report's ``warnings`` say: notes added by the computation, then the user
    warnings raised so far (read live from the catch)."""

    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        super().__init__()
        self._caught = caught

    def messages(self) -> list[str]:
        raised = [str(w.message) for w in self._caught if issubclass(w.category, UserWarning)]
        return list(dict.fromkeys([*self, *raised]))


@contextlib.contextmanager
def _noted() -> Iterator[Notes]:
    """The user warnings raised inside, for the report; raised again after, so that a caller
    sees them as warnings too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        notes = Notes(caught)
        try:
            yield notes
        finally:
            replay = list(caught)
    for w in replay:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def image_flags(inputs: Sequence[Any], options: dict[str, Any]) -> list[bool]:
    """Which inputs are image sources; the encoder options are refused when none is."""
    flags = [is_images(x) for x in inputs]
    if not any(flags):
        refuse(
            options,
            IMAGE_OPTIONS,
            "apply to image inputs (folders, zips, tar shards, image array files; in memory, "
            "4-D arrays or tensors (N, H, W, 3) or (N, 3, H, W)), and no input is images",
        )
    return flags


def with_features(run: _Run, inputs: Sequence[Any], flags: Sequence[bool]) -> list[Any]:
    """``inputs`` with each image source replaced by its features in the feature cache."""
    return [
        extracted(
            x, run.options, run.engine, run.progress, [o for o in inputs if o is not x], run.cached
        )
        if flag
        else x
        for x, flag in zip(inputs, flags, strict=True)
    ]


def _must_exist(*locations: Any) -> None:
    from shardeval.pipeline.errors import StoreError

    for location in locations:
        if is_path(location):
            text = os.fspath(location)
            if "://" not in text and not os.path.exists(text):
                raise StoreError(f"{text!r} does not exist")
