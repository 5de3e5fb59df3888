"""What a store is, told by what it holds, never by its name: the attribute values that mark
our own stores (:data:`FEATURES_FORMAT`, :data:`STATS_FORMAT`, :data:`INCOMPLETE_ATTR`), a
numpy file told by its first bytes (:func:`numpy_kind`), whether a store holds one array
(:func:`holds_one_array`), and why a location is no Zarr store (:func:`not_a_store`).
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

import zarr

from shardeval.pipeline.errors import StoreError

if TYPE_CHECKING:
    pass


#: Store attributes that name the network that produced the features, in order of preference.
EXTRACTOR_ATTRS = ("feature_extractor", "extractor", "model")


#: Attribute value that marks an extraction store (``shardeval extract``, the feature cache).
FEATURES_FORMAT = "shardeval.features"


#: Attribute value that marks a Zarr group written by ``shardeval stats``.
STATS_FORMAT = "shardeval.moments"


#: Group attribute present while an extraction is still writing its store.
INCOMPLETE_ATTR = "shardeval_incomplete"


def _is_url(location: str) -> bool:
    return "://" in location


def _extractor(*attr_sets: Any) -> str | None:
    for attrs in attr_sets:
        for key in EXTRACTOR_ATTRS:
            if key in attrs and attrs[key] is not None:
                return str(attrs[key])
    return None


#: What a failed read of a numpy file can raise: a truncated ``.npz`` is a broken zip, a
#: truncated member a short zlib stream.
NUMPY_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


#: The first bytes of a NumPy ``.npy`` file.
NPY_MAGIC = b"\x93NUMPY"


#: The first bytes of a zip archive (``.npz``): a file entry, or the end record of an empty one
#: (the two numpy's own ``np.load`` takes for an archive).
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def numpy_kind(location: str) -> str | None:
    """What a local file holds, by its first bytes, whatever its name: ``"npy"`` (one array) or
    ``"npz"`` (a zip archive of arrays). None for what is not a local file (a folder or an
    fsspec URL, read as Zarr) or does not exist (the caller reports that).

    Raises:
        StoreError: a local file that is neither (a CSV, a pickle, an empty file, ...).
    """
    if _is_url(location) or not os.path.isfile(location):
        return None
    try:
        with open(location, "rb") as fh:
            head = fh.read(len(NPY_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read {location!r}: {exc.strerror}") from exc
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGICS):
        return "npz"
    start = f"it begins with {head!r}" if head else "it is empty"
    raise StoreError(
        f"{location!r} is neither a .npy array nor a .npz archive ({start}); give a Zarr "
        "store (a folder), a file written by numpy.save (.npy) or numpy.savez (.npz)"
    )


def holds_one_array(location: str | os.PathLike[str]) -> bool:
    """Whether the store at ``location`` holds one array, with no name for «array» to pick: a
    ``.npy`` file or a single Zarr array (not a group, an ``.npz`` or what does not open,
    whose opening says why). Reads metadata only.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "f.npy")
        >>> np.save(path, np.ones((3, 2)))
        >>> holds_one_array(path)
        True
    """
    location = os.fspath(location)
    try:
        kind = numpy_kind(location)
        if kind is not None:
            return kind == "npy"
        if not _is_url(location) and not os.path.exists(location):
            return False
        node = zarr.open(location, mode="r", use_consolidated=False)
    except Exception:  # zarr raises several types for a missing or foreign store
        return False
    return isinstance(node, zarr.Array)


#: Files that make a folder a Zarr store (v3; v2 array, group).
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def not_a_store(
    location: str,
    exc: BaseException,
    wanted: str = "a Zarr array or group, a .npy/.npz file, or a folder of images",
) -> str:
    """Why ``location`` cannot be opened as a Zarr store, naming it as the user gave it
    (never Zarr's ``StorePath(LocalStore, 'file://...')``), and what to give (``wanted``)."""
    local_folder = not _is_url(location) and os.path.isdir(location)
    if local_folder and not any(os.path.exists(os.path.join(location, m)) for m in _ZARR_MARKERS):
        return (
            f"{location!r} is a folder, not a feature store or statistics (no Zarr array or "
            f"group: it holds no zarr.json, .zarray or .zgroup); give {wanted}"
        )
    reason = re.sub(r"StorePath\([^)]*\)(?: at path '[^']*')?", repr(location), str(exc))
    first = reason.splitlines()[0] if reason else type(exc).__name__
    return f"cannot open {location!r} as a Zarr store: {first}"
