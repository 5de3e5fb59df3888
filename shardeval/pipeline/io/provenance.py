"""When and with what a result was made: timestamps and the versions of the packages that shape
a result, recorded in every report and history row."""

from __future__ import annotations

import datetime as _dt
from importlib import metadata

_PACKAGES = (
    "shardeval",
    "dask",
    "distributed",
    "numpy",
    "scipy",
    "torch",
    "triton",
    "zarr",
    "xarray",
)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a result (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
