"""What a job's run reads, checked before anything is computed: every store opened (complete,
readable), every source of images listed, the encoder's weights found, one feature dimension,
the history usable; then, as the run needs them, image inputs extracted into a feature cache
beside the history (:func:`shardeval.api.images.feature_cache`), keyed by what decides their
features (not the batch size; the key is also the input's fingerprint in the history), and
the reference's statistics read or computed once and kept beside the history under the
input's digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardeval._words import marked
from shardeval.api.evaluate import Reference
from shardeval.pipeline.errors import ShardevalError
from shardeval.workflows.history import History
from shardeval.workflows.job_spec import Job, JobError
from shardeval.workflows.madeby import ProvenanceWarning

if TYPE_CHECKING:
    from shardeval.api.engines import Engine, Progress
    from shardeval.api.images import Extraction, ImageSource
    from shardeval.api.stores import FeatureSource

#: Attribute of a cache beside the history: the digest of the input bytes it was computed from
#: (the feature cache's entries record it under the same name).
CONTENT_ATTR = "content_digest"


@dataclass(frozen=True)
class JobReference:
    """A job's reference: its rows and statistics as the evaluation reads them, where it is,
    and its digest (recorded with every result).

    Attributes:
        reference: rows and statistics (None: no metric of the job compares with one).
        fingerprint: digest of the reference (and the array read from it).
        location: where it is.
    """

    reference: Reference | None
    fingerprint: str
    location: str


@dataclass(frozen=True)
class Prepared:
    """What a run checked before computing: the opened stores, the listed image sources, the
    extraction settings, and the digest of each input (images: with the settings)."""

    sources: dict[str, FeatureSource]
    images: dict[str, ImageSource]
    digests: dict[str, str]
    d: int
    reference_digest: str
    reference_images: ImageSource | None
    extraction: Extraction | None
    reference_listing: str = ""
    #: The held-out test set, opened (None: the job names none), and its digest.
    test: FeatureSource | None = None
    test_digest: str = ""


def digest_of(*parts: Any) -> str:
    """A digest of JSON-able parts (an input's, with what decides its results)."""
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def _moments_settings(job: Job) -> tuple[Any, ...]:
    """The settings that move the reference statistics' last digits, as the job file sets
    them (none: the cache of a file that sets none keeps its name)."""
    keys = ("precision", "shard_rows", "split_every")
    return tuple(sorted((k, job.settings[k]) for k in keys if k in job.settings))


def prepare(job: Job) -> Prepared:
    """Open every store (complete, readable), list every image source, find the encoder's
    weights, and check one feature dimension and the history, before anything is computed."""
    from shardeval.api.images import (
        extraction_plan,
        feature_cache_key,
        features_per_image,
        open_image_source,
    )
    from shardeval.api.stores import listing_fingerprint, load_statistics, open_store

    compared = any(m.needs_reference for m in job.metrics.values())
    uses_images = (compared and job.reference_images is not None) or any(
        e.images for e in job.entries
    )
    settings = {k: v for k, v in job.extract.items() if k not in ("batch_size", "skip_bad")}
    extraction = extraction_plan(**settings) if uses_images else None
    skip_bad = bool(job.extract.get("skip_bad"))
    image_dim = 0 if extraction is None else extraction.dim
    if extraction is not None and image_dim is None:  # a user's encoder: one image tells
        first = job.reference_images if compared and job.reference_images is not None else None
        first = first or next(e.store for e in job.entries if e.images)
        image_dim = features_per_image(extraction, open_image_source(first))

    def image_digest(source: ImageSource) -> str:
        if extraction is None:  # unreachable: image inputs plan an extraction
            raise JobError(f"{job.path}: no extraction settings for {source.location!r}")
        _check_outside(job, source)
        return feature_cache_key(source, extraction, skip_bad=skip_bad)

    reference_images = None
    d: int | None = None
    reference_digest = reference_listing = ""
    if not compared:
        pass  # every metric measures the entries alone: a reference, if given, is not read
    elif job.reference_stats is not None:
        d = load_statistics(job.reference_stats).d
        reference_listing = listing_fingerprint(job.reference_stats)
        reference_digest = digest_of(reference_listing)
    elif job.reference_store is not None:
        d = open_store(job.reference_store, array=job.array).d
        reference_listing = listing_fingerprint(job.reference_store)
        reference_digest = digest_of(reference_listing, job.array, *_moments_settings(job))
    elif job.reference_images is not None and extraction is not None:
        reference_images = open_image_source(job.reference_images)
        d, reference_digest = image_dim, image_digest(reference_images)
        if _moments_settings(job):
            reference_digest = digest_of(reference_digest, *_moments_settings(job))
    else:
        raise JobError(f"{job.path}: [reference] needs 'store', 'stats' or 'images'")
    sources = {
        e.name: open_store(e.store, array=job.array, shard_rows=job.shard_rows)
        for e in job.entries
        if not e.images
    }
    images = {e.name: open_image_source(e.store) for e in job.entries if e.images}
    digests = {name: image_digest(source) for name, source in images.items()}
    dims = {name: s.d for name, s in sources.items()}
    dims.update({name: image_dim for name in images if image_dim is not None})
    if d is None:  # no reference: the entries agree among themselves
        d = dims[job.entries[0].name]
        other = {name: dim for name, dim in dims.items() if dim != d}
        if other:
            raise JobError(
                f"{job.path}: entry {job.entries[0].name!r} has d={d} columns but entries "
                f"{other} differ; give arrays of one kind"
            )
    other = {name: dim for name, dim in dims.items() if dim != d}
    if other:
        raise JobError(
            f"{job.path}: the reference has d={d} features but entries {other} differ; "
            "compare features of one model"
        )
    test = test_digest = None
    if job.test_store is not None:
        test = open_store(job.test_store, array=job.array, shard_rows=job.shard_rows)
        if test.d != d:
            raise JobError(
                f"{job.path}: the test set {job.test_store!r} has d={test.d} features, the "
                f"reference and entries d={d}; compare features of one model"
            )
        test_digest = digest_of(listing_fingerprint(job.test_store), job.array)
    History(job.history).check(d)
    if "://" in reference_location(job):
        reference_listing = ""  # looked at again only where that is cheap: local files
    return Prepared(
        sources,
        images,
        digests,
        d,
        reference_digest,
        reference_images,
        extraction,
        reference_listing,
        test,
        test_digest or "",
    )


def cache_root(job: Job) -> str:
    """The folder of the job's caches: the history's."""
    return os.path.dirname(os.path.abspath(job.history))


def _check_outside(job: Job, source: ImageSource) -> None:
    """Refuse, before any compute, a history (and so the caches beside it) at or inside a
    folder of images: writing it would change them.

    Raises:
        JobError: naming both.
    """
    if not os.path.isdir(source.location):
        return  # a file or a glob of files: nothing is written inside it
    images = os.path.realpath(source.location).rstrip(os.sep) + os.sep
    if (os.path.realpath(cache_root(job)) + os.sep).startswith(images):
        raise JobError(
            f"{job.path}: the history {job.history!r} is inside the images "
            f"{source.location!r}, and writing it and its caches there would change them; "
            "put the history elsewhere"
        )


def identity(extraction: Extraction) -> tuple[str, str, str]:
    """What, besides the images, decides extracted features (the batch size does not)."""
    return (extraction.encoder, extraction.digest, extraction.resize)


def extracted(
    job: Job,
    prepared: Prepared,
    source: ImageSource,
    engine: Engine,
    progress: Progress | None,
    log: Callable[[str], None],
    content: str | None = None,
) -> FeatureSource:
    """The features of an image source, from the feature cache beside the history:
    ``features-<key>.zarr``, extracted, finished (a killed extraction resumes) or reused.

    ``content`` (``--verify``): the digest of the images' bytes. A cache that recorded other
    bytes, or none, is extracted again: an image rewritten with its size and time kept leaves
    the listing, and so the key, as it was."""
    from shardeval.api.images import feature_cache

    extraction = prepared.extraction
    if extraction is None:  # unreachable: image inputs plan an extraction
        raise JobError(f"{job.path}: no extraction settings for {source.location!r}")
    try:
        cached = feature_cache(
            source,
            extraction,
            cache_root=cache_root(job),
            batch_size=job.extract.get("batch_size"),
            device=job.device,
            skip_bad=bool(job.extract.get("skip_bad")),
            engine=engine,
            progress=progress,
            content=content,
            log=log,
            claim_root=False,  # the history's folder, which holds the history and its caches
        )
        opened = cached.open()
    except ShardevalError as exc:
        if "«skip_bad" not in marked(exc):
            raise
        # A job takes skip_bad in its [extract] table, not as an option of `run`.
        words = marked(exc).replace("«skip_bad=True»", "skip_bad = true in [extract]")
        raise JobError(f"{job.path}: {words.replace('«skip_bad»', '[extract] skip_bad')}") from exc
    if cached.stale:
        log(
            f"{cached.path}: extracted again in its place (made from other bytes of "
            f"{source.location} (--verify), or before it held the logits)"
        )
    if cached.reused:
        log(f"features of {source.location} from cache {cached.path}")
    else:
        log(
            f"extracted {cached.extraction.rows:,} images of {source.location} "
            f"({extraction.encoder}, {cached.extraction.computed} chunks) -> {cached.path}"
        )
    skipped = cached.extraction.skipped
    if skipped:
        more = f"; and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        warnings.warn(
            f"{len(skipped)} image(s) of {source.location} left out as unreadable ([extract] "
            f"skip_bad): {skipped[0][1]}{more}",
            ProvenanceWarning,
            stacklevel=2,
        )
    return opened


