"""The rows and columns of a history: an entry's provenance (:class:`HistoryRow`), each metric's
own provenance beside its results, and the rows a reader is shown: values as they mean, and
which results no longer describe their store (``stale``).

A history keeps every result it has recorded for an entry until that same metric is computed
for it again, so each metric's results carry their own provenance (``METRIC.provenance``,
JSON: the store's fingerprint, the metric's options, the reference, when), beside the entry's
provenance of its latest run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HistoryRow:
    """Provenance of one evaluated entry: what, against what, how and when.

    Attributes:
        name: the entry's name (unique in a job).
        store: the feature store evaluated.
        step: training step, or -1 when unknown.
        tags: labels from the job file.
        fingerprint: digest of the store's listing
            (:func:`shardeval.api.stores.listing_fingerprint`).
        options: digest of everything else that changes a value (metric options, the array)
            for the whole job that ran last; each metric's own is in its provenance.
        reference: the reference's location.
        reference_fingerprint: digest of the reference (and the array read from it).
        job: the job's name.
        engine: where it ran (JSON).
        seconds: wall time of the entry's metrics.
        created: when the entry finished (UTC, ISO 8601).
        content_digest: digest of the store's bytes, when ``--verify`` computed it.
        made_by: how the entry's features were made (JSON of
            :func:`shardeval.workflows.madeby.record_of`; "" when not recorded).
        reference_made_by: how its reference's features were made (the same).
        test: the held-out test set's location ("" when the job names none).
        test_fingerprint: digest of the test set (and the array read from it); the results
            of the metrics that read it record it in their options digest.
        test_made_by: how the test set's features were made (as ``made_by``).
        per_sample: the entry's per-sample group ("" when the job writes none).
    """

    name: str
    store: str
    step: int
    tags: str
    fingerprint: str
    options: str
    reference: str
    reference_fingerprint: str
    job: str
    engine: str
    seconds: float
    created: str
    content_digest: str = ""
    made_by: str = ""
    reference_made_by: str = ""
    test: str = ""
    test_fingerprint: str = ""
    test_made_by: str = ""
    per_sample: str = ""


PROVENANCE = tuple(f.name for f in fields(HistoryRow))

#: What a metric's results were computed from, as recorded in ``METRIC.provenance``.
_METRIC_PROVENANCE = ("fingerprint", "options", "reference_fingerprint", "content_digest")

#: Ends the name of a metric's provenance variable. The dot keeps it apart from every output
#: name, which starts with the metric's name and is an identifier.
_PROVENANCE_SUFFIX = ".provenance"


def provenance_variable(metric: str) -> str:
    """The variable holding, per entry, the provenance of ``metric``'s results (JSON; "" where
    the metric was never computed)."""
    return metric + _PROVENANCE_SUFFIX


#: Keys of ``METRIC.provenance`` that a reader compares with the inputs as they are now (the
#: listing digest of a local store and of a local reference, as computed; for image sources,
#: their listing as the feature cache keys them), to tell a stale result
#: (:meth:`shardeval.workflows.history.History.table`).
LISTINGS = ("store_listing", "reference_listing", "images_listing", "reference_images_listing")

#: Per key of :data:`LISTINGS`: the row's column naming the input, how a stale mark names it,
#: and whether it is a source of images (listed as images) or a store (listed as files).
_LISTED = (
    ("store_listing", "store", "its store", False),
    ("reference_listing", "reference", "its reference", False),
    ("images_listing", "store", "its images", True),
    ("reference_images_listing", "reference", "its reference's images", True),
)


def metric_provenance(row: HistoryRow, options: str, listings: dict[str, str] | None = None) -> str:
    """The JSON recorded with a metric's results: the inputs they came from, the metric's own
    options digest, the run, and the listings of its inputs that can be looked at again."""
    recorded = {**{k: getattr(row, k) for k in _METRIC_PROVENANCE}, "options": options}
    checks = {k: v for k, v in (listings or {}).items() if k in LISTINGS and v}
    return json.dumps(
        {**recorded, **checks, "job": row.job, "created": row.created}, sort_keys=True
    )


def computed_from(text: str, row: HistoryRow, options: str, check_content: bool) -> bool:
    """Whether recorded metric provenance ``text`` says the results came from what ``row``
    describes, under ``options``."""
    try:
        recorded = json.loads(text) if text else {}
    except ValueError:
        return False  # unreadable provenance: compute again rather than trust
    wanted = {**{k: getattr(row, k) for k in _METRIC_PROVENANCE}, "options": options}
    if not check_content:
        wanted.pop("content_digest")
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in wanted.items())


def whole_job_done(ds: Any, i: int, row: HistoryRow, check_content: bool) -> bool:
    """Whether row ``i`` was last written by a run of the same job (metrics and options:
    ``row.options``) on the same inputs, which computed, or found current, every metric of
    that job. (Rows written before metrics carried their own provenance decide so.)"""
    columns = ["fingerprint", "options", "reference_fingerprint"]
    if check_content:
        columns.append("content_digest")
    same = all(
        column in ds.variables and str(ds[column].values[i]) == getattr(row, column)
        for column in columns
    )
    # A row written before rows recorded a test set ran with none.
    return same and _text(ds, "test_fingerprint", i) == row.test_fingerprint


def _text(ds: Any, column: str, i: int) -> str:
    """Row ``i``'s text in ``column`` ("" where the history has no such column)."""
    return str(ds[column].values[i]) if column in ds.variables else ""


