"""Per-sample values of a job's entries (``[job] per_sample = "DIR"``): each entry's values
(the outputs its metrics give per generated row, asked with ``per_sample = true``) written as
one per-sample group (:func:`shardeval.api.per_sample.save_per_sample`) in ``DIR``, named by
the entry, replaced only where the job wrote it; and the rows a report lists first from them:
per checkpoint, the rows at the worst end of each ranked output (:attr:`Output.worst
<shardeval.pipeline.metrics.base.Output.worst>`: the least realistic, the most memorised).
"""

from __future__ import annotations

import html
import os
from typing import Any
from urllib.parse import quote

import numpy as np

from shardeval.pipeline.metrics import Metric
from shardeval.workflows.job_spec import Entry, Job, JobError

#: Rows listed per checkpoint and ranked output.
WORST_ROWS = 5


def group_path(job: Job, name: str) -> str:
    """Where the per-sample group of the entry ``name`` goes (its name quoted: an entry named
    by a glob's ``a/b`` is one group, ``a%2Fb.zarr``)."""
    return os.path.join(job.per_sample or "", quote(name, safe="") + ".zarr")


def written_by_job(job: Job, name: str, path: str) -> bool:
    """Whether ``path`` holds the per-sample group this job wrote for the entry ``name``
    (never raises)."""
    import zarr

    from shardeval.api.per_sample import is_per_sample_group

    if not is_per_sample_group(path):
        return False
    attrs = zarr.open_group(path, mode="r").attrs
    return attrs.get("job") == job.name and attrs.get("entry") == name


def claim_groups(job: Job, inputs: list[str]) -> None:
    """Before any compute: every entry's group may be written: absent, or written by this job
    for that entry, and not inside an input.

    Raises:
        JobError: naming the path and what is there.
    """
    from shardeval.pipeline.io.atomic import OutputExistsError, check_outside

    if job.per_sample is None:
        return
    for entry in job.entries:
        path = group_path(job, entry.name)
        if os.path.lexists(path) and not written_by_job(job, entry.name, path):
            raise JobError(
                f"{job.path}: {path!r} exists and is not the per-sample group this job "
                f"({job.name!r}) wrote for entry {entry.name!r}; move it aside or give "
                "another job.per_sample"
            )
        try:
            check_outside(path, [i for i in inputs if i])
        except OutputExistsError as exc:
            raise JobError(f"{job.path}: job.per_sample: {exc}") from None


def per_row_metrics(job: Job) -> set[str]:
    """The job's metrics that give per-sample values, as their options ask."""
    from shardeval.workflows.jobfile import gives_per_sample

    return {name for name, m in job.metrics.items() if gives_per_sample(m)}


def with_per_sample(job: Job, entry: Entry, wanted: dict[str, Metric]) -> dict[str, Metric]:
    """The metrics to compute for ``entry``: ``wanted``, and, when one of them gives
    per-sample values or the entry's group is missing, every metric that gives them (the group
    is written whole, from one evaluation)."""
    if job.per_sample is None:
        return wanted
    givers = per_row_metrics(job)
    missing = not written_by_job(job, entry.name, group_path(job, entry.name))
    if missing or givers & set(wanted):
        return {n: m for n, m in job.metrics.items() if n in wanted or n in givers}
    return wanted


def kept_group(job: Job, entry: Entry) -> str:
    """The group the job wrote for ``entry`` before, where it still is ("" when none)."""
    if job.per_sample is None:
        return ""
    path = group_path(job, entry.name)
    return path if written_by_job(job, entry.name, path) else ""


def write_group(job: Job, entry: Entry, report: Any) -> str:
    """The entry's per-sample values, written (replacing the group the job wrote before).

    Returns:
        The group's path.

    Raises:
        JobError: the path holds something else by now.
    """
    from shardeval.api.per_sample import save_per_sample

    path = group_path(job, entry.name)
    if os.path.lexists(path) and not written_by_job(job, entry.name, path):
        raise JobError(f"{job.path}: {path!r} appeared meanwhile; it is not this job's: move it")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    recorded = {"job": job.name, "entry": entry.name, "step": entry.step}
    return save_per_sample(report, path, overwrite=os.path.exists(path), recorded=recorded)


def worst_rows(path: str, declared: dict[str, Any], count: int = WORST_ROWS) -> list[Any]:
    """The rows at the worst end of each ranked output in the group at ``path``:
    ``(heading, output, [(row name, value), ...])``, lowest values first (NaN left out); rows
    without names are called ``row I``.

    Args:
        path: a per-sample group.
        declared: the metrics' declarations as the history keeps them.
        count: rows per output.
    """
    import zarr

    ranked = {
        o["name"]: o["worst"]
        for spec in declared.values()
        for o in spec["outputs"]
        if o.get("per_row") and o.get("worst")
    }
    group = zarr.open_group(path, mode="r")
    arrays = {name: node for name, node in group.arrays()}
    names = np.asarray(arrays["names"][:]).astype(object) if "names" in arrays else None
    out = []
    for output, heading in ranked.items():
        if output not in arrays:
            continue
        values = np.asarray(arrays[output][:], dtype=np.float64)
        kept = np.flatnonzero(~np.isnan(values))
        order = kept[np.argsort(values[kept], kind="stable")][:count]
        rows = [(f"row {i}" if names is None else str(names[i]), float(values[i])) for i in order]
        out.append((heading, output, rows))
    return out


def worst_section(ds: Any, rows: list[dict[str, Any]], declared: dict[str, Any]) -> str:
    """The report's section listing, per checkpoint with per-sample values, its worst rows by
    name ("" when the history recorded no per-sample group)."""
    if "per_sample" not in ds.variables:
        return ""
    groups = zip(ds["name"].values, ds["per_sample"].values, strict=True)
    where = {str(n): str(p) for n, p in groups}
    parts = []
    for r in rows:
        path = where.get(r["name"], "")
        if not path or path == "nan":
            continue
        title = html.escape(r["name"]) + (f" (step {r['step']})" if r["step"] >= 0 else "")
        if not os.path.exists(path):
            parts.append(f"<h3>{title}</h3><p>{html.escape(path)} is no longer there.</p>")
            continue
        lists = []
        for heading, output, listed in worst_rows(path, declared):
            items = "".join(
                f"<li><code>{html.escape(name)}</code>: {value:.6g}</li>" for name, value in listed
            )
            lists.append(
                f"<p>{html.escape(heading.capitalize())}, by <code>{html.escape(output)}</code>"
                f":</p><ol>{items}</ol>"
            )
        if lists:
            where_html = f"<p>from <code>{html.escape(path)}</code></p>"
            parts.append(f"<h3>{title}</h3>{where_html}{''.join(lists)}")
    if not parts:
        return ""
    return (
        '<section id="per-sample"><h2>Rows to look at first</h2><p>Per checkpoint, the '
        f"{WORST_ROWS} generated rows at the worst end of each per-sample value.</p>"
        + "".join(parts)
        + "</section>"
    )
