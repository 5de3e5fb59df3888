"""Image sources as a job reads them, step by step: listed (and fingerprinted) before anything
is computed, the extraction planned (the encoder's weights found and hashed), keyed by what
decides their features, and extracted into a feature cache (an entry reused, finished or
made). ``shardeval.extract`` and the metric functions do all of this in one call; a job does
it in steps because it checks every input before it computes any.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine, Progress
    from shardeval.pipeline.images.cache import CachedFeatures
    from shardeval.pipeline.images.extract import Extraction
    from shardeval.pipeline.images.sources import ImageSource

__all__ = [
    "extraction_plan",
    "feature_cache",
    "feature_cache_key",
    "features_per_image",
    "images_content_fingerprint",
    "images_fingerprint",
    "open_image_source",
]


def open_image_source(location: str | os.PathLike[str]) -> ImageSource:
    """List a source of images (a folder, a zip, tar shards, a uint8 ``.npy``) without reading
    an image.

    Args:
        location: where the images are.

    Returns:
        The listed source (``.fingerprint`` the digest of its listing, ``len()`` its images).

    Raises:
        ImageSourceError: nothing there, or no image in it.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.api.images import open_image_source
        >>> path = os.path.join(tempfile.mkdtemp(), "images.npy")
        >>> np.save(path, np.zeros((2, 8, 8, 3), np.uint8))
        >>> len(open_image_source(path))
        2
    """
    from shardeval.pipeline.images.sources import open_images

    return open_images(location)


def images_fingerprint(location: str | os.PathLike[str]) -> str:
    """The digest of a source of images' listing (names, sizes, times), as the feature cache
    keys it: changed when images are added, removed or rewritten.

    Args:
        location: where the images are.

    Returns:
        The digest (hex).

    Raises:
        ImageSourceError: nothing there, or no image in it.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.api.images import images_fingerprint
        >>> path = os.path.join(tempfile.mkdtemp(), "images.npy")
        >>> np.save(path, np.zeros((2, 8, 8, 3), np.uint8))
        >>> images_fingerprint(path) == images_fingerprint(path)
        True
    """
    return open_image_source(location).fingerprint


def images_content_fingerprint(source: ImageSource) -> str:
    """The digest of the bytes a source's images are read from (``run --verify``): an image
    rewritten with its size and time kept changes it, where the listing stays.

    Args:
        source: the listed images (:func:`open_image_source`).

    Returns:
        The digest (hex).

    Raises:
        ImageSourceError: an archive or array file cannot be read.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.api.images import images_content_fingerprint, open_image_source
        >>> path = os.path.join(tempfile.mkdtemp(), "images.npy")
        >>> np.save(path, np.zeros((2, 8, 8, 3), np.uint8))
        >>> source = open_image_source(path)
        >>> images_content_fingerprint(source) == images_content_fingerprint(source)
        True
    """
    from shardeval.pipeline.images.cache import images_digest

    return images_digest(source)


def extraction_plan(
    encoder: Any = "inception", weights: str | None = None, resize: str | None = None
) -> Extraction:
    """An extraction's settings resolved, and its encoder's weights found and hashed (no model
    is loaded).

    Args:
        encoder: a registered encoder's name, or a user's (see ``shardeval.encoder``).
        weights: a weights file or folder (default: the encoder's standard cache), or
            ``random:SEED``.
        resize: the preprocessing mode (default: the encoder's).

    Returns:
        The plan (``.encoder``, ``.digest``, ``.resize``; ``.dim`` the features per image, None
        for a user's encoder until one image went through it).

    Raises:
        EncoderSetupError: an unknown encoder or resize, weights missing or not the file.

    Example:
        >>> from shardeval.api.images import extraction_plan
        >>> extraction_plan("inception", weights="random:0").dim
        2048
    """
    from shardeval.pipeline.images.extract import plan_extraction

    return plan_extraction(encoder=encoder, weights=weights, resize=resize)


def features_per_image(plan: Extraction, source: ImageSource) -> int:
    """How many features the plan's encoder makes per image: its declaration's, else (a
    user's encoder) the width of its output for the first readable image of ``source``.

    Args:
        plan: from :func:`extraction_plan`.
        source: from :func:`open_image_source`.

    Returns:
        The feature dimension.

    Raises:
        ImageError: none of the first images can be read.
        EncoderSetupError: the encoder cannot be set up here.

    Example:
        >>> from shardeval.api.images import extraction_plan, features_per_image
        >>> features_per_image(extraction_plan(weights="random:0"), None)  # declared: 2048
        2048
    """
    from shardeval.pipeline.images.extract import feature_dim

    return feature_dim(plan, source)


def feature_cache_key(source: ImageSource, plan: Extraction, *, skip_bad: bool = False) -> str:
    """The key of a source's features under a plan: what decides them (the listing, the
    encoder, its weights' digest, the resize, ``skip_bad``), never the batch size.

    Args:
        source: from :func:`open_image_source`.
        plan: from :func:`extraction_plan`.
        skip_bad: undecodable images are left out (other rows, so another key).

    Returns:
        32 hex digits.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.api.images import extraction_plan, feature_cache_key
        >>> from shardeval.api.images import open_image_source
        >>> path = os.path.join(tempfile.mkdtemp(), "images.npy")
        >>> np.save(path, np.zeros((2, 8, 8, 3), np.uint8))
        >>> source, plan = open_image_source(path), extraction_plan(weights="random:0")
        >>> feature_cache_key(source, plan) != feature_cache_key(source, plan, skip_bad=True)
        True
    """
    from shardeval.pipeline.images.cache import cache_key

    return cache_key(source, plan, skip_bad=skip_bad)


def feature_cache(
    source: ImageSource,
    plan: Extraction,
    *,
    cache_root: str,
    engine: Engine,
    batch_size: int | None = None,
    device: str = "auto",
    skip_bad: bool = False,
    progress: Progress | None = None,
    content: str | None = None,
    log: Callable[[str], None] | None = None,
    claim_root: bool = True,
) -> CachedFeatures:
    """The features of a listed source of images, from the feature cache in ``cache_root``: an
    entry reused, finished (a killed extraction resumes) or extracted. Encoders that run in
    this process make their fp32 products IEEE first, as ``shardeval extract`` does.

    Args:
        source: from :func:`open_image_source`.
        plan: from :func:`extraction_plan`.
        cache_root: the cache's folder.
        engine: where the extraction runs.
        batch_size: images per forward pass of a new entry (default 32).
        device: ``auto``, ``cpu`` or ``cuda``.
        skip_bad: leave out images that cannot be decoded.
        progress: called with (chunks done, chunks to compute).
        content: the digest of the images' bytes (:func:`images_content_fingerprint`): an
            entry that recorded other bytes is extracted again.
        log: receives a line when this call waits for another process's extraction.
        claim_root: check that ``cache_root`` is a feature cache, new or empty (False: a
            folder the caller owns, such as a job's history folder).

    Returns:
        The cache entry (``.open()`` its features; ``.reused``, ``.stale``, ``.path``,
        ``.extraction`` what happened).

    Raises:
        ImageError: an image cannot be decoded (without ``skip_bad``).
        ExtractionError, EncoderSetupError: the extraction cannot run as planned.

    Example:
        >>> from shardeval.api.images import feature_cache  # doctest: +SKIP
        >>> feature_cache(source, plan, cache_root="runs", engine=engine).open().n  # doctest: +SKIP
    """
    from shardeval.pipeline.core.ieee_fp32 import set_in_this_process
    from shardeval.pipeline.images.cache import fill_cache

    set_in_this_process(engine, device)
    return fill_cache(
        source,
        plan,
        cache_root=cache_root,
        batch_size=batch_size,
        device=device,
        skip_bad=skip_bad,
        engine=engine,
        progress=progress,
        content=content,
        log=log,
        claim_root=claim_root,
    )
