"""Metrics as plug-ins (:mod:`shardeval.pipeline.metrics.base`), registered in one place. A
metric lives beside its mathematics, in its family's ``metrics`` module, and takes one line
in :data:`_SHIPPED`; :func:`register` adds one from anywhere (a test, a user's package).

Importing a metric module is cheap: what a metric computes with is imported when it computes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Any

from shardeval.pipeline.errors import MetricOptionError
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot, spectrum

#: (module, class) of the metrics that ship with shardeval
_SHIPPED = (
    ("shardeval.pipeline.fid.metrics", "FID"),
    ("shardeval.pipeline.fid.metrics", "FIDInfinity"),
    ("shardeval.pipeline.fid.kl_metrics", "KLGaussian"),
    ("shardeval.pipeline.fid.metrics", "SFID"),
    ("shardeval.pipeline.mmd.metrics", "KID"),
    ("shardeval.pipeline.mmd.metrics", "CMMD"),
    ("shardeval.pipeline.neighbours.metrics", "PRDC"),
    ("shardeval.pipeline.memorization.metrics", "AuthPct"),
    ("shardeval.pipeline.memorization.metrics", "DataCopying"),
    ("shardeval.pipeline.memorization.metrics", "FLD"),
    ("shardeval.pipeline.likelihood.metrics", "GaussianNLL"),
    ("shardeval.pipeline.inception_score.metrics", "InceptionScore"),
    ("shardeval.pipeline.vendi.metrics", "Vendi"),
)


class _Registry(dict[str, type[Metric]]):
    """The metrics by name. The shipped ones are imported on first use, not when this package
    is: their modules import :mod:`.base`, and so this package, first."""

    def __init__(self) -> None:
        super().__init__()
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module, name in _SHIPPED:
                register(getattr(importlib.import_module(module), name))

    def __getitem__(self, name: str) -> type[Metric]:
        self._load()
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def get(self, name: str, default: Any = None) -> Any:
        self._load()
        return super().get(name, default)

    def keys(self) -> Any:
        self._load()
        return super().keys()

    def values(self) -> Any:
        self._load()
        return super().values()

    def items(self) -> Any:
        self._load()
        return super().items()


METRICS = _Registry()


def register(cls: type[Metric]) -> type[Metric]:
    """Make a metric known to job files, the history and the reports (usable as a decorator).

    Raises:
        ValueError: a different metric already has that name, an output is not prefixed by the
            metric's name, or the first output (the headline) is not a scalar.
    """
    if dict.get(METRICS, cls.name, cls) is not cls:
        raise ValueError(f"a metric named {cls.name!r} is already registered")
    bad = [
        o.name for o in cls.outputs if o.name != cls.name and not o.name.startswith(cls.name + "_")
    ]
    if bad or not cls.outputs or cls.outputs[0].array:
        raise ValueError(
            f"metric {cls.name!r}: every output must be named {cls.name!r} or start with "
            f"{cls.name + '_'!r}, and the first (the headline) must be a scalar; got "
            f"{[o.name for o in cls.outputs]}"
        )
    dict.__setitem__(METRICS, cls.name, cls)
    return cls


def metric_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """Registered metric names, from a sequence or the command line's comma-separated text
    (``"fid,kid"``), in order, repeats dropped: what ``metrics --metrics`` and
    :func:`shardeval.metrics` take, checked once.

    Raises:
        OptionError: none given, or a name that is not registered (named).
    """
    from shardeval.pipeline.errors import OptionError

    try:
        parts: list[object] = list(names.split(",") if isinstance(names, str) else names)
    except TypeError:
        parts = [names]
    texts = [n.strip() if isinstance(n, str) else repr(n) for n in parts]
    wanted = tuple(dict.fromkeys(t for t in texts if t))
    unknown = [n for n in wanted if n not in METRICS]
    if not wanted or unknown:
        why = f" (unknown: {', '.join(unknown)})" if unknown else ""
        raise OptionError(f"expected metric names from {', '.join(METRICS)}, got {names!r}{why}")
    return wanted


__all__ = [
    "METRICS",
    "Context",
    "Metric",
    "MetricOptionError",
    "Output",
    "Param",
    "Plot",
    "metric_names",
    "register",
    "spectrum",
]
