"""JSON reports on disk: written atomically, never replacing what is not a report, never
holding a bare NaN (the results themselves are :mod:`shardeval.api.results`)."""

from __future__ import annotations

import json
import os
from typing import Any

from shardeval.api.results import jsonable
from shardeval.pipeline.io.atomic import atomic_file, claim_output


def to_json(data: dict[str, Any]) -> str:
    """JSON has no NaN or inf: they are written as null rather than as invalid JSON."""
    return json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"


def is_json_report(path: str) -> bool:
    """Whether ``path`` holds a shardeval JSON report (never raises)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "metric" in data and "versions" in data


def claim_json(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Before computing: ``path`` may receive a JSON report (see :func:`claim_output`; a pipe,
    FIFO or device such as ``/dev/stdout`` is written in place, never read)."""
    claim_output(path, "shardeval JSON report", is_json_report, overwrite, streams=True)


def write_json(path: str | os.PathLike[str], data: dict[str, Any], overwrite: bool = False) -> None:
    """Write a report atomically; an existing file must be a report and ``overwrite`` given."""
    claim_json(path, overwrite)
    with atomic_file(path, "w") as fh:
        fh.write(to_json(data))
