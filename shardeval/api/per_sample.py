"""Per-sample values of a report: the outputs with one value per generated row (declared
``per_row``: PRDC's realism score, AuthPct's nearest training row and authentic flag, asked
with ``per_sample=True``), as arrays, and written as a Zarr group beside the generated
store's names (:mod:`shardeval.pipeline.io.per_sample`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from shardeval.api.results import Report, jsonable
from shardeval.pipeline.errors import OptionError


def _per_row_outputs(report: Report) -> list[tuple[str, Any]]:
    """(metric, output declaration) of every per-row output the report's metrics declare."""
    from shardeval.pipeline.metrics import METRICS

    found = []
    for name in report.metric.split(","):
        cls = METRICS.get(name)
        if cls is not None and isinstance(report.results.get(name), dict):
            found += [(name, o) for o in cls.outputs if o.per_row]
    return found


def per_sample_arrays(report: Report) -> dict[str, np.ndarray]:
    """The report's per-sample values by output name, each (M,), row i the generated set's
    row i (``report[metric][name]`` holds the same arrays).

    Args:
        report: a report of metrics asked with ``per_sample=True``.

    Returns:
        Output name → array, for the per-row outputs the report holds (empty when none was
        asked for).

    Example:
        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> r = se.prdc(rng.normal(size=(100, 3)), rng.normal(size=(60, 3)), per_sample=True)
        >>> {k: v.shape for k, v in se.per_sample_arrays(r).items()}
        {'prdc_realism': (60,)}
    """
    out = {}
    for metric, output in _per_row_outputs(report):
        value = report.results[metric].get(output.name)
        if value is not None:
            out[output.name] = np.asarray(value)
    return out


def is_per_sample_group(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a per-sample group this package wrote (never raises).

    Example:
        >>> import tempfile
        >>> is_per_sample_group(tempfile.mkdtemp())
        False
    """
    from shardeval.pipeline.io.per_sample import is_per_sample_group as is_group

    return is_group(path)


def claim_per_sample(
    path: str | os.PathLike[str], inputs: Sequence[str] = (), overwrite: bool = False
) -> None:
    """Before computing: ``path`` may receive a per-sample group (absent, or one written
    before and ``overwrite`` given; not inside an input).

    Raises:
        OutputExistsError: naming the path and what is there.
    """
    from shardeval.pipeline.io.per_sample import claim_per_sample as claim

    claim(path, inputs, overwrite)


def save_per_sample(
    report: Report,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    recorded: dict[str, Any] | None = None,
) -> str:
    """Write a report's per-sample values as a Zarr group at ``path``: one array per value,
    row for row with the generated store, its ``names`` (the image of each row, which an
    extraction store holds) copied in, and attributes saying what each array is and how the
    values and their features were made (the metrics, their options, the inputs, the
    encoder). Written whole into a temporary sibling and renamed into place.

    Args:
        report: a report of metrics asked with ``per_sample=True`` (``se.prdc``,
            ``se.metrics(..., "authpct", per_sample=True)``…).
        path: the group to write (local); never over anything but a per-sample group.
        overwrite: replace a per-sample group written before.
        recorded: more attributes (JSON values) for the group, such as who wrote it (a job
            records its name and the entry's, and replaces only the groups it wrote).

    Returns:
        The path written.

    Raises:
        OptionError: the report holds no per-sample values.
        OutputExistsError: ``path`` exists and is not a per-sample group (or is one and
            ``overwrite`` is not given), or lies inside an input.

    Example:
        >>> import tempfile, zarr, numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> r = se.prdc(rng.normal(size=(100, 3)), rng.normal(size=(60, 3)), per_sample=True)
        >>> out = se.save_per_sample(r, tempfile.mkdtemp() + "/rows.zarr")
        >>> g = zarr.open_group(out, mode="r")
        >>> g["prdc_realism"].shape, g.attrs["rows"], "names" in g   # arrays: no names
        ((60,), 60, False)
    """
    from shardeval.pipeline.io.per_sample import PerSampleArray, store_names, write_per_sample

    arrays = {}
    options = report.data.get("options", {})
    for metric, output in _per_row_outputs(report):
        value = report.results[metric].get(output.name)
        if value is not None:
            arrays[output.name] = PerSampleArray(
                np.asarray(value), output.description, output.unit, metric, options.get(metric, {})
            )
    if not arrays:
        raise OptionError(
            f"the {report.metric} report holds no per-sample values: ask for them with "
            "«per_sample=True» (prdc, authpct)"
        )
    inputs = report.data.get("inputs", {})
    gen = inputs.get("gen") or {}
    rows = int(next(iter(arrays.values())).values.shape[0])
    source = str(gen.get("source") or "")
    names = store_names(source, rows) if source else None
    attrs = {
        "names_from": f"{source} (its names array)" if names is not None else None,
        "metric": report.metric,
        "options": {m: options.get(m, {}) for m in report.metric.split(",")},
        "inputs": inputs,
        "features_made_by": report.data.get("features_made_by"),
        "settings": report.data.get("settings"),
        "created": report.data.get("created"),
        "versions": report.data.get("versions"),
        **(recorded or {}),
    }
    return write_per_sample(path, arrays, names, jsonable(attrs), overwrite=overwrite)
