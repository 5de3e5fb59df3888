"""Running evaluation jobs (:mod:`shardeval.workflows.jobfile` reads them). Resumable and
idempotent: each finished entry is committed to the history at once, and a re-run computes, per
entry, only the metrics whose results are not already there from the same inputs and options (the
rest of the entry's results stay as they are). Each entry is evaluated through the API
(:class:`shardeval.api.evaluate.Evaluation`), as every command evaluates; what the run reads is
checked and opened first (:mod:`shardeval.workflows.job_inputs`): image inputs are extracted
into a feature cache beside the history, keyed by what decides their features (not the batch
size); the key is also the input's fingerprint in the history.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardeval.api.evaluate import Evaluation, Session
from shardeval.pipeline.io.provenance import now_iso
from shardeval.pipeline.metrics import Metric
from shardeval.workflows.history import History, HistoryRow
from shardeval.workflows.job_inputs import (
    JobReference,
    Prepared,
    digest_of,
    entry_bytes,
    extracted,
    identity,
    prepare,
    reference_bytes,
    reference_location,
    reference_of,
)
from shardeval.workflows.job_per_sample import (
    claim_groups,
    kept_group,
    per_row_metrics,
    with_per_sample,
    write_group,
)
from shardeval.workflows.job_spec import Job, JobError
from shardeval.workflows.jobfile import load_job
from shardeval.workflows.madeby import (
    ProvenanceWarning,
    listed,
    made_of,
    record_of,
    warnings_of,
)

if TYPE_CHECKING:
    from shardeval.api.engines import Engine, Progress

__all__ = [
    "JobError",
    "JobReference",
    "ProvenanceWarning",
    "RunSummary",
    "load_job",
    "reference_of",
    "run_job",
]


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
    from shardeval.api import engines

    start = time.perf_counter()
    engine = engine or engines.engine()
    prepared = prepare(job)
    inputs = [e.store for e in job.entries] + [reference_location(job), job.test_store or ""]
    claim_groups(job, inputs)
    history = History(job.history)
    compared = any(m.needs_reference for m in job.metrics.values())
    # --verify: bytes decide, the reference's as well as each entry's.
    reference_content = reference_bytes(job, prepared) if verify and compared else None
    features = None
    if prepared.reference_images is not None:
        features = extracted(
            job, prepared, prepared.reference_images, engine, progress, log, reference_content
        )
    if compared:
        reference = reference_of(
            job, engine, prepared.reference_digest, log, features, reference_content
        )
    else:  # every metric measures the entries alone
        reference = JobReference(None, "", "")
        if reference_location(job):
            log(f"reference {reference_location(job)} not read: no metric of the job uses one")
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
    prepared: Prepared,
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
    from shardeval.api.stores import features_made_by, listing_fingerprint

    engine, progress = session.run.engine, session.run.progress
    declarations = job.declarations()
    # The results of a metric that reads the test set are of that test set too.
    digests = {
        name: digest_of(job.metric_digest(name), prepared.test_digest)
        if metric.needs_test
        else job.metric_digest(name)
        for name, metric in job.metrics.items()
    }
    test_content = entry_bytes(job.test_store, None) if verify and job.test_store else None
    test_made = {} if prepared.test is None else features_made_by(prepared.test)
    engine_text = json.dumps(engine.describe(), sort_keys=True)
    compared = reference.reference is not None
    reference_made = _reference_made_by(job, reference) if compared else {}
    made_rows: list[dict[str, Any]] = []  # how this run's entries were made, for its warnings
    for i, entry in enumerate(job.entries, start=1):
        read = entry_bytes(entry.store, prepared.images.get(entry.name)) if verify else None
        listings = {"reference_listing": prepared.reference_listing}
        if prepared.reference_images is not None:
            listings["reference_images_listing"] = prepared.reference_images.fingerprint
        if entry.images:
            digest = prepared.digests[entry.name]
            settings = identity(prepared.extraction) if prepared.extraction else ()
            listings["images_listing"] = prepared.images[entry.name].fingerprint
        else:
            digest = listing_fingerprint(entry.store)
            settings = ()
            if "://" not in entry.store:  # looked at again only where that is cheap
                listings["store_listing"] = digest
        held_out = [test_content] if test_content else []
        content = digest_of(read, *settings, reference_content, *held_out) if verify else ""
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
            test=job.test_store or "",
            test_fingerprint=prepared.test_digest,
            test_made_by=json.dumps(test_made, sort_keys=True) if test_made else "",
        )
        done = set() if force else history.current(row, digests, check_content=verify)
        wanted = {name: metric for name, metric in job.metrics.items() if name not in done}
        wanted = with_per_sample(job, entry, wanted)
        if not wanted:
            summary.skipped.append(entry.name)
            log(f"[{i}/{len(job.entries)}] {entry.name}: already in the history, skipped")
            continue
        t0 = time.perf_counter()
        source = (
            extracted(job, prepared, prepared.images[entry.name], engine, progress, log, read)
            if entry.images
            else prepared.sources[entry.name]
        )
        reads_test = any(m.needs_test for m in wanted.values())
        test = prepared.test if reads_test else None
        report = session.measure(real, source, list(wanted.values()), test=test)
        group = ""
        if job.per_sample is not None and per_row_metrics(job) & set(wanted):
            group = write_group(job, entry, report)
            log(f"[{i}/{len(job.entries)}] {entry.name}: per-sample values -> {group}")
        per_row = {o.name for m in wanted.values() for o in m.outputs if o.per_row}
        values = {
            k: v
            for outputs in report.results.values()
            for k, v in outputs.items()
            if k not in per_row  # as long as the entry: not a history's
        }
        made_by = features_made_by(source)
        row = HistoryRow(
            **{
                **vars(row),
                "seconds": time.perf_counter() - t0,
                "created": now_iso(),
                "made_by": json.dumps(made_by, sort_keys=True),
                "reference_made_by": json.dumps(reference_made, sort_keys=True),
                "per_sample": group or kept_group(job, entry),
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
    :func:`shardeval.api.stores.features_made_by`); statistics say it in their attributes, a
    reference batch by what it is."""
    from shardeval.api.stores import features_made_by, statistics_provenance

    rows = None if reference.reference is None else reference.reference.rows
    if rows is not None:
        return features_made_by(rows)
    if job.reference_stats:
        return record_of(statistics_provenance(job.reference_stats))
    return {}


def _run_warnings(rows: list[dict[str, Any]], reference: dict[str, Any] | None) -> list[str]:
    """What a run warns of: weights that are not the published file (one warning per file,
    naming the reference and the entries made with it), entries of one series made
    differently, and entries made differently from their reference."""
    from shardeval.api.provenance import weights_warning

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


def _headlines(metrics: dict[str, Metric]) -> list[str]:
    """Each metric's headline result (its first output)."""
    return [metric.outputs[0].name for metric in metrics.values()]
