"""An extraction store: its layout, its creation in one step, and the checks that decide
whether an existing one is resumed, reused or refused.

The store is a Zarr v3 group: ``features`` (N, d) float32, dims (sample, feature), one chunk per
task of ``chunk_rows`` rows (a whole number of batches), fill value NaN (a row never written
reads as NaN, which every reader rejects); for an encoder with class logits (the Inception's),
``logits`` (N, classes) float32, dims (sample, class), of the same forward pass, chunked alike
(what they are, the encoder's declaration says: its ``logits_note``); when asked for
(«spatial»), ``spatial`` (N, 2023) float32, dims (sample, spatial), sFID's spatial features of
the same pass, chunked alike (its ``spatial_note``; 7.9 KiB a row); ``names`` (N,) strings,
the image of each row; and attributes naming the encoder (its name and ``encoder_source``), the
weights' digest, the resize, the source and its fingerprint.

The group is created complete but for the chunks, in one atomic step (a temporary sibling
renamed into place), and carries ``shardeval_incomplete`` until every chunk is stored. The
settings of :data:`SETTING_KEYS` decide its contents: a re-run with other ones is refused.
What a finished store holds reads as an :class:`ExtractResult` (:func:`finished_result`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.errors import StoreError
from shardeval.pipeline.images.encoding import (
    DEFAULT_BATCH_SIZE,
    LOGITS_ARRAY,
    SPATIAL_ARRAY,
    ExtractionError,
)
from shardeval.pipeline.images.provenance import LEGACY_PREFIX
from shardeval.pipeline.io.atomic import atomic_dir
from shardeval.pipeline.io.stores import FEATURES_FORMAT, INCOMPLETE_ATTR

if TYPE_CHECKING:
    from shardeval.pipeline.images.sources import ImageSource

#: What the incomplete mark says while chunks are still being written.
INCOMPLETE_NOTE = "extraction in progress; re-run to finish"

#: Settings that decide a store's contents; a re-run must match them to resume.
SETTING_KEYS = ("encoder", "weights_digest", "resize", "source_fingerprint", "skip_bad")


_NAMES_CHUNK = 65536


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction did.

    Attributes:
        output: the store.
        encoder, feature_extractor, resize: what computed the features.
        images: images in the source; rows: rows in the store (images − skipped).
        dim: features per row.
        skipped: (name, reason) of images left out (``skip_bad``); the reason is a sentence
            naming the image (path, or member and archive) and what is wrong with it.
        chunks: chunks of the store; computed: by this run; present: stored before it.
        already_complete: the store was finished before; nothing was computed.
        resumed: an unfinished store was completed.
        devices: devices the tasks of this run used.
        seconds: wall time; check_seconds: of it, the decode pre-pass.
        classes: logits per row the store holds (0: none).
        spatial: sFID's spatial values per row the store holds (0: none).
        weights_digest: the weights' digest (``sha256:<hex>``, ``random:<seed>``).
        weights_status: whether they are the published file (see
            :func:`shardeval.pipeline.images.provenance.weights_status`).
        weights_file: where they were read when the store was made (its ``weights_file``).
        encoder_source: where the encoder comes from: ``shardeval`` (registered), ``timm``,
            ``open_clip``, ``hf`` or ``python`` (a module given in Python).
    """

    output: str
    encoder: str
    feature_extractor: str
    resize: str
    images: int
    rows: int
    dim: int
    skipped: tuple[tuple[str, str], ...]
    chunks: int
    computed: int
    present: int
    already_complete: bool
    resumed: bool
    devices: tuple[str, ...]
    seconds: float
    check_seconds: float
    classes: int = 0
    spatial: int = 0
    weights_digest: str = ""
    weights_status: str | None = None
    weights_file: str = ""
    encoder_source: str = "shardeval"


def waiting_notice(
    log: Callable[[str], None] | None, output: str, images: str | os.PathLike[str]
) -> Callable[[], None] | None:
    """What tells ``log`` that this run waits for another one writing the store ``output``
    (it holds ``output``.lock), or None without ``log``."""
    if log is None:
        return None
    lock = output + ".lock"

    def say() -> None:
        log(
            f"waiting for another run that holds {lock} (it is writing the features of "
            f"{os.fspath(images)} there); this one goes on when it is done"
        )

    return say


