"""The feature cache's folder and its entries (:mod:`shardeval.pipeline.images.cache`): where
the folder is, and of one entry the arrays it holds, the settings it records and its reuse: a
finished entry of a key is read as it is, under a shared lock; one that is not ours for that
key is refused, never replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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


def resolve_cache_root(cache_root: str | os.PathLike[str] | None) -> str:
    """The cache folder asked for (absolute): ``cache_root``, or :func:`default_cache_root`
    when it is None; not created here.

    Raises:
        ExtractionError: an empty path (given, or in ``SHARDEVAL_CACHE``) or a URL (the cache
            is a local folder).
        OutputExistsError: the path exists and is not a folder.
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
    return root


def make_root(root: str) -> None:
    """Create the cache folder (and its parents) if missing.

    Raises:
        OutputExistsError: it cannot be created.
    """
    try:
        os.makedirs(root, exist_ok=True)
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
