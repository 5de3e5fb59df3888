"""An opened, validated feature store (:class:`FeatureSource`): its dask array, its name and
attributes, and the provenance a report or a statistics file records of it (:meth:`describe`),
for an extraction store how its features were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.pipeline.io.reader import StoredArray
from shardeval.pipeline.io.store_kinds import FEATURES_FORMAT

if TYPE_CHECKING:
    import dask.array as da

#: What a report names of an extraction store: report key → the store's attribute.
_EXTRACTION_PROVENANCE = {
    "encoder": "encoder",
    "encoder_source": "encoder_source",
    "resize": "resize",
    "weights_digest": "weights_digest",
    "weights_file": "weights_file",
    "images": "source",
    "image_count": "image_count",
    "skip_bad": "skip_bad",
}


@dataclass(frozen=True, eq=False)
class FeatureSource:
    """An opened, validated feature store.

    Attributes:
        location: the path or URL the user gave.
        array: (n, d) dask array, one block per shard.
        name: the array's name inside a group or ``.npz`` ("" for a bare array).
        feature_extractor: the store's extractor attribute, if it has one.
        attrs: the store's attributes (its group's, then its own).
        reader: what reads its rows by index (the pair metrics' tasks read their own blocks);
            None for a source made from a computed dask array.
        given: the input as the user gave it, when that is not the store read (images,
            whose features the feature cache holds): what summaries name.
        extraction: how the rows were made, when the store does not record it (rows that a
            training-loop metric encoded in memory and spilled): the encoder, resize, weights
            digest and file, as an extraction store's attributes name them.
    """

    location: str
    array: da.Array
    name: str = ""
    feature_extractor: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    reader: StoredArray | None = None
    given: str = ""
    extraction: dict[str, Any] | None = None

    @property
    def shown(self) -> str:
        """How summaries name it: as the user gave it (a folder of images, not its cache
        entry)."""
        return self.given or self.location

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    @property
    def d(self) -> int:
        """Features per row (columns; 1 for a 1-D array of per-sample values)."""
        return int(self.array.shape[1]) if self.array.ndim == 2 else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def shards(self) -> int:
        return int(self.array.numblocks[0])

    @property
    def shard_offsets(self) -> list[int]:
        """Global index of the first row of each shard."""
        return [0, *np.cumsum(self.array.chunks[0])[:-1].tolist()]

    def describe(self) -> dict[str, Any]:
        """Provenance: what a report or a statistics file records about this source; for an
        extraction store also how its features were made (encoder, resize, the weights'
        digest and file, whether they are the published file, the images), which decides
        what a number compares with."""
        described: dict[str, Any] = {
            **({"given": self.given} if self.given else {}),
            "source": self.location,
            "array": self.name,
            "shape": list(self.array.shape),
            "dtype": str(self.dtype),
            "shards": self.shards,
            "feature_extractor": self.feature_extractor,
        }
        made = None if self.extraction is None else dict(self.extraction)
        if made is None and self.attrs.get("format") == FEATURES_FORMAT:
            made = {
                key: self.attrs[name]
                for key, name in _EXTRACTION_PROVENANCE.items()
                if name in self.attrs
            }
        if made is not None:
            from shardeval.pipeline.images.provenance import weights_status

            # Decided from the digest against the pinned one, whatever the store says.
            made["weights_status"] = weights_status(made.get("encoder"), made.get("weights_digest"))
            described["extraction"] = made
        return described