def finished_result(output: str, attrs: dict[str, Any], seconds: float = 0.0) -> ExtractResult:
    """What a finished store holds, as :func:`extract_features` reports a store it found
    complete (nothing computed), from its attributes and its arrays' shapes alone: nothing
    is written, no lock taken (a finished store is only ever read)."""
    import zarr

    from shardeval.pipeline.images.provenance import weights_status

    encoder, rows, chunk_rows = str(attrs["encoder"]), int(attrs["rows"]), int(attrs["chunk_rows"])
    chunks = -(-rows // chunk_rows)
    digest = str(attrs.get("weights_digest", ""))
    group = zarr.open_group(output, mode="r", use_consolidated=False)
    features, scores = group["features"], group.get(LOGITS_ARRAY)
    spatial = group.get(SPATIAL_ARRAY)
    if (
        not isinstance(features, zarr.Array)
        or not isinstance(scores, zarr.Array | None)
        or not isinstance(spatial, zarr.Array | None)
    ):
        raise StoreError(f"{output!r}: its features, logits or spatial features are not arrays")
    return ExtractResult(
        output=output,
        encoder=encoder,
        feature_extractor=str(attrs.get("feature_extractor", "")),
        resize=str(attrs.get("resize", "")),
        images=int(attrs.get("image_count", rows)),
        rows=rows,
        dim=int(features.shape[1]),
        skipped=tuple((s["name"], s["reason"]) for s in attrs.get("skipped", [])),
        chunks=chunks,
        computed=0,
        present=chunks,
        already_complete=True,
        resumed=False,
        devices=(),
        seconds=seconds,
        check_seconds=0.0,
        classes=int(scores.shape[1]) if scores is not None and LOGITS_ARRAY in attrs else 0,
        spatial=int(spatial.shape[1]) if spatial is not None and SPATIAL_ARRAY in attrs else 0,
        weights_digest=digest,
        weights_status=weights_status(encoder, digest),
        weights_file=str(attrs.get("weights_file", "")),
        encoder_source=str(attrs.get("encoder_source", "shardeval")),
    )


def create_store(
    output: str,
    attrs: dict[str, Any],
    names: list[str],
    dim: int,
    chunk_rows: int,
    classes: int = 0,
    logits_note: str = "",
    spatial: int = 0,
    spatial_note: str = "",
) -> None:
    """The whole store but its chunks, renamed into place in one step (with a ``logits``
    array of ``classes`` columns, described by ``logits_note``, when ``classes``; a
    ``spatial`` array of ``spatial`` columns, described by ``spatial_note``, when
    ``spatial``)."""
    import numpy as np
    import zarr

    with atomic_dir(output) as tmp:
        group = zarr.create_group(tmp, attributes=attrs)
        listed = group.create_array(
            "names",
            shape=(len(names),),
            dtype=str,
            chunks=(min(len(names), _NAMES_CHUNK),),
            dimension_names=("sample",),
        )
        listed[:] = np.asarray(names, dtype=object)
        group.create_array(
            "features",
            shape=(len(names), dim),
            dtype="float32",
            chunks=(chunk_rows, dim),
            fill_value=np.float32("nan"),
            dimension_names=("sample", "feature"),
        )
        if classes:
            # dims (sample, class): readers that pick "the" features of a group by their
            # dimension names keep picking ``features``.
            group.create_array(
                LOGITS_ARRAY,
                shape=(len(names), classes),
                dtype="float32",
                chunks=(chunk_rows, classes),
                fill_value=np.float32("nan"),
                dimension_names=("sample", "class"),
                attributes={"description": logits_note},
            )
        if spatial:
            group.create_array(
                SPATIAL_ARRAY,
                shape=(len(names), spatial),
                dtype="float32",
                chunks=(chunk_rows, spatial),
                fill_value=np.float32("nan"),
                dimension_names=("sample", "spatial"),
                attributes={"description": spatial_note},
            )


def remove_partial_writes(output: str) -> None:
    """Temporary chunk files a killed writer left in our store (zarr writes a chunk to a
    ``*.partial`` sibling and renames it)."""
    for folder, _dirs, files in os.walk(os.path.join(output, "features")):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def is_extraction_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a feature store written by extraction (never raises)."""
    import zarr

    try:
        return zarr.open_group(os.fspath(path), mode="r").attrs.get("format") == FEATURES_FORMAT
    except Exception:  # anything that is not our group is simply not ours
        return False


def check_layout(
    output: str, attrs: dict[str, Any], batch_size: int | None, chunk_rows: int | None
) -> None:
    """Refuse a batch size or chunk rows that an existing store of the same settings cannot
    be finished with. Features do not depend on either, so a finished store is taken whatever
    they are; an unfinished one has its rows laid out in chunks of its own chunk rows (a whole
    number of its batches), so its missing chunks are computed with its own only.

    Raises:
        ExtractionError: an unfinished store started with another batch size or chunk rows,
            naming the value to pass.
    """
    if complete(attrs):
        return
    for value, key in ((batch_size, "batch_size"), (chunk_rows, "chunk_rows")):
        if value is not None and value != attrs.get(key):
            raise ExtractionError(
                f"{output!r} holds an unfinished extraction started with «{key}={attrs.get(key)}» "
                f"(its chunks are laid out by it), not {value}; re-run with "
                f"«{key}={attrs.get(key)}» to finish it, or pass «overwrite=True» to start again"
            )


def unstarted(output: str) -> bool:
    """Our store, unfinished, with no chunk written (a run that failed on its first chunk):
    started afresh, whatever the settings it was created with."""
    import zarr

    from shardeval.pipeline.io.reader import missing_chunks

    group = zarr.open_group(output, mode="r")
    features = group.get("features")
    if complete(dict(group.attrs)) or not isinstance(features, zarr.Array):
        return False
    missing, total = missing_chunks(features)
    return len(missing) == total


def complete(attrs: dict[str, Any]) -> bool:
    return not attrs.get(INCOMPLETE_ATTR) and attrs.get("complete") is True


def existing_settings(output: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """The attributes of our store at ``output``, which must hold the same settings."""
    import zarr

    attrs = dict(zarr.open_group(output, mode="r").attrs)
    diff = ", ".join(
        f"{k} {attrs.get(k)!r} there, {wanted[k]!r} asked"
        for k in SETTING_KEYS
        if attrs.get(k) != wanted[k]
    )
    if not diff:
        return attrs
    recorded = str(attrs.get("weights_digest", ""))
    if recorded.startswith(LEGACY_PREFIX) and all(
        attrs.get(k) == wanted[k] for k in SETTING_KEYS if k != "weights_digest"
    ):
        raise ExtractionError(
            f"{output!r} was extracted before weights were digested with SHA-256 (it records "
            f"{recorded}), so whether these weights made it cannot be told; it is still read "
            "as it is (its weights 'not verified'); pass «overwrite=True» to extract it again"
        )
    if complete(attrs):
        raise ExtractionError(
            f"{output!r} holds a finished extraction with other settings ({diff}); pass "
            "«overwrite=True» to replace it, or choose another output"
        )
    raise ExtractionError(
        f"{output!r} holds an unfinished extraction with other settings ({diff}); re-run with "
        "its settings to finish it, or pass «overwrite=True» to start again"
    )


def new_attrs(
    source: ImageSource,
    feature_extractor: str,
    wanted: dict[str, Any],
    batch_size: int | None,
    chunk_rows: int | None,
) -> dict[str, Any]:
    batch = batch_size or DEFAULT_BATCH_SIZE
    rows_per_chunk = chunk_rows or batch
    if rows_per_chunk % batch:
        raise ExtractionError(
            f"chunk rows {rows_per_chunk} must be a multiple of the batch size {batch}"
        )
    return {
        "format": FEATURES_FORMAT,
        "feature_extractor": feature_extractor,
        **wanted,
        **source.describe(),
        "rows": len(source),
        "batch_size": batch,
        "chunk_rows": rows_per_chunk,
        "skipped": [],
        "torch_version": importlib.metadata.version("torch"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        INCOMPLETE_ATTR: INCOMPLETE_NOTE,
        "complete": False,
    }


def kept(source: ImageSource, attrs: dict[str, Any]) -> list[int]:
    """Positions in the source of the images the store holds, in order."""
    skipped = {s["name"] for s in attrs.get("skipped", [])}
    keep = [i for i, name in enumerate(source.names) if name not in skipped]
    if len(keep) != attrs.get("rows"):
        raise StoreError(
            f"the store records {attrs.get('rows')} rows but the source lists {len(keep)} "
            "images to keep; pass «overwrite=True» to start again"
        )
    return keep
