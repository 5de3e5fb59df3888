"""Metrics as plug-ins (:mod:`pipeline.metrics.base`). A metric is one module here and one
line in :data:`_MODULES`; :func:`register` adds one from anywhere (a test, a user's package).

Importing a metric module is cheap: what a metric computes with is imported when it computes.
"""

from __future__ import annotations

import importlib

from pipeline.metrics.base import (
    Context,
    Metric,
    MetricOptionError,
    Output,
    Param,
    Plot,
    Reference,
    spectrum,
)

#: module → class, for the metrics that ship with shardeval
_MODULES = {
    "pipeline.metrics.fid": "FID",
    "pipeline.metrics.fid_inf": "FIDInfinity",
    "pipeline.metrics.kid": "KID",
    "pipeline.metrics.cmmd": "CMMD",
    "pipeline.metrics.prdc": "PRDC",
    "pipeline.metrics.nll_gaussian": "GaussianNLL",
}

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


for _module, _cls in _MODULES.items():
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
