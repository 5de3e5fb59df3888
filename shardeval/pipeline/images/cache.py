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
:class:`~shardeval.pipeline.images.sources.ImageSource`), the encoder, the weights' digest
(SHA-256; ``random:SEED`` for random weights), the resize and ``skip_bad``; and of what the
entry holds (:func:`entry_arrays`: the Inception's logits beside its features). An entry
that lacks an array its key stands for (made before extraction wrote logits) is extracted
again in its place, never handed out as it is. Not the batch size: features do not depend
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

import contextlib
import glob
import hashlib
import json
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.pipeline.images.extract import (
    LOGIT_CLASSES,
    LOGITS_ARRAY,
    SETTING_KEYS,
    ExtractionError,
    ExtractResult,
    extract_features,
    finished_result,
    is_extraction_store,
    plan_extraction,
    waiting_notice,
)
from shardeval.pipeline.images.sources import IMAGE_EXTENSIONS, open_images
from shardeval.pipeline.io.atomic import OutputExistsError, locked
from shardeval.pipeline.io.stores import INCOMPLETE_ATTR, NPY_MAGIC, ZIP_MAGICS

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine, Progress
    from shardeval.pipeline.images.extract import Extraction
    from shardeval.pipeline.images.sources import ImageSource
    from shardeval.pipeline.io.stores import FeatureSource

#: The environment variable naming the cache folder.
CACHE_ENV = "SHARDEVAL_CACHE"

#: The array of an entry that holds the features.
FEATURES_ARRAY = "features"

#: Attribute of an entry: the digest of the images' bytes it was extracted from (``verify``).
CONTENT_ATTR = "content_digest"

#: Bumped when the meaning of a key changes, so that old entries are never taken for new ones
#: (2: the weights' SHA-256 in place of BLAKE2b, and the arrays an entry holds).
_KEY_VERSION = 2
_DIGEST_BYTES = 16
_GLOB_CHARS = "*?["
_READ_BLOCK = 1 << 23
#: Files that make a folder a Zarr store (v3; v2 group, array, attributes).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
#: The file that marks a folder as a feature cache, written when the cache makes the folder
#: (or finds it empty): a folder holding other files is never taken for a cache.
CACHE_MARKER = ".shardeval-feature-cache"
#: What a cache folder holds besides the mark: entries and their locks, and images in memory
#: staged as ``.npy`` files for their extraction (``.part`` while being written).
_CACHE_NAMES = re.compile(r"^(features-[0-9a-f]{32}\.zarr(\.lock)?|\.shardeval-images-[^/]*)$")
#: Where a POSIX (ustar) or GNU tar header says what it is.
_TAR_MAGIC_AT, _TAR_MAGIC = 257, b"ustar"


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


def default_cache_root() -> str:
    """The cache folder when none is given: ``$SHARDEVAL_CACHE``, else
    ``$XDG_CACHE_HOME/shardeval``, else ``~/.cache/shardeval`` (absolute).

    Raises:
        ExtractionError: ``SHARDEVAL_CACHE`` is set to an empty value (a script whose variable
            came out empty meant some folder, not the default one).
    """
    given = os.environ.get(CACHE_ENV)
    if given is not None:
        if not given.strip():
            raise ExtractionError(
                f"the environment variable {CACHE_ENV} is set but empty; set it to a folder, "
                "or unset it for the default cache"
            )
        return os.path.abspath(os.path.expanduser(given))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.abspath(os.path.expanduser(os.path.join(base, "shardeval")))


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
    ]
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=_DIGEST_BYTES).hexdigest()


def entry_arrays(plan: Extraction) -> tuple[str, ...]:
    """The arrays an entry of these settings holds: the features, and the class logits of an
    encoder that has them (the Inception's, which the Inception Score takes)."""
    return (FEATURES_ARRAY, LOGITS_ARRAY) if plan.encoder in LOGIT_CLASSES else (FEATURES_ARRAY,)


def _lacking(path: str, plan: Extraction) -> list[str]:
    """The arrays of :func:`entry_arrays` that the entry at ``path`` does not hold (one made
    before extraction wrote logits holds features only)."""
    import zarr

    group = zarr.open_group(path, mode="r", use_consolidated=False)
    return [name for name in entry_arrays(plan) if name not in group]


