"""Per-sample values on disk: one value per generated row (each row's realism score, its
nearest training row, whether it is authentic) as a Zarr group, row for row with the
generated store, with the store's ``names`` copied in so that rows can be sorted and looked up
by image.

The group (Zarr v3) holds one 1-D array per value, dims (``sample``,), each with attributes
``description``, ``unit``, ``metric`` and the metric's ``options``; ``names`` (strings) when the
generated store has a ``names`` array of its length (an extraction store's); and attributes
``format`` (:data:`PER_SAMPLE_FORMAT`), ``rows``, ``names_from`` and whatever provenance the
caller gives (the metrics, their options, the inputs, how the features were made). It is
written into a temporary sibling and renamed into place, never over something else
(:func:`claim_per_sample`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardeval.pipeline.io.atomic import (
    OutputExistsError,
    atomic_dir,
    check_outside,
    claim_output,
)

#: The ``format`` attribute of a per-sample group.
PER_SAMPLE_FORMAT = "shardeval-per-sample"

#: What a per-sample group is called in messages.
KIND = "shardeval per-sample group"

#: Rows per chunk of each array.
_CHUNK = 65536


@dataclass(frozen=True)
class PerSampleArray:
    """One value per generated row, and what it is.

    Attributes:
        values: (M,) the values (numbers or booleans).
        description: one line saying what each value is.
        unit: its unit ("" for a dimensionless number).
        metric: the metric that computed it.
        options: that metric's options as applied.
    """

    values: np.ndarray
    description: str
    unit: str
    metric: str
    options: dict[str, Any] = field(default_factory=dict)


def is_per_sample_group(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a per-sample group this package wrote (never raises)."""
    import zarr

    try:
        group = zarr.open_group(os.fspath(path), mode="r")
        return group.attrs.get("format") == PER_SAMPLE_FORMAT
    except Exception:  # anything that is not our group is simply not ours
        return False


def claim_per_sample(
    path: str | os.PathLike[str], inputs: Sequence[str], overwrite: bool = False
) -> None:
    """Before computing: ``path`` may receive a per-sample group.

    Args:
        path: the output, a local path.
        inputs: the command's inputs (the output may not lie inside one).
        overwrite: replace a per-sample group written before.

    Raises:
        OutputExistsError: ``path`` is a URL, exists and is not a per-sample group, is one
            and ``overwrite`` is not given, is a pipe or device, or lies inside an input.

    Example:
        >>> import tempfile
        >>> claim_per_sample(tempfile.mkdtemp() + "/rows.zarr", [])   # absent: may be written
    """
    spelled = os.fspath(path)
    if "://" in spelled:
        raise OutputExistsError(
            f"{spelled!r}: a per-sample group is written on a local path (it is renamed into "
            "place when complete); choose one"
        )
    claim_output(spelled, KIND, is_per_sample_group, overwrite)
    check_outside(spelled, list(inputs))


def store_names(location: str, rows: int) -> np.ndarray | None:
    """The ``names`` array of the Zarr group at ``location`` (an extraction store's: the image
    of each row), as strings, when it has one of ``rows`` values; None otherwise (an array,
    a ``.npy`` file, a group without names)."""
    import zarr

    try:
        group = zarr.open_group(location, mode="r")
        names = group["names"]
        if not isinstance(names, zarr.Array) or names.shape != (rows,):
            return None
        return np.asarray(names[:]).astype(object)
    except Exception:  # no group, no names: the rows are known by their index alone
        return None


def write_per_sample(
    path: str | os.PathLike[str],
    arrays: Mapping[str, PerSampleArray],
    names: np.ndarray | None,
    attrs: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> str:
    """Write per-sample values as a Zarr group at ``path`` (see the module's description).

    Args:
        path: the output (checked by :func:`claim_per_sample`).
        arrays: the values by name, each (M,) for the M generated rows.
        names: (M,) each row's name (the generated store's ``names``), or None.
        attrs: provenance for the group's attributes (JSON values).
        overwrite: replace a per-sample group written before.

    Returns:
        The path written.

    Raises:
        OutputExistsError: as :func:`claim_per_sample`.
        ValueError: no arrays, or arrays (or names) of different lengths.

    Example:
        >>> import tempfile, zarr
        >>> out = tempfile.mkdtemp() + "/rows.zarr"
        >>> a = PerSampleArray(np.array([0.5, 2.0]), "a score", "", "toy")
        >>> _ = write_per_sample(out, {"toy_score": a}, np.array(["a.png", "b.png"]), {})
        >>> g = zarr.open_group(out, mode="r")
        >>> g["names"][:].tolist(), g["toy_score"][:].tolist(), g.attrs["rows"]
        (['a.png', 'b.png'], [0.5, 2.0], 2)
    """
    import zarr

    if not arrays:
        raise ValueError("no per-sample values to write")
    lengths = {name: int(np.shape(a.values)[0]) for name, a in arrays.items()}
    if names is not None:
        lengths["names"] = int(names.shape[0])
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-sample values of different lengths: {lengths}")
    rows = next(iter(lengths.values()))
    claim_per_sample(path, [], overwrite)
    chunk = max(1, min(rows, _CHUNK))
    with atomic_dir(path) as tmp:
        group = zarr.create_group(
            tmp,
            attributes={
                "names_from": "the generated store's names" if names is not None else None,
                **attrs,
                "format": PER_SAMPLE_FORMAT,
                "rows": rows,
                "alignment": "row i of every array is row i of the generated set",
            },
        )
        if names is not None:
            listed = group.create_array(
                "names", shape=(rows,), dtype=str, chunks=(chunk,), dimension_names=("sample",)
            )
            listed[:] = np.asarray(names, dtype=object)
        for name, a in arrays.items():
            values = np.asarray(a.values)
            written = group.create_array(
                name,
                shape=(rows,),
                dtype=values.dtype,
                chunks=(chunk,),
                dimension_names=("sample",),
                attributes={
                    "description": a.description,
                    "unit": a.unit,
                    "metric": a.metric,
                    "options": dict(a.options),
                },
            )
            written[:] = values
    return os.fspath(path)
