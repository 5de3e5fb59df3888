"""A feature cache: the features of an image source, extracted once into a folder and reused.

Layout of a cache folder (``cache_root``)::

    <cache_root>/
        features-<key>.zarr         a feature store written by extraction
                                    (:mod:`shardeval.pipeline.images.extract`): array
                                    ``features`` (N, d) float32, ``names``, the settings as
                                    attributes, the completion mark written last; with
                                    ``verify``, also ``content_digest`` (the images' bytes)
        features-<key>.zarr.lock    the lock its writer holds (extraction's own)

``key`` is a BLAKE2b (128-bit, hex) digest of what decides the features: the image source's
fingerprint (its kind and, per image, name and size plus modification time or CRC: see
:class:`~shardeval.pipeline.images.sources.ImageSource`), the encoder (its name, and for a
user's encoder its source), the weights' digest (SHA-256; ``random:SEED`` for random weights),
the resize and ``skip_bad``; and of what the entry holds (:func:`entry_arrays`: the class
logits of an encoder that has them beside its features). An entry that lacks an array its key
stands for (made before extraction wrote logits) is extracted again in its place, never handed
out as it is. Not the batch size: features do not depend
on it, so a finished entry is reused whatever batch size is asked for. Not the images' place
either: a copy that keeps names, sizes and times lists the same, and holds the same images.

Where the folder is: ``cache_root`` when given; else the environment variable
``SHARDEVAL_CACHE``; else ``$XDG_CACHE_HOME/shardeval``; else ``~/.cache/shardeval`` (as
torch hub and Hugging Face place theirs). A job keeps its cache beside its history.

What the folder may be (:func:`check_cache_root`): new, empty, or a feature cache: one that
holds :data:`CACHE_MARKER` (written when the cache makes the folder, or finds it empty) or
cache entries (a cache made before the mark). A Zarr store (features, statistics, a run
history) or a folder inside one, or a folder that holds anything else, is refused before
anything is written there: the cache never writes into what it did not make.

The rules are extraction's:

* An entry is read only when complete. An unfinished one (a run killed half-way) is finished
  by the next call, with the batch size it was started with (its chunks are laid out by it).
* One writer per entry: a second call for the same images waits for the first (and says so
  through its ``log``), then reuses. A complete entry is read without the writer's lock: a
  cache others wrote can be used where this process cannot write.
* Something at an entry's path that is not an extraction store, or one whose recorded
  settings are not those its name stands for, is refused and never replaced; the cache is
  never inside the images it caches (writing it would change them).
* ``verify``: the listing cannot see an image rewritten with its size and time kept, so the
  images' bytes are hashed and recorded in the entry; an entry that recorded other bytes, or
  none, is extracted again in its place.

A complete entry is reused without loading the encoder: only the weights are hashed (once per
process), since their digest is part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardeval.pipeline.images.content import images_digest, is_image_source
from shardeval.pipeline.images.entries import (
    CACHE_ENV,
    CACHE_MARKER,
    CONTENT_ATTR,
    FEATURES_ARRAY,
    check_cache_root,
    check_outside,
    default_cache_root,
    entry_arrays,
    existing_entry,
    finished,
    group_attrs,
    lacking,
    make_root,
    record_content,
    resolve_cache_root,
    reused_entry,
    settings,
)
from shardeval.pipeline.images.extract import (
    ExtractionError,
    ExtractResult,
    extract_features,
    plan_extraction,
)
from shardeval.pipeline.images.sources import open_images

__all__ = [
    "CACHE_ENV",
    "CACHE_MARKER",
    "CONTENT_ATTR",
    "FEATURES_ARRAY",
    "CachedFeatures",
    "cache_key",
    "cache_path",
    "cached_features",
    "check_cache_root",
    "check_rows",
    "default_cache_root",
    "entry_arrays",
    "fill_cache",
    "images_digest",
    "is_image_source",
    "make_cache_root",
    "resolve_cache_root",
]

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine, Progress
    from shardeval.pipeline.images.extract import Extraction
    from shardeval.pipeline.images.sources import ImageSource
    from shardeval.pipeline.io.stores import FeatureSource

#: Bumped when the meaning of a key changes, so that old entries are never taken for new ones
#: (2: the weights' SHA-256 in place of BLAKE2b, and the arrays an entry holds).
_KEY_VERSION = 2
_DIGEST_BYTES = 16


@dataclass(frozen=True)
class CachedFeatures:
    """The features of an image source, from the cache.

    Attributes:
        path: the entry, a complete feature store (array :data:`FEATURES_ARRAY`).
        key: the entry's key (see the module's description).
        images: the image source, as listed (absolute).
        reused: a complete entry was found: no encoder ran.
        stale: the entry was extracted again in its place: ``verify`` found it extracted from
            other bytes (or recording none), or it lacked an array its key stands for.
        content: the digest of the images' bytes (``verify``), else None.
        extraction: what the extraction did (for a reused entry: nothing computed).
    """

    path: str
    key: str
    images: str
    reused: bool
    stale: bool
    content: str | None
    extraction: ExtractResult

    def open(self) -> FeatureSource:
        """The entry as an opened, validated feature store.

        Raises:
            StoreError: the entry is incomplete or damaged (another run rewriting it).
            ShapeError: fewer than 2 images gave features (the others left out with
                ``skip_bad``), named by the images, not the entry.
        """
        from shardeval.pipeline.io.stores import open_features

        source = open_features(self.path, array_name=FEATURES_ARRAY, min_rows=0)
        check_rows(source.n, self.images, self.extraction.skipped, self.path)
        return source


def check_rows(
    rows: int,
    images: str,
    skipped: tuple[tuple[str, str], ...] | int,
    entry: str,
    min_rows: int = 2,
) -> None:
    """Refuse features of fewer than ``min_rows`` images (2 for a covariance), naming the
    images and how many were left out as unreadable (``skip_bad``), not the cache entry
    alone.

    Raises:
        ShapeError: naming the images.
    """
    from shardeval.pipeline.errors import ShapeError

    if rows >= min_rows:
        return
    left_out = skipped if isinstance(skipped, int) else len(skipped)
    why = f" ({left_out} left out as unreadable with «skip_bad»)" if left_out else ""
    raise ShapeError(
        f"the images {images!r} gave {rows} decodable image{'' if rows == 1 else 's'}{why}; at "
        f"least {min_rows} are needed (their features: cache entry {entry!r})"
    )


def make_cache_root(root: str) -> None:
    """Create the cache folder :func:`resolve_cache_root` gave, marked as a feature cache
    when new or empty, before anything is written into it.

    Raises:
        OutputExistsError: it cannot be created or marked.
    """
    make_root(root)


def cache_key(source: ImageSource, plan: Extraction, *, skip_bad: bool = False) -> str:
    """The key of an image source's features under an extraction's settings.

    Args:
        source: the listed images (:func:`~shardeval.pipeline.images.sources.open_images`).
        plan: the settings (:func:`~shardeval.pipeline.images.extract.plan_extraction`).
        skip_bad: undecodable images are left out (another set of rows, so another key).

    Returns:
        32 hex digits.
    """
    parts = [
        "shardeval.feature-cache",
        _KEY_VERSION,
        source.fingerprint,
        plan.encoder,
        plan.digest,
        plan.resize,
        skip_bad,
        list(entry_arrays(plan)),
        # a user's encoder (its name says it too): the source; registered ones keep their keys
        *([] if plan.source == "shardeval" else [plan.source]),
    ]
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=_DIGEST_BYTES).hexdigest()


def cache_path(cache_root: str | os.PathLike[str], key: str) -> str:
    """The entry of ``key`` in the folder ``cache_root`` (absolute)."""
    return os.path.join(os.path.abspath(os.fspath(cache_root)), f"features-{key}.zarr")


def fill_cache(
    source: ImageSource,
    plan: Extraction,
    *,
    cache_root: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    skip_bad: bool = False,
    engine: Engine | None = None,
    progress: Progress | None = None,
    content: str | None = None,
    log: Callable[[str], None] | None = None,
    claim_root: bool = True,
) -> CachedFeatures:
    """The features of a listed image source: a complete entry of the cache, reused, or
    extracted (finished, for an entry a killed run left unfinished) and then used.

    For callers that listed the images and planned the extraction already (a job checks every
    input before it computes); :func:`cached_features` does both.

    Args:
        source: the listed images.
        plan: the extraction's settings.
        cache_root: the cache folder (default: :func:`default_cache_root`).
        batch_size: images per forward pass for a new entry (default 32); an unfinished
            entry is finished with its own, a finished one reused whatever it is.
        device: ``auto``, ``cpu`` or ``cuda``.
        skip_bad: leave out images that cannot be decoded (another entry).
        engine: where tasks run (default: the threaded scheduler).
        progress: called with (chunks done, chunks to compute).
        content: the digest of the images' bytes (:func:`images_digest`), to check against the
            one the entry recorded and to record; None: the listing decides alone.
        log: called with a notice when this call waits for another run that holds the
            entry's lock (writing it).
        claim_root: check that ``cache_root`` is a feature cache, new or empty
            (:func:`check_cache_root`), and mark it one; False for a folder the caller owns
            and keeps other files in (a job's, beside its history).

    Returns:
        The entry and what was done (:class:`CachedFeatures`).

    Raises:
        OutputExistsError: the cache is a file, cannot be created, is inside the images, or
            (``claim_root``) is not a folder a cache may use; the entry's place holds
            something that is not ours for this key.
        ExtractionError: ``cache_root`` is empty or a URL; the images changed while they
            were extracted; every image was skipped.
        ImageSourceError, ImageError, EncoderSetupError, EngineError, ClusterError: as
            :func:`~shardeval.pipeline.images.extract.extract_features`.
    """
    root = resolve_cache_root(cache_root, check=claim_root)
    check_outside(root, source)  # before anything is created there
    make_root(root, mark=claim_root)
    key = cache_key(source, plan, skip_bad=skip_bad)
    path = cache_path(root, key)
    attrs = existing_entry(path, settings(source, plan, skip_bad))
    # With the bytes to check, an entry that recorded other bytes or none is extracted again;
    # an unfinished one too: the bytes its chunks were computed from are not known. So is an
    # entry that lacks an array its key stands for (made before extraction wrote logits).
    stale = attrs is not None and content is not None and attrs.get(CONTENT_ATTR) != content
    stale = stale or (attrs is not None and bool(lacking(path, plan)))
    if attrs is not None and finished(attrs) and not stale:
        reused = reused_entry(source, plan, path, skip_bad, content, log)
        if reused is not None:
            return CachedFeatures(path, key, source.location, True, False, content, reused)
    if attrs is not None and not finished(attrs) and not stale:
        batch_size = None  # finished with its own: its chunks are laid out by it
    result = extract_features(
        source.location,
        path,
        encoder=plan.encoder_spec,
        weights=plan.weights,
        resize=plan.resize,
        batch_size=batch_size,
        device=device,
        skip_bad=skip_bad,
        overwrite=stale,  # ours, for this key, extracted from other bytes: extracted again
        engine=engine,
        progress=progress,
        log=log,
    )
    # Extraction lists the images again: if they changed since ``source`` was listed, the
    # entry holds features of other images than its key stands for.
    if group_attrs(path).get("source_fingerprint") != source.fingerprint:
        raise ExtractionError(
            f"the images {source.location!r} changed while their features were extracted "
            f"into {path!r}; run again once they stay as they are"
        )
    if content is not None:
        record_content(path, source, content, log)
    return CachedFeatures(
        path=path,
        key=key,
        images=source.location,
        reused=result.already_complete,
        stale=stale,
        content=content,
        extraction=result,
    )


def cached_features(
    images: str | os.PathLike[str],
    *,
    cache_root: str | os.PathLike[str] | None = None,
    encoder: str = "inception",
    resize: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    skip_bad: bool = False,
    engine: Engine | None = None,
    progress: Progress | None = None,
    verify: bool = False,
    log: Callable[[str], None] | None = None,
) -> CachedFeatures:
    """The features of an image source under an encoder, from the feature cache: extracted
    the first time, reused (no encoder runs) after.

    Args:
        images: a folder, ``.zip``, ``.npz``/``.npy`` of uint8 images, ``.tar`` shard or glob
            of shards (see :func:`~shardeval.pipeline.images.sources.open_images`).
        cache_root: the cache folder (default: :func:`default_cache_root`).
        encoder: an encoder (a name, declaration or module: see
            :func:`~shardeval.pipeline.images.encoding.plan_extraction`).
        resize: the encoder's preprocessing mode (default: its first).
        weights: the weights file / model folder; default: the standard caches.
        batch_size: images per forward pass for a new entry (default 32); not part of the
            key: a finished entry is reused whatever it is.
        device: ``auto`` (each worker's GPU if it has one), ``cpu`` or ``cuda``.
        skip_bad: leave out images that cannot be decoded (another entry).
        engine: where tasks run (default: the threaded scheduler).
        progress: called with (chunks done, chunks to compute).
        verify: hash the images' bytes too (reads them all once), and extract again an entry
            that recorded other bytes or none: the listing cannot see an image rewritten with
            its size and time kept.
        log: called with a notice when this call waits for another run writing the entry.

    Returns:
        The entry and what was done (:class:`CachedFeatures`); ``.open()`` reads it.

    Raises:
        ImageSourceError: the images cannot be listed (missing, empty, of an unknown kind).
        EncoderSetupError: an unknown encoder or resize, weights missing.
        OutputExistsError, ExtractionError, ImageError, EngineError, ClusterError: as
            :func:`fill_cache`.
    """
    plan = plan_extraction(encoder, weights, resize)
    source = open_images(images)
    content = images_digest(source) if verify else None
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
    )
