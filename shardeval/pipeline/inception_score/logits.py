"""Where the logits of a set are: an extraction store's ``logits`` array beside its features, or
an (N, C) array the user gives as logits (any store the other metrics read: Zarr, ``.npy``,
``.npz``, an array in memory).

A store whose attributes say it holds an encoder's *features* (pool3, a CLS token, an
embedding) is refused: a softmax of features is a number, and not an Inception Score.
"""

from __future__ import annotations

from shardeval.pipeline.errors import ShapeError, StoreError
from shardeval.pipeline.io.stores import FEATURES_FORMAT, FeatureSource, open_features


def _feature_labels() -> set[str]:
    """What extraction stores record as ``feature_extractor`` for features."""
    from shardeval.kernels.encoders import ENCODERS

    return {spec.feature_extractor for spec in ENCODERS.values()}


def is_extraction(source: FeatureSource) -> bool:
    """Whether ``source`` was opened from a store written by extraction."""
    return source.attrs.get("format") == FEATURES_FORMAT


def logits_of(source: FeatureSource, shard_rows: int | None = None) -> FeatureSource:
    """The logits that ``source`` stands for.

    Args:
        source: an opened store. From an extraction store (whichever array was opened) its
            ``logits`` array is read; anything else is taken as logits itself.
        shard_rows: rows per shard of an extraction store's logits (default: about 64 MiB).

    Returns:
        The logits, (N, C).

    Raises:
        StoreError: an extraction store without logits (written before they were, with
            ``logits=False``, or by an encoder that has none); a store of features.
        ShapeError: fewer than 2 classes.
    """
    import zarr

    from shardeval.pipeline.images.extract import LOGITS_ARRAY

    if is_extraction(source):
        if source.name == LOGITS_ARRAY:
            return source
        try:
            group = zarr.open_group(source.location, mode="r", use_consolidated=False)
            present = LOGITS_ARRAY in group
        except Exception:  # zarr raises several types; open_features names what is wrong
            present = True
        if not present:
            encoder = source.attrs.get("encoder", "?")
            raise StoreError(
                f"{source.location!r} is an extraction store ({encoder}) without class logits "
                "(extracted before they were written, with «logits=False», or by an encoder "
                "that has none); extract the images with the Inception into a new store: it "
                "writes the 1,008 logits beside the features"
            )
        return open_features(source.location, array_name=LOGITS_ARRAY, shard_rows=shard_rows)
    if source.feature_extractor in _feature_labels():
        raise StoreError(
            f"{source.location!r} holds {source.feature_extractor} features, not class logits; "
            "give the logits (an extraction store of the Inception holds them beside its "
            "features)"
        )
    if source.array.ndim != 2 or source.d < 2:
        raise ShapeError(
            f"{source.location!r} has shape {tuple(source.array.shape)}; logits are (N, C) "
            "with at least 2 classes"
        )
    return source