def cache_path(cache_root: str | os.PathLike[str], key: str) -> str:
    """The entry of ``key`` in the folder ``cache_root`` (absolute)."""
    return os.path.join(os.path.abspath(os.fspath(cache_root)), f"features-{key}.zarr")


def images_digest(source: ImageSource) -> str:
    """A BLAKE2b (128-bit, hex) digest of the bytes a source's images are read from: a
    folder's listed image files (name and bytes, in order; one that cannot be read by why),
    a zip's or array file's bytes, tar shards' bytes (and names, relative to their common
    folder). Where the source is does not count. Reads everything once.

    Raises:
        ImageSourceError: an archive or array file cannot be read.
    """
    from shardeval.pipeline.images.sources import ImageSourceError

    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    digest.update(source.kind.encode() + b"\n")
    if source.kind == "folder":
        for name, path in zip(source.names, source.locators, strict=True):
            digest.update(name.encode() + b"\0")
            _hash_image_file(digest, path)
        return digest.hexdigest()
    if source.kind == "tar":
        files = sorted({shard for shard, _offset, _size in source.locators})
    else:  # a zip, or an array's file
        files = [source.layout.path if source.layout is not None else source.location]
    base = os.path.commonpath([os.path.dirname(f) for f in files])
    for path in files:
        # Named as the listing names shards (relative), so that a moved copy hashes the same.
        digest.update(os.path.relpath(path, base).encode() + b"\0")
        try:
            _hash_file(digest, path)
        except OSError as exc:
            raise ImageSourceError(
                f"{path!r} cannot be read ({exc.strerror}); did it move since it was listed?"
            ) from exc
    return digest.hexdigest()


def _hash_file(digest: Any, path: str) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)


