"""The feature cache's folder and its entries (:mod:`shardeval.pipeline.images.cache`): where
the folder is, and of one entry the arrays it holds, the settings it records and its reuse: a
finished entry of a key is read as it is, under a shared lock; one that is not ours for that
key is refused, never replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.images.content import is_zarr_folder
from shardeval.pipeline.images.extract import (
    LOGITS_ARRAY,
    SETTING_KEYS,
    ExtractionError,
    ExtractResult,
    finished_result,
    is_extraction_store,
    waiting_notice,
)
from shardeval.pipeline.io.atomic import OutputExistsError, locked
from shardeval.pipeline.io.stores import INCOMPLETE_ATTR

if TYPE_CHECKING:
    from shardeval.pipeline.images.extract import Extraction
    from shardeval.pipeline.images.sources import ImageSource

#: The environment variable naming the cache folder.
CACHE_ENV = "SHARDEVAL_CACHE"

#: The array of an entry that holds the features.
FEATURES_ARRAY = "features"

#: Attribute of an entry: the digest of the images' bytes it was extracted from (``verify``).
CONTENT_ATTR = "content_digest"

#: The file that marks a folder as a feature cache, written when the cache makes the folder
#: (or finds it empty): a folder holding other files is never taken for a cache.
CACHE_MARKER = ".shardeval-feature-cache"
#: What a cache folder holds besides the mark: entries and their locks, and images in memory
#: staged as ``.npy`` files for their extraction (``.part`` while being written).
_CACHE_NAMES = re.compile(r"^(features-[0-9a-f]{32}\.zarr(\.lock)?|\.shardeval-images-[^/]*)$")


def entry_arrays(plan: Extraction) -> tuple[str, ...]:
    """The arrays an entry of these settings holds: the features, and the class logits of an
    encoder that has them (the Inception's, which the Inception Score takes)."""
    return (FEATURES_ARRAY, LOGITS_ARRAY) if plan.encoder_spec.logits else (FEATURES_ARRAY,)


def lacking(path: str, plan: Extraction) -> list[str]:
    """The arrays of :func:`entry_arrays` that the entry at ``path`` does not hold (one made
    before extraction wrote logits holds features only)."""
    import zarr

    group = zarr.open_group(path, mode="r", use_consolidated=False)
    return [name for name in entry_arrays(plan) if name not in group]


def group_attrs(path: str) -> dict[str, Any]:
    import zarr

    return dict(zarr.open_group(path, mode="r", use_consolidated=False).attrs)


def finished(attrs: dict[str, Any]) -> bool:
    return not attrs.get(INCOMPLETE_ATTR) and attrs.get("complete") is True


def settings(source: ImageSource, plan: Extraction, skip_bad: bool) -> dict[str, Any]:
    """The attributes an entry of this key records (extraction's :data:`SETTING_KEYS`)."""
    return {
        "encoder": plan.encoder,
        "weights_digest": plan.digest,
        "resize": plan.resize,
        "source_fingerprint": source.fingerprint,
        "skip_bad": skip_bad,
    }


def existing_entry(path: str, wanted: dict[str, Any]) -> dict[str, Any] | None:
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
    attrs = group_attrs(path)
    diff = [k for k in SETTING_KEYS if attrs.get(k) != wanted[k]]
    if diff:
        raise OutputExistsError(
            f"{path!r} records other {', '.join(diff)} than its name stands for (were the "
            "images changed while it was being written?); it is not replaced: remove it to "
            "extract again, or pass «cache_root=FOLDER» another folder"
        )
    return attrs


def reused_entry(
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
        attrs = existing_entry(path, settings(source, plan, skip_bad))
        if attrs is None or not finished(attrs) or lacking(path, plan):
            return None
        if content is not None and attrs.get(CONTENT_ATTR) != content:
            return None
        return finished_result(path, attrs)


def record_content(
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
        if not finished(attrs) or attrs.get("source_fingerprint") != source.fingerprint:
            raise ExtractionError(
                f"{path!r} was rewritten by another run while this one used it; run again"
            )
        group.attrs[CONTENT_ATTR] = content


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
        if is_zarr_folder(probe):
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


def make_root(root: str, *, mark: bool = True) -> None:
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


def check_outside(root: str, source: ImageSource) -> None:
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