def _recorded(ds: Any, metric: str, i: int) -> dict[str, Any]:
    """The provenance recorded with ``metric``'s results in row ``i`` ({} where none: never
    computed, or written before results carried their own)."""
    variable = provenance_variable(metric)
    if variable not in ds.variables:
        return {}
    try:
        recorded = json.loads(str(ds[variable].values[i]) or "{}")
    except ValueError:
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _made(ds: Any, variable: str, i: int) -> dict[str, Any] | None:
    """How row ``i``'s features (or its reference's) were made, the weights' status decided
    now; None where the run recorded nothing (a history written before it did)."""
    from shardeval.workflows import madeby

    if variable not in ds.variables:
        return None
    return madeby.shown(madeby.loads(ds[variable].values[i]))


def _value(value: Any, output: dict[str, Any]) -> Any:
    """A stored result as shown: None where missing (NaN), ±inf as it is, a count (unit
    ``rows``) as an int."""
    number = float(value)
    if math.isnan(number):
        return None
    if output.get("unit") == "rows" and math.isfinite(number) and number.is_integer():
        return int(number)
    return number


def _stale(
    ds: Any, i: int, recorded: dict[str, Any], listings: dict[str, str | None] | None
) -> str:
    """Why results with provenance ``recorded`` no longer describe row ``i``'s inputs ("" when
    they do). ``listings``: a cache of the local stores' listings now (None: look only at the
    row's latest run)."""
    if str(recorded.get("fingerprint", "")) != str(ds["fingerprint"].values[i]):
        return "computed on an earlier version of its store (a later run saw other files)"
    wanted = str(ds["reference_fingerprint"].values[i])
    if str(recorded.get("reference_fingerprint", "")) != wanted:
        return "computed against another reference, or an earlier version of it"
    if listings is None:
        return ""
    for key, column, what, images in _LISTED:
        if key not in recorded or column not in ds.variables:
            continue
        now = _listing_now(str(ds[column].values[i]), listings, images)
        if now is None:
            return f"{what} {ds[column].values[i]} is no longer there"
        if now != recorded[key]:
            if images:
                return f"{what} changed since (images added, removed or rewritten)"
            return f"{what} changed since (its files are not those it was computed on)"
    return ""


