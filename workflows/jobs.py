"""Evaluation jobs from a TOML file: a reference, entries (checkpoints), metrics, an engine and
a history. Resumable and idempotent: each finished entry is committed to the history at once,
and a re-run skips entries whose inputs and options are already there.

.. code-block:: toml

    [job]
    name = "nightly"
    history = "runs/history.zarr"
    array = "features"                # optional: the variable inside group stores

    [reference]
    store = "data/real.zarr"          # or: stats = "real-stats.zarr" (or a .npz)

    [engine]                          # optional; default: threaded scheduler in-process
    scheduler = "tcp://10.0.0.5:8786" # or: cluster = "cluster/slurm.yaml"
    device = "auto"                   # auto | cpu | cuda
    backend = "auto"                  # auto | triton | torch

    [[entries]]
    glob = "checkpoints/*/features.zarr"   # name: what * matched; step: its last digits

    [[entries]]
    name = "final"
    store = "final/features.zarr"
    step = 100000
    tags = ["release"]

    [metrics.fid]
    [metrics.nll_gaussian]
    nonfinite = "drop"

Everything is checked before any compute: the file (keys, types, metric options), every store
(complete, readable, one feature dimension) and the history (readable, same dimension).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import ShardevalError
from pipeline.metrics import METRICS, Context, Metric, MetricOptionError, Reference
from pipeline.options import BACKENDS, DEVICES
from workflows.history import History, HistoryRow
from workflows.provenance import now_iso

if TYPE_CHECKING:
    from pipeline.engine import Engine, Progress
    from pipeline.sources import FeatureSource


class JobError(ShardevalError):
    """A job file is wrong: unknown key or metric, wrong type, missing store, empty glob."""


@dataclass(frozen=True)
class Entry:
    name: str
    store: str
    step: int | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    path: str
    name: str
    history: str
    entries: tuple[Entry, ...]
    metrics: dict[str, Metric]
    reference_store: str | None = None
    reference_stats: str | None = None
    scheduler: str | None = None
    cluster: str | None = None
    device: str = "auto"
    backend: str = "auto"
    array: str | None = None

    @property
    def options_digest(self) -> str:
        """Identifies everything besides the stores that changes a value: the metrics and their
        options, and the array read from group stores. An entry computed under other options
        is computed again."""
        text = json.dumps(
            {
                "metrics": {k: m.options for k, m in sorted(self.metrics.items())},
                "array": self.array,
            },
            sort_keys=True,
        )
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def declarations(self) -> dict[str, Any]:
        return {name: metric.declaration() for name, metric in self.metrics.items()}


@dataclass
class RunSummary:
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


_SECTIONS: dict[str, set[str] | None] = {
    "job": {"name", "history", "array"},
    "reference": {"store", "stats"},
    "engine": {"scheduler", "cluster", "device", "backend"},
    "entries": None,
    "metrics": None,
}
_ENTRY_KEYS = {"name", "store", "glob", "step", "tags"}


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise JobError(f"{where} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise JobError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return table


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise JobError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise JobError(f"{where} must be one of {list(choices)}, got {value!r}")
    return str(value)


def _resolve(base: str, path: str) -> str:
    return path if "://" in path or os.path.isabs(path) else os.path.join(base, path)


def _must_exist(where: str, path: str) -> str:
    if "://" not in path and not os.path.exists(path):
        raise JobError(f"{where}: {path!r} does not exist")
    return path


def glob_name(pattern: str, match: str) -> str:
    """The path components of ``match`` where ``pattern`` has wildcards, joined by ``/``
    (``ckpt/*/f.zarr`` matching ``ckpt/step-100/f.zarr`` → ``step-100``). Both must be spelled
    alike (both absolute, or both relative to one base)."""
    pattern_parts = os.path.normpath(pattern).split(os.sep)
    match_parts = os.path.normpath(match).split(os.sep)
    parts = [
        m for p, m in zip(pattern_parts, match_parts, strict=False) if any(c in p for c in "*?[")
    ]
    return "/".join(parts) or os.path.basename(match)


def _entries(path: str, base: str, raw: Any) -> tuple[Entry, ...]:
    if not isinstance(raw, list) or not raw:
        raise JobError(f"{path}: [[entries]] must list at least one entry")
    out: list[Entry] = []
    for i, item in enumerate(raw):
        where = f"{path}: entries[{i}]"
        item = _check_keys(where, item, _ENTRY_KEYS)
        tags = item.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise JobError(f"{where}.tags must be a list of strings")
        step = item.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            raise JobError(f"{where}.step must be an integer, got {step!r}")
        if ("glob" in item) == ("store" in item):
            raise JobError(f"{where} needs exactly one of 'store' or 'glob'")
        if "store" in item:
            store = _must_exist(
                f"{where}.store", _resolve(base, _string(f"{where}.store", item["store"]))
            )
            name = item.get("name") or os.path.basename(os.path.normpath(store))
            out.append(Entry(_string(f"{where}.name", name), store, step, tuple(tags)))
            continue
        pattern = _resolve(base, _string(f"{where}.glob", item["glob"]))
        matches = sorted(globlib.glob(pattern))
        if not matches:
            raise JobError(f"{where}.glob {item['glob']!r} matches nothing")
        for match in matches:
            name = glob_name(pattern, match)
            digits = re.findall(r"\d+", name)
            out.append(Entry(name, match, int(digits[-1]) if digits else step, tuple(tags)))
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise JobError(f"{path}: entry names must be unique; repeated: {dupes}")
    return tuple(out)


def _metrics(path: str, raw: Any) -> dict[str, Metric]:
    if not isinstance(raw, dict) or not raw:
        raise JobError(f"{path}: [metrics] must name at least one of {sorted(METRICS)}")
    metrics = {}
    for name, options in raw.items():
        if name not in METRICS:
            raise JobError(f"{path}: [metrics.{name}] is not a metric; known: {sorted(METRICS)}")
        if not isinstance(options, dict):
            raise JobError(f"{path}: [metrics.{name}] must be a table of options")
        try:
            metrics[name] = METRICS[name](options)
        except MetricOptionError as exc:
            raise JobError(f"{path}: {exc}") from None
    return metrics


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a job file; nothing is computed or written.

    Raises:
        JobError: one line naming the bad key, metric, option, type or store.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise JobError(f"job file {path!r} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"job file {path!r} is not valid TOML: {exc}") from exc
    base = os.path.dirname(os.path.abspath(path))
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise JobError(
            f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(_SECTIONS)}"
        )
    job = _check_keys(f"{path}: [job]", raw.get("job", {}), _SECTIONS["job"] or set())
    ref = _check_keys(f"{path}: [reference]", raw.get("reference", {}), {"store", "stats"})
    engine = _check_keys(f"{path}: [engine]", raw.get("engine", {}), _SECTIONS["engine"] or set())
    if len(ref) != 1:
        raise JobError(f"{path}: [reference] needs exactly one of 'store' or 'stats'")
    ((ref_kind, ref_path),) = ref.items()
    ref_path = _must_exist(
        f"{path}: reference.{ref_kind}",
        _resolve(base, _string(f"{path}: reference.{ref_kind}", ref_path)),
    )
    history = _string(f"{path}: job.history", job.get("history", ""))
    scheduler = engine.get("scheduler")
    if scheduler is not None:
        from pipeline.engine import Engine
        from pipeline.errors import EngineError

        try:
            Engine(scheduler)
        except EngineError as exc:
            raise JobError(f"{path}: engine.scheduler: {exc}") from None
    cluster = engine.get("cluster")
    if cluster is not None:
        cluster = _must_exist(
            f"{path}: engine.cluster", _resolve(base, _string(f"{path}: engine.cluster", cluster))
        )
    if scheduler is not None and cluster is not None:
        raise JobError(f"{path}: [engine] takes 'scheduler' or 'cluster', not both")
    array = job.get("array")
    if array is not None:
        array = _string(f"{path}: job.array", array)
    metrics = _metrics(path, raw.get("metrics"))
    if ref_kind == "stats":
        pairs = sorted(name for name, m in metrics.items() if m.needs_reference_features)
        if pairs:
            raise JobError(
                f"{path}: metrics {pairs} compare rows of the entries with rows of the "
                "reference: give [reference] store (features), not stats"
            )
    return Job(
        path=path,
        name=_string(
            f"{path}: job.name", job.get("name", os.path.splitext(os.path.basename(path))[0])
        ),
        history=os.path.normpath(_resolve(base, history)),
        entries=_entries(path, base, raw.get("entries")),
        metrics=metrics,
        reference_store=ref_path if ref_kind == "store" else None,
        reference_stats=ref_path if ref_kind == "stats" else None,
        scheduler=scheduler,
        cluster=cluster,
        device=_choice(f"{path}: engine.device", engine.get("device", "auto"), DEVICES),
        backend=_choice(f"{path}: engine.backend", engine.get("backend", "auto"), BACKENDS),
        array=array,
    )


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class _Prepared:
    """What a run checked before computing: the opened entries and the reference's identity."""

    sources: dict[str, FeatureSource]
    d: int
    reference_digest: str


def _prepare(job: Job) -> _Prepared:
    """Open every store (complete, readable) and check one feature dimension and the history,
    before anything is computed."""
    from pipeline.fingerprint import listing_digest
    from pipeline.sources import open_features
    from pipeline.statsio import load_stats

    if job.reference_stats is not None:
        d = load_stats(job.reference_stats).d
        reference_digest = _digest(listing_digest(job.reference_stats))
    elif job.reference_store is not None:
        d = open_features(job.reference_store, array_name=job.array).d
        reference_digest = _digest(listing_digest(job.reference_store), job.array)
    else:
        raise JobError(f"{job.path}: [reference] needs 'store' or 'stats'")
    sources = {e.name: open_features(e.store, array_name=job.array) for e in job.entries}
    other = {name: s.d for name, s in sources.items() if s.d != d}
    if other:
        raise JobError(
            f"{job.path}: the reference has d={d} features but entries {other} differ; "
            "compare features of one model"
        )
    History(job.history).check(d)
    return _Prepared(sources, d, reference_digest)


def reference_of(job: Job, engine: Engine, digest: str, log: Callable[[str], None]) -> Reference:
    """The reference statistics: read from a stats file, or computed once from a store and
    cached beside the history under the store's digest (a changed store has a new digest, so
    it is recomputed, never silently reused)."""
    from pipeline.gaussian import as_gaussian
    from pipeline.moments import feature_moments
    from pipeline.sources import open_features
    from pipeline.statsio import is_stats, load_stats, save_stats

    if job.reference_stats:
        stats = load_stats(job.reference_stats)
        return Reference(as_gaussian(stats, job.reference_stats), digest, job.reference_stats)
    store = job.reference_store or ""
    source = open_features(store, array_name=job.array)
    cache = os.path.join(os.path.dirname(os.path.abspath(job.history)), f"reference-{digest}.zarr")
    if os.path.exists(cache):
        if not is_stats(cache):
            raise JobError(f"{cache!r} exists and is not reference statistics; move it aside")
        log(f"reference statistics from cache {cache}")
        return Reference(as_gaussian(load_stats(cache), store), digest, store, source)
    log(f"computing reference statistics of {store}")
    ((moments, _),) = feature_moments(
        [source], engine=engine, device=job.device, backend=job.backend
    )
    save_stats(cache, moments, {**source.describe(), "fingerprint": digest})
    return Reference(as_gaussian(moments, store), digest, store, source)


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
    from pipeline.engine import Engine
    from pipeline.fingerprint import content_digest, listing_digest

    start = time.perf_counter()
    engine = engine or Engine()
    prepared = _prepare(job)
    history = History(job.history)
    reference = reference_of(job, engine, prepared.reference_digest, log)
    summary = RunSummary()
    declarations = job.declarations()
    requests: dict[str, Any] = {}
    for metric in job.metrics.values():
        requests.update(metric.sample_request())
    headlines = [metric.outputs[0].name for metric in job.metrics.values()]
    engine_text = json.dumps(engine.describe(), sort_keys=True)
    for i, entry in enumerate(job.entries, start=1):
        digest = listing_digest(entry.store)
        content = content_digest(entry.store) if verify else ""
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
        if not force and history.contains(row.key(), content or None):
            summary.skipped.append(entry.name)
            log(f"[{i}/{len(job.entries)}] {entry.name}: already in the history, skipped")
            continue
        t0 = time.perf_counter()
        context = Context(reference, engine, progress, job.device, job.backend, requests)
        values: dict[str, Any] = {}
        for metric in job.metrics.values():
            values.update(
                metric.check_outputs(metric.compute(prepared.sources[entry.name], context))
            )
        row = HistoryRow(**{**vars(row), "seconds": time.perf_counter() - t0, "created": now_iso()})
        history.append(row, values, declarations, prepared.d)
        summary.computed.append(entry.name)
        shown = ", ".join(f"{k} {float(values[k]):.6g}" for k in headlines)
        log(f"[{i}/{len(job.entries)}] {entry.name}: {shown}")
    summary.seconds = time.perf_counter() - start
    return summary