def reference_location(job: Job) -> str:
    """Where the job's reference is ("" without one)."""
    return job.reference_stats or job.reference_store or job.reference_images or ""


def entry_bytes(location: str, images: ImageSource | None) -> str:
    """The digest of an input's bytes (``--verify``): of the files a source of images is read
    from, or of every file of a store."""
    from shardeval.api.images import images_content_fingerprint
    from shardeval.api.stores import content_fingerprint

    if images is not None:
        return images_content_fingerprint(images)
    return content_fingerprint(location)


def reference_bytes(job: Job, prepared: Prepared) -> str:
    """The digest of the reference's bytes (``--verify``)."""
    return entry_bytes(reference_location(job), prepared.reference_images)


def reference_of(
    job: Job,
    engine: Engine,
    digest: str,
    log: Callable[[str], None],
    source: FeatureSource | None = None,
    content: str | None = None,
) -> JobReference:
    """The reference statistics: read from a stats file, or computed once from a store (or
    ``source``, the features extracted from reference images) and cached beside the history
    under the input's digest (a changed input has a new digest, so it is recomputed, never
    silently reused)."""
    from shardeval.api.stores import (
        is_statistics_file,
        load_statistics,
        open_store,
        statistics_provenance,
        write_statistics,
    )

    if job.reference_stats:
        statistics = load_statistics(job.reference_stats)
        return JobReference(Reference(statistics=statistics), digest, job.reference_stats)
    if source is None:
        source = open_store(job.reference_store or "", array=job.array, shard_rows=job.shard_rows)
    where = job.reference_images or job.reference_store or source.location
    cache = os.path.join(cache_root(job), f"reference-{digest}.zarr")
    stale = False
    if os.path.exists(cache):
        if not is_statistics_file(cache):
            raise JobError(f"{cache!r} exists and is not reference statistics; move it aside")
        if content is None or statistics_provenance(cache).get(CONTENT_ATTR) == content:
            log(f"reference statistics from cache {cache}")
            return JobReference(Reference(source, load_statistics(cache, where)), digest, where)
        stale = True
        log(f"{cache}: computed from other bytes of {where} (--verify); again")
    log(f"computing reference statistics of {where}")
    statistics = write_statistics(
        source,
        cache,
        fingerprint=digest,
        engine=engine,
        recorded={CONTENT_ATTR: content},
        overwrite=stale,
        where=where,
        device=job.device,
        backend=job.backend,
        precision=job.settings.get("precision", "fp32"),
        split_every=job.settings.get("split_every"),
        log=log,
    )
    return JobReference(Reference(source, statistics), digest, where)
