"""What the API functions take as features, statistics or images, made into the pipeline's
objects and checked at the boundary, so that every input is what it seems or refused in words.

Features: a store's path or URL (anything :func:`~shardeval.pipeline.io.stores.open_features`
opens), a numpy array, a torch tensor on any device, a dask array (columns rechunked whole), an
xarray DataArray (dims named as in a store) or Dataset (its one variable, or the one named by
«array»), or a :class:`~shardeval.pipeline.io.stores.FeatureSource`. «array» picks the
variable of every input that holds several (a Dataset, a Zarr group, an ``.npz``); an input of
one array beside them has nothing to pick and is read as it is (:func:`arrays_for`). In-memory
arrays are read in native byte order (``>f8`` is float64 and stays so) and named by the digest
of their content (dask's token), so that two arrays are never taken for one, and one array
given twice is.

Statistics: a statistics file (ours or a pytorch-fid ``.npz``), a
:class:`~shardeval.pipeline.fid.gaussian.Gaussian` or
:class:`~shardeval.pipeline.core.states.Moments`, checked as a statistics file is (finite, a
symmetric covariance within the files' tolerance, non-negative variances, n in [2, 2^53]).

Images: an image source's path (a folder, zip, tar shards, a uint8 array file), or images in
memory: a 4-D numpy array or torch tensor, uint8 (0..255) or floats in [0, 1], ``(N, H, W, 3)``
or ``(N, 3, H, W)`` (:func:`image_pixels`). Either goes through the encoder into the feature
cache once and is reused after. Images in memory are cached by a BLAKE2b digest of their
pixels (:func:`extracted`): the features are what an encoder makes of exactly those bytes, so
the digest is the one key that is right whatever object holds them, and a notebook that
compares several generators with one real set encodes the real set once (hashing reads the
pixels once, far less than an encoder's work on them). To extract them, the pixels are staged
once as ``.shardeval-images-<digest>.npy`` in the cache folder and extracted as any array
file is (tasks read their own rows, so a cluster's workers need no pixels from the client; a
killed run resumes), and the staged file is removed once the entry is complete.

The three kinds live in :mod:`~shardeval.api.feature_inputs`,
:mod:`~shardeval.api.statistics_inputs` and :mod:`~shardeval.api.image_inputs`; this module
re-exports their names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardeval.api.feature_inputs import _SHARD_BYTES as _SHARD_BYTES
from shardeval.api.feature_inputs import arrays_for, features, holds_variables
from shardeval.api.image_inputs import (
    IMAGE_OPTIONS,
    extract_pixels,
    extracted,
    image_pixels,
    is_images,
    pixels_digest,
    stage_images,
)
from shardeval.api.input_kinds import ExtractedImages, describe_input, is_path
from shardeval.api.statistics_inputs import checked_gaussian, is_statistics, statistics

if TYPE_CHECKING:
    pass


__all__ = [
    "IMAGE_OPTIONS",
    "ExtractedImages",
    "arrays_for",
    "checked_gaussian",
    "describe_input",
    "extract_pixels",
    "extracted",
    "features",
    "holds_variables",
    "image_pixels",
    "is_images",
    "is_path",
    "is_statistics",
    "pixels_digest",
    "stage_images",
    "statistics",
]
