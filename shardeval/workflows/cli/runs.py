"""The job commands: run a job file, print its history, write its report."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from shardeval.workflows.cli.common import UsageError, notice, say

if TYPE_CHECKING:
    from shardeval.api.engines import Engine

#: The columns of `history` saying how an entry's (and its reference's) features were made:
#: lines of their own under the table, text in CSV.
_MADE = ("features_made_by", "reference_made_by")


def cmd_run(args: argparse.Namespace) -> int:
    from shardeval.workflows.jobs import load_job, run_job

    job = load_job(args.job)  # validates the file before anything else
    from shardeval.api.engines import engine, running_cluster
    from shardeval.workflows.progress import ProgressBar

    log = (lambda message: None) if args.quiet else notice

    def run(on: Engine) -> Any:
        return run_job(
            job,
            engine=on,
            force=args.force,
            verify=args.verify,
            progress=None if args.quiet else ProgressBar(),
            log=log,
        )

    if job.cluster and not args.scheduler:
        with running_cluster(job.cluster) as address:
            summary = run(engine(address, log=log))
    else:
        scheduler = (
            args.scheduler or job.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
        )
        summary = run(engine(scheduler, log=log))
    print(
        f"job {job.name}: {len(summary.computed)} computed, {len(summary.skipped)} already "
        f"done, {len(job.entries)} entries; history {job.history} ({summary.seconds:.1f} s)"
    )
    return 0


def _cell(value: Any) -> str:
    """A value as the table shows it: missing as "–", inf as inf, counts as integers."""
    if value is None:
        return "–"
    if isinstance(value, dict):  # stale results: their metrics
        return ", ".join(value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _json_value(value: Any) -> Any:
    """JSON has no inf: an infinite result is the string "inf" or "-inf" (null is a missing
    value, never an infinite one)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def cmd_history(args: argparse.Namespace) -> int:
    from shardeval.workflows import madeby
    from shardeval.workflows.history import History
    from shardeval.workflows.intervals import noise_lines, with_interval

    history = History(args.history)
    if history.load() is None:
        raise UsageError(f"no history at {args.history!r}; `shardeval run JOB.toml` makes one")
    try:
        rows = history.table(args.metric)
    except KeyError:
        known = sorted(history.declarations())
        raise UsageError(
            f"{args.history!r} has no metric {args.metric!r}; it has {known}"
        ) from None
    if args.format == "json":
        shown = [{k: _json_value(v) for k, v in r.items()} for r in rows]
        print(json.dumps(shown, indent=2, allow_nan=False))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        for r in rows:
            why = "; ".join(f"{m}: {reason}" for m, reason in r.get("stale", {}).items())
            made = {k: madeby.text(r[k]) for k in _MADE if k in r}
            writer.writerow({**r, **made, "stale": why})
    else:
        stale = [r for r in rows if r.get("stale")]
        keys = [
            k
            for k in (list(rows[0]) if rows else ["name"])
            if (k != "stale" or stale) and k not in _MADE
        ]
        widths = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for r in rows:
            print("  ".join(_cell(r[k]).ljust(widths[k]) for k in keys))
        for r in stale:
            for metric, reason in r["stale"].items():
                print(f"{r['name']}: {metric} (stale: {reason})")
        for line in noise_lines(rows, with_interval(keys, keys)):
            print(line)
        # How each entry's features were made: one line per way, naming its entries.
        ways: dict[str, list[str]] = {}
        for r in rows:
            if r.get("features_made_by") is not None:
                ways.setdefault(madeby.text(r["features_made_by"]), []).append(r["name"])
        for way, names in ways.items():
            print(f"features made by {way}: {madeby.listed(names)}")
        for warned in madeby.warnings_of(rows):
            print(f"warning: {warned}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from shardeval.workflows.htmlreport import write_report

    page, md = write_report(args.history, args.output, overwrite=args.overwrite)
    if md is None:
        say(f"wrote {page} (no Markdown summary: it has no place beside a pipe or device)", page)
    else:
        say(f"wrote {page} and {md}", page)
    return 0
