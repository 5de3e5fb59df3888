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
  passed in memory as its ``logits`` argument;
* an array the caller declares logits, «as_logits=True», whatever its name, width or signs.

A store whose attributes say it holds an encoder's *features* (pool3, a CLS token, an
embedding) is refused: a softmax of features is a number, and not an Inception Score. So is
anything else, in one line saying how to give logits.

Names are not enough, since an array in memory is named by being passed: its values must not
look like features either. Logits take both signs (a classifier's last layer, W·h + b, has
weights of both signs), and the Inception's are 1,008 wide, where its pool3 features, which
FID reads from the same stores, are 2,048 wide and average ReLU outputs, so every value is ≥ 0.
So an array 2,048 wide (pool3's width, whatever its signs: standardised or projected features
keep it) is refused before any pass, and one whose every row is ≥ 0 (features after a ReLU,
the Inception's or another network's) after the first pass, which counts such rows
(:func:`~shardeval.pipeline.inception_score.score.inception_score`); log-probabilities, ≤ 0,
are logits. The few classifiers these rules would refuse (2,048 classes; logits shifted to
≥ 0) are read when declared, «as_logits=True». Rows that are all probability vectors are
refused whatever is declared: their log is the logits.
"""

from __future__ import annotations

import os
import re

from shardeval.pipeline.errors import ShapeError, StoreError
from shardeval.pipeline.io.stores import (
    FEATURES_FORMAT,
    NUMPY_READ_ERRORS,
    FeatureSource,
    holds_one_array,
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


def pool3_width() -> int:
    """Columns of the Inception's pool3 features (FID's), 2,048; its logits have 1,008."""
    from shardeval.kernels.encoders import ENCODERS

    width = ENCODERS["inception"].dim
    if width is None:  # a registered encoder declares its width; a user's may not
        raise TypeError("the registered Inception declares no feature width")
    return width


#: How a message says that the caller may declare an array logits (marked for both front ends).
DECLARE = "if the array holds a classifier's logits, say so with «as_logits=True»"


def where(source: FeatureSource) -> str:
    """How messages name a source of logits: its location, and its array when it has a name."""
    return f"{source.location!r}" + (f" (array {source.name!r})" if source.name else "")


def features_refusal(source: FeatureSource, why: str) -> NotLogitsError:
    """The refusal of an array whose values look like features (``why``: what they show)."""
    return NotLogitsError(
        f"{where(source)}: {why}; a softmax of features gives a plausible, wrong score: give "
        f"the logits (an extraction store of the Inception holds them beside its features), or, "
        f"{DECLARE}"
    )


def refuse_array_of_one(location: str, array: str) -> None:
    """«array» given for logits held as the one array of a ``.npy`` or a Zarr array, which it
    cannot pick: refused naming what reads them.

    Raises:
        NotLogitsError: always.
    """
    raise NotLogitsError(
        f"«array={array!r}»: {location!r} holds one array, with no name for «array» to pick "
        "(it picks a variable of a group, dataset or .npz); leave «array» out, and, if the "
        "array holds class logits, say so with «as_logits=True» (or name the file for them, "
        "e.g. logits.npy)"
    )


def array_of_logits(x: object, array: str | None) -> str | None:
    """The «array» to open ``x`` (a path, or an xarray Dataset in memory) with for its logits:
    ``array`` as given, else ``'logits'`` when ``x`` holds an array of that name among others
    (None: ``x`` as it opens).

    Raises:
        NotLogitsError: «array» given for a store of one array (a ``.npy``, a Zarr array),
            which it cannot pick; the message names what reads it.
    """
    if array is None:
        return logits_array(x)
    if isinstance(x, str | os.PathLike) and holds_one_array(x):
        refuse_array_of_one(os.fspath(x), array)
    return array


def logits_array(x: object) -> str | None:
    """``'logits'`` when ``x`` (a Zarr group, an ``.npz`` or an xarray Dataset) holds an array
    of that name, which the Inception Score reads among others; else None."""
    from shardeval.pipeline.images.extract import LOGITS_ARRAY

    data_vars = getattr(x, "data_vars", None)
    if data_vars is not None:  # an xarray Dataset in memory
        return LOGITS_ARRAY if LOGITS_ARRAY in data_vars else None
    if not isinstance(x, str | os.PathLike):
        return None
    location = os.fspath(x)
    try:
        if numpy_kind(location) == "npz":
            import numpy as np

            with np.load(location, allow_pickle=False) as archive:
                return LOGITS_ARRAY if LOGITS_ARRAY in archive.files else None
        return LOGITS_ARRAY if _group_has_logits(location) else None
    except (StoreError, *NUMPY_READ_ERRORS):
        return None  # opening it names what is wrong


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
    source: FeatureSource,
    shard_rows: int | None = None,
    *,
    named: bool | None = False,
    as_logits: bool = False,
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
        as_logits: the caller declares the array logits: read whatever its name, width or
            signs (an extraction store still gives its ``logits`` array, a group holding one
            too unless «array» named another; a store that records an encoder's features is
            still refused).

    Returns:
        The logits, (N, C).

    Raises:
        NotLogitsError: an extraction store without logits, or «array» naming another of its
            arrays; a store of features; an array nothing says holds logits; an array of the
            Inception's pool3 width (2,048), unless declared.
        ShapeError: not 2-D, or fewer than 2 classes.
    """
    from shardeval.pipeline.images.extract import LOGITS_ARRAY

    if is_extraction(source):
        if source.name == LOGITS_ARRAY:
            return _checked(source, as_logits)
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
        return _checked(logits, as_logits)
    if says_logits(source):
        return _checked(source, as_logits)
    if not named and source.name != LOGITS_ARRAY and logits_array(source.location):
        logits = open_features(source.location, array_name=LOGITS_ARRAY, shard_rows=shard_rows)
        return _checked(logits, as_logits)
    if source.feature_extractor in _feature_labels():
        raise NotLogitsError(
            f"{where(source)} holds {source.feature_extractor} features, not class logits; give "
            "the logits (an extraction store of the Inception holds them beside its features)"
        )
    if named or as_logits:
        return _checked(source, as_logits)
    ways = (
        "an extraction store of the Inception, an array named 'logits' (a group's or .npz's "
        "variable, or a file such as logits.npy)"
    )
    if source.reader is None:
        ways += ", or an array in memory given to inception_score as its logits"
    elif named is False and source.name:  # a variable of a group or .npz: «array» picks it
        ways += ", or the variable that holds them named with «array=NAME»"
    raise NotLogitsError(
        f"{where(source)} is not known to hold class logits (nothing in its name, dimensions "
        f"or attributes says so; features would give a plausible, wrong score): give {ways}; "
        f"probabilities as their log; {DECLARE}"
    )


def _checked(source: FeatureSource, as_logits: bool = False) -> FeatureSource:
    """``source`` when it is (N, C) with C ≥ 2 and, unless declared logits, not of the
    Inception's pool3 width."""
    if source.array.ndim != 2 or source.d < 2:
        raise ShapeError(
            f"{where(source)} has shape {tuple(source.array.shape)}; logits are (N, C) with at "
            "least 2 classes"
        )
    width = pool3_width()
    if source.d == width and not as_logits:
        from shardeval.kernels.encoders import ENCODERS

        raise features_refusal(
            source,
            f"{width:,} columns, the width of the Inception's pool3 features (FID's), where "
            f"its class logits have {ENCODERS['inception'].logits:,}",
        )
    return source
