"""Evaluation jobs from a TOML file: a reference, entries (checkpoints), metrics, an engine and
a history. Resumable and idempotent: each finished entry is committed to the history at once,
and a re-run skips entries whose inputs and options are already there.

.. code-block:: toml

    [job]
    name = "nightly"
    history = "runs/history.zarr"

    [reference]
    store = "data/real.zarr"          # or: stats = "real-stats.zarr" (or a .npz)

    [engine]                          # optional; default: threaded scheduler in-process
    scheduler = "tcp://10.0.0.5:8786" # or: cluster = "cluster/slurm.yaml"

    [[entries]]
    glob = "checkpoints/*/features.zarr"   # name: the part the * matched; step: its digits

    [[entries]]
    name = "final"
    store = "final/features.zarr"
    step = 100000
    tags = ["release"]

    [metrics.fid]
    [metrics.nll_gaussian]
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
from typing import Any

from pipeline import (
    Engine,
    ShardevalError,
    as_gaussian,
    feature_moments,
    load_stats,
    open_features,
    save_stats,
)
from pipeline.sources import fingerprint
from workflows.history import History
from workflows.metrics import METRICS, Metric, MetricOptionError, Reference

Progress = Callable[[int, int], None]


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
    array: str | None = None

    @property
    def options_digest(self) -> str:
        """Identifies the metric options: an entry computed with other options is recomputed."""
        text = json.dumps({k: m.options for k, m in sorted(self.metrics.items())}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class RunSummary:
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


_SECTIONS = {
    "job": {"name", "history", "array"},
    "reference": {"store", "stats"},
    "engine": {"scheduler", "cluster"},
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


def _resolve(base: str, path: str) -> str:
    return path if "://" in path or os.path.isabs(path) else os.path.join(base, path)


def _must_exist(where: str, path: str) -> str:
    if "://" not in path and not os.path.exists(path):
        raise JobError(f"{where}: {path!r} does not exist")
    return path


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
        if step is not None and not isinstance(step, int):
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
        pattern = _string(f"{where}.glob", item["glob"])
        matches = sorted(globlib.glob(_resolve(base, pattern)))
        if not matches:
            raise JobError(f"{where}.glob {pattern!r} matches nothing")
        for match in matches:
            name = _glob_name(pattern, os.path.relpath(match, base))
            digits = re.findall(r"\d+", name)
            out.append(Entry(name, match, int(digits[-1]) if digits else step, tuple(tags)))
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise JobError(f"{path}: entry names must be unique; repeated: {dupes}")
    return tuple(out)


def _glob_name(pattern: str, match: str) -> str:
    """The path components where the pattern has wildcards (``ckpt/*/f.zarr`` → the ``*``)."""
    parts = [
        m
        for p, m in zip(pattern.split("/"), match.split(os.sep), strict=False)
        if any(c in p for c in "*?[")
    ]
    return "/".join(parts) or match


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a job file; nothing is computed or written.

    Raises:
        JobError: one line naming the bad key, metric, type or store.
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
    engine = _check_keys(f"{path}: [engine]", raw.get("engine", {}), {"scheduler", "cluster"})
    if len(ref) != 1:
        raise JobError(f"{path}: [reference] needs exactly one of 'store' or 'stats'")
    ((ref_kind, ref_path),) = ref.items()
    ref_path = _must_exist(
        f"{path}: reference.{ref_kind}",
        _resolve(base, _string(f"{path}: reference.{ref_kind}", ref_path)),
    )
    metrics_raw = raw.get("metrics")
    if not isinstance(metrics_raw, dict) or not metrics_raw:
        raise JobError(f"{path}: [metrics] must name at least one of {sorted(METRICS)}")
    metrics = {}
    for name, options in metrics_raw.items():
        if name not in METRICS:
            raise JobError(f"{path}: [metrics.{name}] is not a metric; known: {sorted(METRICS)}")
        if not isinstance(options, dict):
            raise JobError(f"{path}: [metrics.{name}] must be a table of options")
        try:
            metrics[name] = METRICS[name](options)
        except MetricOptionError as exc:
            raise JobError(f"{path}: {exc}") from None
    history = _string(f"{path}: job.history", job.get("history", ""))
    cluster = engine.get("cluster")
    return Job(
        path=path,
        name=str(job.get("name", os.path.splitext(os.path.basename(path))[0])),
        history=_resolve(base, history),
        entries=_entries(path, base, raw.get("entries")),
        metrics=metrics,
        reference_store=ref_path if ref_kind == "store" else None,
        reference_stats=ref_path if ref_kind == "stats" else None,
        scheduler=engine.get("scheduler"),
        cluster=_must_exist(f"{path}: engine.cluster", _resolve(base, cluster))
        if cluster
        else None,
        array=job.get("array"),
    )


def reference_of(job: Job, engine: Engine, log: Callable[[str], None]) -> Reference:
    """The reference statistics: read from a stats file, or computed once from a store and
    cached beside the history under the store's content fingerprint (a changed store has a new
    fingerprint, so it is recomputed, never silently reused)."""
    if job.reference_stats:
        return Reference(
            as_gaussian(load_stats(job.reference_stats), job.reference_stats),
            fingerprint(job.reference_stats),
        )
    if job.reference_store is None:
        raise JobError(f"{job.path}: [reference] needs 'store' or 'stats'")
    digest = fingerprint(job.reference_store)
    cache = os.path.join(os.path.dirname(os.path.abspath(job.history)), f"reference-{digest}.zarr")
    if os.path.exists(cache):
        log(f"reference statistics from cache {cache}")
        return Reference(as_gaussian(load_stats(cache), cache), digest)
    log(f"computing reference statistics of {job.reference_store}")
    source = open_features(job.reference_store, array_name=job.array)
    ((moments, _),) = feature_moments([source], engine=engine)
    save_stats(cache, moments, {**source.describe(), "fingerprint": digest})
    return Reference(as_gaussian(moments, job.reference_store), digest)


def run_job(
    job: Job,
    *,
    engine: Engine | None = None,
    force: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> RunSummary:
    """Evaluate every entry not yet in the history, committing each as soon as it is done."""
    start = time.perf_counter()
    engine = engine or Engine()
    history = History(job.history)
    reference = reference_of(job, engine, log)
    summary = RunSummary()
    for i, entry in enumerate(job.entries, start=1):
        digest = fingerprint(entry.store)
        key = (entry.name, digest, job.options_digest, reference.fingerprint)
        if not force and history.contains(*key):
            summary.skipped.append(entry.name)
            log(f"[{i}/{len(job.entries)}] {entry.name}: already in the history, skipped")
            continue
        t0 = time.perf_counter()
        source = open_features(entry.store, array_name=job.array)
        values: dict[str, Any] = {}
        for metric in job.metrics.values():
            values.update(metric.compute(source, reference, engine, progress))
        history.append(
            entry=entry,
            values=values,
            fingerprint=digest,
            options=job.options_digest,
            reference=reference,
            seconds=time.perf_counter() - t0,
            job=job.name,
            engine=engine.describe(),
            headline=tuple(job.metrics),
        )
        summary.computed.append(entry.name)
        shown = ", ".join(f"{k} {v:.6g}" for k, v in values.items() if isinstance(v, float))
        log(f"[{i}/{len(job.entries)}] {entry.name}: {shown}")
    summary.seconds = time.perf_counter() - start
    return summary
