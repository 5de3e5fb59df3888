"""The job commands: run a job file, print its history, write its report."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any

from shardeval.workflows.cli.common import UsageError, notice, say


def cmd_run(args: argparse.Namespace) -> int:
    from shardeval.workflows.jobs import load_job, run_job

    job = load_job(args.job)  # validates the file before anything else
    from shardeval.pipeline.core.clusters import running_cluster
    from shardeval.pipeline.core.engine import Engine
    from shardeval.workflows.progress import ProgressBar

    log = (lambda message: None) if args.quiet else notice

    def run(engine: Engine) -> Any:
        return run_job(
            job,
            engine=engine,
            force=args.force,
            verify=args.verify,
            progress=None if args.quiet else ProgressBar(),
            log=log,
        )

    if job.cluster and not args.scheduler:
        with running_cluster(job.cluster) as address:
            summary = run(Engine(address, log=log))
    else:
        scheduler = (
            args.scheduler or job.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
        )
        summary = run(Engine(scheduler, log=log))
    print(
        f"job {job.name}: {len(summary.computed)} computed, {len(summary.skipped)} already "
        f"done, {len(job.entries)} entries; history {job.history} ({summary.seconds:.1f} s)"
    )
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_history(args: argparse.Namespace) -> int:
    from shardeval.workflows.history import History

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
        print(json.dumps(rows, indent=2, allow_nan=False))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        keys = list(rows[0]) if rows else ["name"]
        widths = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for r in rows:
            print("  ".join(_cell(r[k]).ljust(widths[k]) for k in keys))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from shardeval.workflows.htmlreport import write_report

    page, md = write_report(args.history, args.output, overwrite=args.overwrite)
    if md is None:
        say(f"wrote {page} (no Markdown summary: it has no place beside a pipe or device)", page)
    else:
        say(f"wrote {page} and {md}", page)
    return 0