def _listing_now(location: str, cache: dict[str, str | None], images: bool = False) -> str | None:
    """The listing digest of a local store now, or (``images``) the listing of a source of
    images as the feature cache keys it (None when it is gone); cached per call."""
    from shardeval.api.images import images_fingerprint
    from shardeval.api.stores import listing_fingerprint
    from shardeval.pipeline.errors import ShardevalError

    cached = f"images:{location}" if images else location
    if cached not in cache:
        try:
            if images:
                cache[cached] = images_fingerprint(location)
            else:
                cache[cached] = listing_fingerprint(location)
        except (ShardevalError, OSError):
            cache[cached] = None
    return cache[cached]


def table_rows(ds: Any, metric: str | None, look_at_stores: bool) -> list[dict[str, Any]]:
    """The rows of :meth:`shardeval.workflows.history.History.table` from a loaded history
    ``ds``.

    Raises:
        KeyError: ``metric`` is not in the history.
    """
    declared = json.loads(ds.attrs.get("metrics", "{}"))
    if metric is not None and metric not in declared:
        raise KeyError(metric)
    shown = [m for m in declared if metric in (None, m)]
    outputs = [
        o
        for m in shown
        for o in declared[m]["outputs"]
        if not o["array"] and o["name"] in ds.variables
    ]
    listings: dict[str, str | None] = {}
    rows = []
    for i in np.argsort(ds["step"].values, kind="stable"):
        recorded = {m: _recorded(ds, m, i) for m in declared}
        created = str(ds["created"].values[i])
        row: dict[str, Any] = {
            "name": str(ds["name"].values[i]),
            "step": int(ds["step"].values[i]),
            "tags": str(ds["tags"].values[i]),
            "created": created,
        }
        if metric is not None:
            row["created"] = recorded[metric].get("created", created)
        for output in outputs:
            row[output["name"]] = _value(ds[output["name"]].values[i], output)
        if metric is None:
            for m in shown:
                has = any(row.get(o["name"]) is not None for o in declared[m]["outputs"])
                row[f"{m}.created"] = recorded[m].get("created", created) if has else None
        row["features_made_by"] = _made(ds, "made_by", i)
        row["reference_made_by"] = _made(ds, "reference_made_by", i)
        row["stale"] = {
            m: why
            for m in shown
            if recorded[m]
            and (why := _stale(ds, i, recorded[m], listings if look_at_stores else None))
        }
        rows.append(row)
    return rows


def entry_dataset(
    row: HistoryRow,
    values: dict[str, Any],
    computed: dict[str, str] | None,
    listings: dict[str, str] | None,
) -> Any:
    """One entry as a Dataset row (dim ``entry``): its provenance, its results (1-D results
    along ``NAME_component``; None recorded as NaN) and, for the metrics in ``computed``, the
    provenance of their results."""
    import xarray as xr

    data: dict[str, Any] = {k: ("entry", [v]) for k, v in asdict(row).items()}
    for key, value in values.items():
        if np.ndim(value) == 1:
            data[key] = (("entry", f"{key}_component"), np.asarray(value, np.float64)[None])
        else:  # None: an optional result the options did not ask for, recorded missing
            data[key] = ("entry", [math.nan if value is None else float(value)])
    for metric, options in (computed or {}).items():
        recorded = metric_provenance(row, options, listings)
        data[provenance_variable(metric)] = ("entry", [recorded])
    return xr.Dataset(data)


def with_kept_results(new: Any, earlier: Any) -> Any:
    """``new`` (one entry) with every variable of the entry's earlier row that it does not
    replace: the results (and their provenance) of metrics this run did not compute."""
    if not earlier.sizes.get("entry"):
        return new
    earlier = earlier.isel(entry=[-1])  # one row per name; the last if a writer left two
    kept = {name: earlier[name] for name in earlier.data_vars if name not in new.variables}
    return new.assign(kept)


def empty_where_never_computed(ds: Any) -> Any:
    """Metric provenance as "" (never computed) in rows that lack it, where joining rows
    filled in NaN, so that the variable stays text."""
    text = {f.name for f in fields(HistoryRow) if f.type in ("str", str)}
    for name in list(ds.data_vars):
        if str(name).endswith(_PROVENANCE_SUFFIX) or name in text:
            ds[name] = ds[name].fillna("").astype(str)
    return ds
