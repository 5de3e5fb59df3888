"""Running evaluation jobs (:mod:`shardeval.workflows.jobfile` reads them). Resumable and
idempotent: each finished entry is committed to the history at once, and a re-run computes, per
entry, only the metrics whose results are not already there from the same inputs and options (the
rest of the entry's results stay as they are). Image inputs are extracted first, into a feature
cache (:mod:`shardeval.pipeline.images.cache`) beside the history, keyed by what decides their
features (not the batch size); the key is also the input's fingerprint in the history.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardeval._words import marked
from shardeval.api.evaluate import Evaluation, Reference, Session
from shardeval.pipeline.errors import ShardevalError
from shardeval.pipeline.io.provenance import now_iso
from shardeval.pipeline.metrics import Metric
from shardeval.workflows.history import History, HistoryRow
from shardeval.workflows.jobfile import Job, JobError, load_job
from shardeval.workflows.madeby import (
    ProvenanceWarning,
    listed,
    made_of,
    record_of,
    warnings_of,
)

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine, Progress
    from shardeval.pipeline.images.extract import Extraction
    from shardeval.pipeline.images.sources import ImageSource
    from shardeval.pipeline.io.stores import FeatureSource

__all__ = [
    "JobError",
    "JobReference",
    "ProvenanceWarning",
    "RunSummary",
    "load_job",
    "reference_of",
    "run_job",
]


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


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        computed: entries for which at least one metric was computed.
        skipped: entries whose every metric was already in the history.
        metrics: per computed entry, the metrics computed for it (the others were kept).
        seconds: wall time of the run.
    """

    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def _moments_settings(job: Job) -> tuple[Any, ...]:
    """The settings that move the reference statistics' last digits, as the job file sets
    them (none: the cache of a file that sets none keeps its name)."""
    keys = ("precision", "shard_rows", "split_every")
    return tuple(sorted((k, job.settings[k]) for k in keys if k in job.settings))


@dataclass(frozen=True)
class _Prepared:
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


def _prepare(job: Job) -> _Prepared:
    """Open every store (complete, readable), list every image source, find the encoder's
    weights, and check one feature dimension and the history, before anything is computed."""
    from shardeval.pipeline.images.cache import cache_key
    from shardeval.pipeline.images.extract import plan_extraction
    from shardeval.pipeline.images.sources import open_images
    from shardeval.pipeline.io.fingerprint import listing_digest
    from shardeval.pipeline.io.statsio import load_stats
    from shardeval.pipeline.io.stores import open_features

    compared = any(m.needs_reference for m in job.metrics.values())
    uses_images = (compared and job.reference_images is not None) or any(
        e.images for e in job.entries
    )
    settings = {k: v for k, v in job.extract.items() if k not in ("batch_size", "skip_bad")}
    extraction = plan_extraction(**settings) if uses_images else None
    skip_bad = bool(job.extract.get("skip_bad"))
    image_dim = 0 if extraction is None else extraction.dim
    if extraction is not None and image_dim is None:  # a user's encoder: one image tells
        from shardeval.pipeline.images.extract import feature_dim

        first = job.reference_images if compared and job.reference_images is not None else None
        first = first or next(e.store for e in job.entries if e.images)
        image_dim = feature_dim(extraction, open_images(first))

    def image_digest(source: ImageSource) -> str:
        if extraction is None:  # unreachable: image inputs plan an extraction
            raise JobError(f"{job.path}: no extraction settings for {source.location!r}")
        _check_outside(job, source)
        return cache_key(source, extraction, skip_bad=skip_bad)

    reference_images = None
    d: int | None = None
    reference_digest = reference_listing = ""
    if not compared:
        pass  # every metric measures the entries alone: a reference, if given, is not read
    elif job.reference_stats is not None:
        d = load_stats(job.reference_stats).d
        reference_listing = listing_digest(job.reference_stats)
        reference_digest = _digest(reference_listing)
    elif job.reference_store is not None:
        d = open_features(job.reference_store, array_name=job.array).d
        reference_listing = listing_digest(job.reference_store)
        reference_digest = _digest(reference_listing, job.array, *_moments_settings(job))
    elif job.reference_images is not None and extraction is not None:
        reference_images = open_images(job.reference_images)
        d, reference_digest = image_dim, image_digest(reference_images)
        if _moments_settings(job):
            reference_digest = _digest(reference_digest, *_moments_settings(job))
    else:
        raise JobError(f"{job.path}: [reference] needs 'store', 'stats' or 'images'")
    sources = {
        e.name: open_features(e.store, array_name=job.array, shard_rows=job.shard_rows)
        for e in job.entries
        if not e.images
    }
    images = {e.name: open_images(e.store) for e in job.entries if e.images}
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
    History(job.history).check(d)
    if "://" in _reference_location(job):
        reference_listing = ""  # looked at again only where that is cheap: local files
    return _Prepared(
        sources,
        images,
        digests,
        d,
        reference_digest,
        reference_images,
        extraction,
        reference_listing,
    )