def _hash_image_file(digest: Any, path: str) -> None:
    """An image file's bytes into ``digest``; one that is not a regular file (never opened: a
    FIFO would wait for ever) or cannot be read goes in as its reason, as the listing has it."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            digest.update(f"\0not a file {mode}\n".encode())
            return
        _hash_file(digest, path)
    except OSError as exc:
        digest.update(f"\0unreadable {exc.errno}\n".encode())
    digest.update(b"\n")


def resolve_cache_root(cache_root: str | os.PathLike[str] | None, *, check: bool = True) -> str:
    """The cache folder asked for (absolute): ``cache_root``, or :func:`default_cache_root`
    when it is None; checked to be one a cache may use (:func:`check_cache_root`), not
    created here.

    Args:
        cache_root: the folder, or None for the default.
        check: refuse what is not a feature cache (False: a folder the caller owns and keeps
            other files in, as a job does beside its history).

    Raises:
        ExtractionError: an empty path (given, or in ``SHARDEVAL_CACHE``) or a URL (the cache
            is a local folder).
        OutputExistsError: the path exists and is not a folder, or (``check``) is not one a
            feature cache may use.
    """
    if cache_root is None:
        root = default_cache_root()
    else:
        root = os.fspath(cache_root)
        if not root.strip():
            raise ExtractionError(
                "«cache_root» is empty; give a folder, or leave it out for the default cache"
            )
        if "://" in root:
            raise ExtractionError(
                f"«cache_root={root!r}» is a URL; the feature cache is a local folder (shared "
                "by every worker on a cluster)"
            )
        root = os.path.abspath(os.path.expanduser(root))
    if os.path.lexists(root) and not os.path.isdir(root):
        raise OutputExistsError(
            f"the feature cache {root!r} exists and is not a folder; pass «cache_root=FOLDER»"
        )
    if check:
        check_cache_root(root)
    return root


def check_cache_root(root: str) -> None:
    """Refuse a folder a feature cache must not write into: a Zarr store (a feature store,
    statistics, a run history) or a folder inside one, and an existing folder that holds
    anything but the mark and cache entries without being marked as a cache
    (:data:`CACHE_MARKER`). A folder that does not exist yet, an empty one, a marked one and
    an unmarked one of cache entries (made before the mark) are fine.

    Raises:
        OutputExistsError: naming the folder, what it is and what to pass instead.
    """
    instead = "pass «cache_root=FOLDER» a new or empty folder, or a feature cache"
    probe = root
    while True:
        if _is_zarr_folder(probe):
            kind = _zarr_format(probe)
            where = "is" if probe == root else f"is inside the Zarr store {probe!r}, which is"
            raise OutputExistsError(
                f"the feature cache {root!r} {where} a Zarr store"
                f"{f' (format {kind!r})' if kind else ''}; the cache never writes into a "
                f"store: {instead}"
            )
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return  # made when first written to, and marked then
    except OSError as exc:
        raise OutputExistsError(
            f"the feature cache {root!r} cannot be listed ({exc.strerror}); {instead}"
        ) from exc
    if not names or CACHE_MARKER in names:
        return
    other = [name for name in names if not _CACHE_NAMES.match(name)]
    if len(other) == len(names):  # not one cache entry among them
        shown = ", ".join(repr(n) for n in other[:3]) + (", …" if len(other) > 3 else "")
        raise OutputExistsError(
            f"the feature cache {root!r} holds other files ({shown}) and is not a feature "
            f"cache (no {CACHE_MARKER}, no cache entries); the cache never writes among "
            f"files it did not make: {instead}"
        )


def _zarr_format(path: str) -> str | None:
    """The ``format`` attribute a Zarr store records (None when none, or unreadable)."""
    try:
        import zarr

        kind = zarr.open(path, mode="r", use_consolidated=False).attrs.get("format")
    except Exception:  # zarr raises many types for a store it cannot open
        return None
    return None if kind is None else str(kind)


def _make_root(root: str, *, mark: bool = True) -> None:
    """Create the cache folder (and its parents) if missing; with ``mark``, mark it as a
    feature cache when it holds nothing yet (:data:`CACHE_MARKER`; an unmarked cache of
    entries is left as it is: it may be others', read-only here).

    Raises:
        OutputExistsError: it cannot be created or marked.
    """
    try:
        os.makedirs(root, exist_ok=True)
        if mark and not os.listdir(root):
            marker = os.path.join(root, CACHE_MARKER)
            # FileExistsError: a concurrent run marked it.
            with contextlib.suppress(FileExistsError), open(marker, "x", encoding="utf-8") as fh:
                fh.write(
                    "A shardeval feature cache: features-<key>.zarr entries of image sources, "
                    "and their locks.\n"
                )
    except OSError as exc:
        raise OutputExistsError(
            f"the feature cache {root!r} cannot be created ({exc.strerror}); pass "
            "«cache_root=FOLDER» a folder this process can write"
        ) from exc


def make_cache_root(root: str) -> None:
    """Create the cache folder :func:`resolve_cache_root` gave, marked as a feature cache
    when new or empty, before anything is written into it.

    Raises:
        OutputExistsError: it cannot be created or marked.
    """
    _make_root(root)


def _check_outside(root: str, source: ImageSource) -> None:
    """Refuse a cache at or inside a folder of images: its entries would change them (and
    their fingerprint, so every run would extract again).

    Raises:
        OutputExistsError: naming both.
    """
    if not os.path.isdir(source.location):
        return  # a file or a glob of files: nothing can be written inside it
    images = os.path.realpath(source.location).rstrip(os.sep) + os.sep
    if (os.path.realpath(root).rstrip(os.sep) + os.sep).startswith(images):
        raise OutputExistsError(
            f"the feature cache {root!r} is inside the images {source.location!r}: writing it "
            "there would change them; pass «cache_root=FOLDER» outside them"
        )


def _group_attrs(path: str) -> dict[str, Any]:
    import zarr

    return dict(zarr.open_group(path, mode="r", use_consolidated=False).attrs)


def _finished(attrs: dict[str, Any]) -> bool:
    return not attrs.get(INCOMPLETE_ATTR) and attrs.get("complete") is True


def _settings(source: ImageSource, plan: Extraction, skip_bad: bool) -> dict[str, Any]:
    """The attributes an entry of this key records (extraction's :data:`SETTING_KEYS`)."""
    return {
        "encoder": plan.encoder,
        "weights_digest": plan.digest,
        "resize": plan.resize,
        "source_fingerprint": source.fingerprint,
        "skip_bad": skip_bad,
    }


def _existing_entry(path: str, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The attributes of the entry at ``path``, None if there is none; refuses what is not
    one of ours for this key.

    Raises:
        OutputExistsError: ``path`` holds something that is not an extraction store, or one
            recording other settings than its name stands for (its images changed while it
            was being written, or it was put there by hand).
    """
    if not os.path.lexists(path):
        return None
    if not is_extraction_store(path):
        raise OutputExistsError(
            f"{path!r} is in the place of a feature cache entry but is not a feature store "
            "written by extraction; shardeval never replaces what it did not write: move it "
            "aside, or pass «cache_root=FOLDER» another folder"
        )
    attrs = _group_attrs(path)
    diff = [k for k in SETTING_KEYS if attrs.get(k) != wanted[k]]
    if diff:
        raise OutputExistsError(
            f"{path!r} records other {', '.join(diff)} than its name stands for (were the "
            "images changed while it was being written?); it is not replaced: remove it to "
            "extract again, or pass «cache_root=FOLDER» another folder"
        )
    return attrs


def _reused(
    source: ImageSource,
    plan: Extraction,
    path: str,
    skip_bad: bool,
    content: str | None,
    log: Callable[[str], None] | None,
) -> ExtractResult | None:
    """A finished entry of this key, read as it is: under a shared lock, so that a run
    rewriting it in place finishes first (and this one says it waits), and without one where
    the lock file cannot be made (a cache others wrote, read-only here: nobody writes there
    either). Nothing is written. None when, read again under the lock, it is not finished
    and current any more (then it is extracted as any other)."""
    with locked(
        path + ".lock", exclusive=False, waiting=waiting_notice(log, path, source.location)
    ):
        attrs = _existing_entry(path, _settings(source, plan, skip_bad))
        if attrs is None or not _finished(attrs) or _lacking(path, plan):
            return None
        if content is not None and attrs.get(CONTENT_ATTR) != content:
            return None
        return finished_result(path, attrs)


def _record_content(
    path: str, source: ImageSource, content: str, log: Callable[[str], None] | None = None
) -> None:
    """Record the images' bytes in a finished entry, holding its writer's lock (a concurrent
    run rewriting it finishes first) and checking it still holds features of these images.

    Raises:
        ExtractionError: the entry is no longer a finished extraction of these images.
    """
    import zarr

    with locked(path + ".lock", exclusive=True, waiting=waiting_notice(log, path, source.location)):
        group = zarr.open_group(path, mode="r+", use_consolidated=False)
        attrs = dict(group.attrs)
        if not _finished(attrs) or attrs.get("source_fingerprint") != source.fingerprint:
            raise ExtractionError(
                f"{path!r} was rewritten by another run while this one used it; run again"
            )
        group.attrs[CONTENT_ATTR] = content


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
    _check_outside(root, source)  # before anything is created there
    _make_root(root, mark=claim_root)
    key = cache_key(source, plan, skip_bad=skip_bad)
    path = cache_path(root, key)
    attrs = _existing_entry(path, _settings(source, plan, skip_bad))
    # With the bytes to check, an entry that recorded other bytes or none is extracted again;
    # an unfinished one too: the bytes its chunks were computed from are not known. So is an
    # entry that lacks an array its key stands for (made before extraction wrote logits).
    stale = attrs is not None and content is not None and attrs.get(CONTENT_ATTR) != content
    stale = stale or (attrs is not None and bool(_lacking(path, plan)))
    if attrs is not None and _finished(attrs) and not stale:
        reused = _reused(source, plan, path, skip_bad, content, log)
        if reused is not None:
            return CachedFeatures(path, key, source.location, True, False, content, reused)
    if attrs is not None and not _finished(attrs) and not stale:
        batch_size = None  # finished with its own: its chunks are laid out by it
    result = extract_features(
        source.location,
        path,
        encoder=plan.encoder,
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
    if _group_attrs(path).get("source_fingerprint") != source.fingerprint:
        raise ExtractionError(
            f"the images {source.location!r} changed while their features were extracted "
            f"into {path!r}; run again once they stay as they are"
        )
    if content is not None:
        _record_content(path, source, content, log)
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
        encoder: ``inception``, ``dinov2-vitl14`` or ``clip-vitl14-336``.
        resize: ``legacy-pytorch`` (default), ``clean`` or ``legacy-tensorflow`` for the
            Inception.
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


def is_image_source(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a source of images rather than features or statistics, told by
    what it holds, not its name, and without decoding any image (never raises).

    Images: a folder that is not a Zarr store and holds image files or ``.tar`` shards (found
    recursively, as listing does); a zip of image files; a ``.npy``, or a ``.npz`` whose
    ``arr_0`` or only array is uint8 of rank 3 or 4 ((N, H, W[, C]): features are 1-D or 2-D);
    a tar file; a
    glob matching tar files. Not images: a Zarr store (array, group, dataset, statistics),
    a ``.npy``/``.npz`` of features or statistics, a URL, a path that does not exist.
    """
    path = os.fspath(location)
    if "://" in path:
        return False  # images are read from local files; a URL is a store
    path = os.path.abspath(path)
    try:
        if not os.path.exists(path):
            if not any(c in path for c in _GLOB_CHARS):
                return False
            return any(os.path.isfile(m) and _is_tar(m) for m in sorted(glob.glob(path)))
        if os.path.isdir(path):
            return not _is_zarr_folder(path) and _holds_images(path)
        return _file_holds_images(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError):
        return False


def _is_zarr_folder(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, m)) for m in _ZARR_MARKERS)


def _lists_as_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("._")


def _holds_images(root: str) -> bool:
    """Whether a folder holds, at any depth, an image file or ``.tar`` shard (what listing
    takes), stopping at the first; symbolic links are followed, each real folder once."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if d != "__MACOSX")
        for name in files:
            if _lists_as_image(name) or (
                name.lower().endswith(".tar") and not name.startswith("._")
            ):
                return True
    return False


def _file_holds_images(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(_TAR_MAGIC_AT + len(_TAR_MAGIC))
    if head.startswith(NPY_MAGIC):
        with open(path, "rb") as fh:
            return _npy_holds_images(fh)
    if head.startswith(ZIP_MAGICS):
        return _zip_holds_images(path)
    return head[_TAR_MAGIC_AT:] == _TAR_MAGIC or _is_tar(path)


def _npy_holds_images(fh: Any) -> bool:
    """Whether the array whose ``.npy`` header ``fh`` starts at is uint8 of rank 3 or 4 (the
    header only). Floats of rank 3 or 4 are not taken for images: features of the wrong rank
    are refused as such by the store reader, which names the image layout too."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _fortran, dtype = reader(fh)
    return len(shape) in (3, 4) and np.dtype(dtype) == np.uint8


def _zip_holds_images(path: str) -> bool:
    """A ``.npz`` whose ``arr_0`` or only array is uint8 of rank 3 or 4, or a zip of image
    files."""
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        arrays = [n for n in names if n.endswith(".npy")]
        if arrays:
            key = "arr_0.npy" if "arr_0.npy" in arrays else arrays[0] if len(arrays) == 1 else None
            if key is None:
                return False  # several arrays, none arr_0: statistics (mu, sigma) or features
            with zf.open(key) as fh:
                return _npy_holds_images(fh)
        return any(_lists_as_image(n.rsplit("/", 1)[-1]) and "__MACOSX/" not in n for n in names)


def _is_tar(path: str) -> bool:
    """Whether a file is an uncompressed tar archive holding at least one member."""
    with open(path, "rb") as fh:
        head = fh.read(_TAR_MAGIC_AT + len(_TAR_MAGIC))
    if head[_TAR_MAGIC_AT:] == _TAR_MAGIC:
        return True
    if head.startswith((NPY_MAGIC, *ZIP_MAGICS)):
        return False
    try:
        with tarfile.open(path, "r:") as tf:
            return tf.next() is not None  # an old (v7) tar: no magic, a readable header
    except (tarfile.TarError, OSError, EOFError):
        return False
