"""Where the logits of a set are, and whether what was given is logits at all.

The Inception Score takes the softmax of each row; any (N, C) array has one, so nothing in the
numbers tells logits from features. An array is read as logits only when something says it
holds them:

* an extraction store (its ``logits`` array, written beside the features by the Inception),
  whichever array was opened; «array» naming another of its arrays is refused;
* a Zarr group holding an array called ``logits`` (read whatever array was opened, unless the
  caller named another);
* an array whose own name says so: a variable or ``.npz`` key, or for a bare array or ``.npy``
  the file's name, with the word ``logits`` (``logits``, ``gen_logits.npy``), or a ``class``
  dimension;
* an array the caller names as the logits: «array» given to the Inception Score, or an array
  passed in memory as its ``logits`` argument.

A store whose attributes say it holds an encoder's *features* (pool3, a CLS token, an
embedding) is refused: a softmax of features is a number, and not an Inception Score. So is
anything else, in one line saying how to give logits.
"""

from __future__ import annotations

import os
import re

from shardeval.pipeline.errors import ShapeError, StoreError
from shardeval.pipeline.io.stores import (
    FEATURES_FORMAT,
    FeatureSource,
    numpy_kind,
    open_features,
)

#: Dimension names that say an array's columns are classes.
CLASS_DIM_NAMES = frozenset({"class", "classes", "label", "labels", "logit", "logits"})

#: Words of an array's name that say it holds logits.
LOGITS_WORDS = frozenset({"logit", "logits"})


class NotLogitsError(StoreError):
    """What was given as class logits is not known to be: an encoder's features, rows that
    are probabilities, an extraction store without logits, an array nothing names as logits."""


def _feature_labels() -> set[str]:
    """What extraction stores record as ``feature_extractor`` for features."""
    from shardeval.kernels.encoders import ENCODERS

    return {spec.feature_extractor for spec in ENCODERS.values()}


def is_extraction(source: FeatureSource) -> bool:
    """Whether ``source`` was opened from a store written by extraction."""
    return source.attrs.get("format") == FEATURES_FORMAT


def says_logits(source: FeatureSource) -> bool:
    """Whether a stored array's own name (its variable's, or for a bare array or ``.npy`` its
    file's) has the word ``logits``, or one of its dimensions is named as classes."""
    if source.reader is None:  # in memory or computed: no name of its own
        return False
    name = source.name or os.path.basename(source.location.rstrip("/"))
    if LOGITS_WORDS & set(re.findall(r"[a-z]+", name.lower())):
        return True
    return any(str(d).lower() in CLASS_DIM_NAMES for d in source.reader.dims)


def _group_has_logits(location: str) -> bool | None:
    """Whether the Zarr group at ``location`` holds a ``logits`` array (None: not a group)."""
    import zarr

    from shardeval.pipeline.images.extract import LOGITS_ARRAY

    if numpy_kind(location) is not None:
        return None
    try:
        group = zarr.open_group(location, mode="r", use_consolidated=False)
        return LOGITS_ARRAY in group
    except Exception:  # zarr raises several types for what is not a group
        return None


def logits_of(
    source: FeatureSource, shard_rows: int | None = None, *, named: bool | None = False
) -> FeatureSource:
    """The logits that ``source`` stands for (see the module's text for what says so).

    Args:
        source: an opened store, or an array in memory.
        shard_rows: rows per shard of a ``logits`` array read beside ``source`` (default:
            about 64 MiB).
        named: whether the caller names ``source`` as the logits: True when «array» was given
            for them or an array was passed in memory as the logits; False when it could have
            been and was not; None when it cannot be (where «array» names the features of
            other metrics asked with the score, or a job's).

    Returns:
        The logits, (N, C).

    Raises:
        NotLogitsError: an extraction store without logits, or «array» naming another of its
            arrays; a store of features; an array nothing says holds logits.
        ShapeError: not 2-D, or fewer than 2 classes.
    """
    from shardeval.pipeline.images.extract import LOGITS_ARRAY

    where = f"{source.location!r}" + (f" (array {source.name!r})" if source.name else "")
    if is_extraction(source):
        if source.name == LOGITS_ARRAY:
            return _checked(source)
        if named:
            raise NotLogitsError(
                f"{source.location!r}: «array={source.name!r}» names the extraction store's "
                f"{source.name}, and the Inception Score reads its class logits, the "
                f"{LOGITS_ARRAY!r} array: leave «array» out, or give «array={LOGITS_ARRAY!r}»"
            )
        if _group_has_logits(source.location) is False:
            encoder = source.attrs.get("encoder", "?")
            raise NotLogitsError(
                f"{source.location!r} is an extraction store ({encoder}) without class logits "
                "(extracted before they were written, without them, or by an encoder that has "
                "none); extract the images with the Inception into a new store: it writes the "
                "1,008 logits beside the features"
            )
        # open_features names what is wrong with a logits array that does not open
        logits = open_features(source.location, array_name=LOGITS_ARRAY, shard_rows=shard_rows)
        return _checked(logits)
    if says_logits(source):
        return _checked(source)
    if not named and source.name != LOGITS_ARRAY and _group_has_logits(source.location):
        logits = open_features(source.location, array_name=LOGITS_ARRAY, shard_rows=shard_rows)
        return _checked(logits)
    if source.feature_extractor in _feature_labels():
        raise NotLogitsError(
            f"{where} holds {source.feature_extractor} features, not class logits; give the "
            "logits (an extraction store of the Inception holds them beside its features)"
        )
    if named:
        return _checked(source)
    ways = (
        "an extraction store of the Inception, an array named 'logits' (a group's or .npz's "
        "variable, or a file such as logits.npy)"
    )
    if source.reader is None:
        ways += ", or an array in memory given to inception_score as its logits"
    elif named is False:
        ways += ", or the array named with «array=NAME»"
    raise NotLogitsError(
        f"{where} is not known to hold class logits (nothing in its name, dimensions or "
        f"attributes says so; features would give a plausible, wrong score): give {ways}; "
        "probabilities as their log"
    )


def _checked(source: FeatureSource) -> FeatureSource:
    if source.array.ndim != 2 or source.d < 2:
        where = f"{source.location!r}" + (f" (array {source.name!r})" if source.name else "")
        raise ShapeError(
            f"{where} has shape {tuple(source.array.shape)}; logits are (N, C) with at least 2 "
            "classes"
        )
    return source