#: Attribute of a cache beside the history: the digest of the input bytes it was computed from
#: (the feature cache's entries record it under the same name).
CONTENT_ATTR = "content_digest"


def _cache_root(job: Job) -> str:
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
    if (os.path.realpath(_cache_root(job)) + os.sep).startswith(images):
        raise JobError(
            f"{job.path}: the history {job.history!r} is inside the images "
            f"{source.location!r}, and writing it and its caches there would change them; "
            "put the history elsewhere"
        )


def _identity(extraction: Extraction) -> tuple[str, str, str]:
    """What, besides the images, decides extracted features (the batch size does not)."""
    return (extraction.encoder, extraction.digest, extraction.resize)


def _extracted(
    job: Job,
    prepared: _Prepared,
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
    from shardeval.pipeline.core.ieee_fp32 import set_in_this_process
    from shardeval.pipeline.images.cache import fill_cache

    extraction = prepared.extraction
    if extraction is None:  # unreachable: image inputs plan an extraction
        raise JobError(f"{job.path}: no extraction settings for {source.location!r}")
    set_in_this_process(engine, job.device)
    try:
        cached = fill_cache(
            source,
            extraction,
            cache_root=_cache_root(job),
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


def _reference_location(job: Job) -> str:
    return job.reference_stats or job.reference_store or job.reference_images or ""


def _entry_bytes(location: str, images: ImageSource | None) -> str:
    """The digest of an input's bytes (``--verify``): of the files a source of images is read
    from, or of every file of a store."""
    from shardeval.pipeline.images.cache import images_digest
    from shardeval.pipeline.io.fingerprint import content_digest

    return images_digest(images) if images is not None else content_digest(location)


def _reference_bytes(job: Job, prepared: _Prepared) -> str:
    return _entry_bytes(_reference_location(job), prepared.reference_images)


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
    from shardeval.pipeline.fid.gaussian import as_gaussian
    from shardeval.pipeline.fid.moments import feature_moments
    from shardeval.pipeline.io.atomic import OutputExistsError
    from shardeval.pipeline.io.statsio import is_stats, load_stats, save_stats, stats_provenance
    from shardeval.pipeline.io.stores import open_features

    if job.reference_stats:
        stats = load_stats(job.reference_stats)
        statistics = as_gaussian(stats, job.reference_stats)
        return JobReference(Reference(statistics=statistics), digest, job.reference_stats)
    if source is None:
        source = open_features(
            job.reference_store or "", array_name=job.array, shard_rows=job.shard_rows
        )
    where = job.reference_images or job.reference_store or source.location
    cache = os.path.join(os.path.dirname(os.path.abspath(job.history)), f"reference-{digest}.zarr")
    stale = False
    if os.path.exists(cache):
        if not is_stats(cache):
            raise JobError(f"{cache!r} exists and is not reference statistics; move it aside")
        if content is None or stats_provenance(cache).get(CONTENT_ATTR) == content:
            log(f"reference statistics from cache {cache}")
            statistics = as_gaussian(load_stats(cache), where)
            return JobReference(Reference(source, statistics), digest, where)
        stale = True
        log(f"{cache}: computed from other bytes of {where} (--verify); again")
    log(f"computing reference statistics of {where}")
    ((moments, _),) = feature_moments(
        [source],
        engine=engine,
        device=job.device,
        backend=job.backend,
        precision=job.settings.get("precision", "fp32"),
        split_every=job.settings.get("split_every"),
    )
    try:
        provenance = {**source.describe(), "fingerprint": digest, CONTENT_ATTR: content}
        save_stats(cache, moments, provenance, overwrite=stale)
    except (OutputExistsError, OSError):
        # Another run of this job wrote the cache meanwhile: the same input (its digest names
        # the file), so the same statistics. Anything else there is still an error.
        if not (is_stats(cache) and stats_provenance(cache).get("fingerprint") == digest):
            raise
        log(f"reference statistics {cache} written meanwhile by another run")
    return JobReference(Reference(source, as_gaussian(moments, where)), digest, where)


def run_job(
    job: Job,
    *,
    engine: Engine | None = None,
    force: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> RunSummary:
    """Evaluate every entry not yet in the history, committing each as soon as it is done.

    Args:
        job: from :func:`load_job`.
        engine: where to run (default: the threaded scheduler).
        force: compute entries already in the history again.
        verify: decide "already done" from the stores' bytes too, not only their listings
            (reads every entry once; recomputes an entry whose recorded bytes differ or were
            never recorded).
        progress: called with (shards done, shards total) per pass.
        log: receives one line per entry.

    Raises:
        JobError, HistoryError, StoreError, ...: before any compute when a store or the
            history cannot be used; during the run when an entry fails (entries committed
            before it stay committed).
    """
    from shardeval.pipeline.core.engine import Engine

    start = time.perf_counter()
    engine = engine or Engine()
    prepared = _prepare(job)
    history = History(job.history)
    compared = any(m.needs_reference for m in job.metrics.values())
    # --verify: bytes decide, the reference's as well as each entry's.
    reference_content = _reference_bytes(job, prepared) if verify and compared else None
    features = None
    if prepared.reference_images is not None:
        features = _extracted(
            job, prepared, prepared.reference_images, engine, progress, log, reference_content
        )
    if compared:
        reference = reference_of(
            job, engine, prepared.reference_digest, log, features, reference_content
        )
    else:  # every metric measures the entries alone
        reference = JobReference(None, "", "")
        if _reference_location(job):
            log(f"reference {_reference_location(job)} not read: no metric of the job uses one")
    summary = RunSummary()
    evaluation = Evaluation(list(job.metrics.values()), run_options=job.run_options)
    with evaluation.session(engine, progress=progress) as session:
        real = None if reference.reference is None else session.reference(reference.reference)
        _run_entries(
            job,
            prepared,
            history,
            session,
            real,
            reference,
            summary,
            reference_content,
            log,
            verify=verify,
            force=force,
        )
    summary.seconds = time.perf_counter() - start
    return summary


def _run_entries(
    job: Job,
    prepared: _Prepared,
    history: History,
    session: Session,
    real: Any,
    reference: JobReference,
    summary: RunSummary,
    reference_content: str | None,
    log: Callable[[str], None],
    *,
    verify: bool = False,
    force: bool = False,
) -> None:
    """Each entry not yet in the history, evaluated against ``real`` and committed
    (``reference_content``: the reference's bytes' digest, with ``verify``)."""
    from shardeval.pipeline.io.fingerprint import listing_digest

    engine, progress = session.run.engine, session.run.progress
    declarations = job.declarations()
    digests = {name: job.metric_digest(name) for name in job.metrics}
    engine_text = json.dumps(engine.describe(), sort_keys=True)
    compared = reference.reference is not None
    reference_made = _reference_made_by(job, reference) if compared else {}
    made_rows: list[dict[str, Any]] = []  # how this run's entries were made, for its warnings
    for i, entry in enumerate(job.entries, start=1):
        entry_bytes = _entry_bytes(entry.store, prepared.images.get(entry.name)) if verify else None
        listings = {"reference_listing": prepared.reference_listing}
        if prepared.reference_images is not None:
            listings["reference_images_listing"] = prepared.reference_images.fingerprint
        if entry.images:
            digest = prepared.digests[entry.name]
            settings = _identity(prepared.extraction) if prepared.extraction else ()
            listings["images_listing"] = prepared.images[entry.name].fingerprint
        else:
            digest = listing_digest(entry.store)
            settings = ()
            if "://" not in entry.store:  # looked at again only where that is cheap
                listings["store_listing"] = digest
        content = _digest(entry_bytes, *settings, reference_content) if verify else ""
        row = HistoryRow(
            name=entry.name,
            store=entry.store,
            step=-1 if entry.step is None else entry.step,
            tags=",".join(entry.tags),
            fingerprint=digest,
            options=job.options_digest,
            reference=reference.location,
            reference_fingerprint=reference.fingerprint,
            job=job.name,
            engine=engine_text,
            seconds=0.0,
            created="",
            content_digest=content,
        )
        done = set() if force else history.current(row, digests, check_content=verify)
        wanted = {name: metric for name, metric in job.metrics.items() if name not in done}
        if not wanted:
            summary.skipped.append(entry.name)
            log(f"[{i}/{len(job.entries)}] {entry.name}: already in the history, skipped")
            continue
        t0 = time.perf_counter()
        source = (
            _extracted(
                job, prepared, prepared.images[entry.name], engine, progress, log, entry_bytes
            )
            if entry.images
            else prepared.sources[entry.name]
        )
        report = session.measure(real, source, list(wanted.values()))
        values = {k: v for outputs in report.results.values() for k, v in outputs.items()}
        made_by = _made_by(source)
        row = HistoryRow(
            **{
                **vars(row),
                "seconds": time.perf_counter() - t0,
                "created": now_iso(),
                "made_by": json.dumps(made_by, sort_keys=True),
                "reference_made_by": json.dumps(reference_made, sort_keys=True),
            }
        )
        made_rows.append(
            {"name": entry.name, "features_made_by": made_by, "reference_made_by": reference_made}
        )
        computed = {n: digests[n] for n in wanted}
        history.append(row, values, declarations, prepared.d, computed, made_by, listings)
        summary.computed.append(entry.name)
        summary.metrics[entry.name] = list(wanted)
        shown = ", ".join(f"{k} {float(values[k]):.6g}" for k in _headlines(wanted))
        kept = [name for name in job.metrics if name in done]
        already = f" ({', '.join(kept)} already in the history)" if kept else ""
        log(f"[{i}/{len(job.entries)}] {entry.name}: {shown}{already}")
    for warned in _run_warnings(made_rows, reference_made if compared else None):
        warnings.warn(warned, ProvenanceWarning, stacklevel=2)


def _reference_made_by(job: Job, reference: JobReference) -> dict[str, Any]:
    """How the reference's features were made, as the history records it per entry (see
    :func:`_made_by`); statistics say it in their attributes, a reference batch by what it
    is."""
    rows = None if reference.reference is None else reference.reference.rows
    if rows is not None:
        return _made_by(rows)
    if job.reference_stats:
        from shardeval.pipeline.io.statsio import stats_provenance

        return record_of(stats_provenance(job.reference_stats))
    return {}


def _run_warnings(rows: list[dict[str, Any]], reference: dict[str, Any] | None) -> list[str]:
    """What a run warns of: weights that are not the published file (one warning per file,
    naming the reference and the entries made with it), entries of one series made
    differently, and entries made differently from their reference."""
    from shardeval.pipeline.images.provenance import weights_warning

    sides = ([("", reference)] if reference else []) + [
        (str(row["name"]), row["features_made_by"]) for row in rows
    ]
    same: dict[tuple[Any, ...], list[str]] = {}
    for name, record in sides:
        made = made_of(record)
        if made is not None:
            way = (made.encoder, made.weights_digest, made.weights_status, made.weights_file)
            same.setdefault(way, []).append(name)
    out = []
    for names in same.values():
        entries = [n for n in names if n]
        roles = ["the reference"] if "" in names else []
        if entries:
            roles.append(f"entr{'y' if len(entries) == 1 else 'ies'} {listed(entries)}")
        warned = weights_warning(" and ".join(roles), made_of(dict(sides)[names[0]]))
        if warned is not None:
            out.append(warned)
    return out + warnings_of(rows)


def _made_by(source: FeatureSource) -> dict[str, Any]:
    """How an entry's features were made, as the report lists it: an extraction's encoder,
    resize and weights digest, or the settings of ``shardeval synth``; {} when the store does
    not say (features of other tools)."""
    from shardeval.pipeline.io.synthetic import made_by

    made = source.describe().get("extraction", {})
    extracted = {k: made[k] for k in ("encoder", "resize", "weights_digest") if k in made}
    return extracted or made_by(source.attrs, tuple(source.array.shape)) or {}


def _headlines(metrics: dict[str, Metric]) -> list[str]:
    """Each metric's headline result (its first output)."""
    return [metric.outputs[0].name for metric in metrics.values()]
