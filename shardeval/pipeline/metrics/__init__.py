"""Metrics as plug-ins (:mod:`shardeval.pipeline.metrics.base`), registered in one place. A
metric lives beside its mathematics, in its family's ``metrics`` module, and takes one line
in :data:`_SHIPPED`; :func:`register` adds one from anywhere (a test, a user's package).

Importing a metric module is cheap: what a metric computes with is imported when it computes.
"""

from __future__ import annotations

import importlib

from shardeval.pipeline.metrics.base import (
    Context,
    Metric,
    MetricOptionError,
    Output,
    Param,
    Plot,
    Reference,
    spectrum,
)

#: (module, class) of the metrics that ship with shardeval
_SHIPPED = (
    ("shardeval.pipeline.fid.metrics", "FID"),
    ("shardeval.pipeline.fid.metrics", "FIDInfinity"),
    ("shardeval.pipeline.mmd.metrics", "KID"),
    ("shardeval.pipeline.mmd.metrics", "CMMD"),
    ("shardeval.pipeline.neighbours.metrics", "PRDC"),
    ("shardeval.pipeline.likelihood.metrics", "GaussianNLL"),
)

METRICS: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    """Make a metric known to job files, the history and the reports (usable as a decorator).

    Raises:
        ValueError: a different metric already has that name, an output is not prefixed by the
            metric's name, or the first output (the headline) is not a scalar.
    """
    if METRICS.get(cls.name, cls) is not cls:
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
    METRICS[cls.name] = cls
    return cls


for _module, _cls in _SHIPPED:
    register(getattr(importlib.import_module(_module), _cls))

__all__ = [
    "METRICS",
    "Context",
    "Metric",
    "MetricOptionError",
    "Output",
    "Param",
    "Plot",
    "Reference",
    "register",
    "spectrum",
]
