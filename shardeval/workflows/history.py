"""Run history: an xarray Dataset in Zarr, one row per evaluated entry (dim ``entry``), the
metrics' results side by side, provenance in variables and attributes.

Versions, switched in one step. ``HISTORY`` is a symbolic link to a complete version under
``HISTORY.versions/``; an append writes the next version beside the current one (under a
temporary name, renamed when complete), then replaces the link with one ``rename``, which is
atomic. A crash at any point leaves the old history or the new one, and a link lost between
steps is recovered from the newest complete version. Writers hold an exclusive lock
(``HISTORY.lock``); readers a shared one, so they always see one whole version. The version
before the current one is kept for readers that do not lock (``xr.open_zarr(HISTORY)``).

The history knows no metric by name: what each metric returned, with units and plots, is
described by the declarations that the metrics' plug-ins give and the history stores.

A history keeps every result it has recorded for an entry until that same metric is computed
for it again: a run writes the metrics it computed into the entry's row and keeps the others
(a job with another set of metrics adds columns; it removes none). So that a run can tell what
is already done, each metric's results carry their own provenance (``METRIC.provenance``, JSON:
the store's fingerprint, the metric's options, the reference, when), beside the entry's
provenance of its latest run.

A kept result may no longer describe its store: the store was rewritten and another job
recomputed only its own metrics, or nobody has run since. :meth:`History.table` says so, per
result (``stale``): its recorded store or reference digest differs from the one of the entry's
latest run, or (where that is cheap: a local store, a listing) from the store's listing now.
Such results are marked, not recomputed: recomputing one needs the options of the job that
asked for it, which the history of another job's run does not hold, and dropping it would
lose a result that is still right for the rows it was computed on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from shardeval.pipeline.errors import ShardevalError
from shardeval.pipeline.io.provenance import now_iso, versions

FORMAT = "shardeval.history"
#: 3: per-metric provenance (``METRIC.provenance``); rows are merged, never replaced whole.
FORMAT_VERSION = 3

_VERSION = re.compile(r"^v(\d{6,})$")


#: History attribute: every chunk is stored (so a missing one is damage, not fill values).
ALL_CHUNKS_ATTR = "all_chunks_written"


class HistoryError(ShardevalError):
    """A history cannot be used: damaged, of another kind, or of other features."""


@dataclass(frozen=True)
class HistoryRow:
    """Provenance of one evaluated entry: what, against what, how and when.

    Attributes:
        name: the entry's name (unique in a job).
        store: the feature store evaluated.
        step: training step, or -1 when unknown.
        tags: labels from the job file.
        fingerprint: digest of the store's listing (:mod:`shardeval.pipeline.io.fingerprint`).
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
#: their listing as the feature cache keys them), to tell a stale result (:meth:`History.table`).
LISTINGS = ("store_listing", "reference_listing", "images_listing", "reference_images_listing")

#: Per key of :data:`LISTINGS`: the row's column naming the input, how a stale mark names it,
#: and whether it is a source of images (listed as images) or a store (listed as files).
_LISTED = (
    ("store_listing", "store", "its store", False),
    ("reference_listing", "reference", "its reference", False),
    ("images_listing", "store", "its images", True),
    ("reference_images_listing", "reference", "its reference's images", True),
)


def _metric_provenance(
    row: HistoryRow, options: str, listings: dict[str, str] | None = None
) -> str:
    """The JSON recorded with a metric's results: the inputs they came from, the metric's own
    options digest, the run, and the listings of its inputs that can be looked at again."""
    recorded = {**{k: getattr(row, k) for k in _METRIC_PROVENANCE}, "options": options}
    checks = {k: v for k, v in (listings or {}).items() if k in LISTINGS and v}
    return json.dumps(
        {**recorded, **checks, "job": row.job, "created": row.created}, sort_keys=True
    )


def _computed_from(text: str, row: HistoryRow, options: str, check_content: bool) -> bool:
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
    from shardeval.pipeline.errors import ShardevalError
    from shardeval.pipeline.io.fingerprint import listing_digest

    cached = f"images:{location}" if images else location
    if cached not in cache:
        try:
            if images:
                from shardeval.pipeline.images.sources import open_images

                cache[cached] = open_images(location).fingerprint
            else:
                cache[cached] = listing_digest(location)
        except (ShardevalError, OSError):
            cache[cached] = None
    return cache[cached]


def _other_kind(where: str) -> tuple[str, str] | None:
    """What a Zarr store that is not a history is ("a feature store") and holds, or None when
    it may be a history (it says so, or cannot be opened as Zarr: :meth:`History._read` names
    that damage)."""
    import zarr

    from shardeval.pipeline.io.stores import STATS_FORMAT

    try:
        node = zarr.open(where, mode="r", use_consolidated=False)
    except Exception:  # zarr raises many types for a store it cannot open
        return None
    if isinstance(node, zarr.Array):
        return "a feature store", f"a Zarr array of shape {tuple(node.shape)}"
    kind = node.attrs.get("format")
    if kind == FORMAT:
        return None
    if kind == STATS_FORMAT:
        return "a statistics group", "mean and m2, as `shardeval stats` writes them"
    try:
        arrays = dict(node.arrays())
    except Exception:
        return None
    if "name" in arrays and "fingerprint" in arrays:
        return None  # a history without its format attribute: _read says what it lacks
    features = sorted(name for name, array in arrays.items() if array.ndim == 2)
    if features:
        return "a feature store", f"a Zarr group holding {features}"
    return None


class History:
    """A history at ``path`` (a trailing slash is ignored)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.path.normpath(os.fspath(path))
        self.versions_dir = self.path + ".versions"
        self.lock_path = self.path + ".lock"

    # -- locking and versions -----------------------------------------------------------------

    def _locked(self, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        from shardeval.pipeline.io.atomic import locked

        return locked(self.lock_path, exclusive)

    def _versions(self) -> list[str]:
        """Complete versions, oldest first."""
        try:
            names = os.listdir(self.versions_dir)
        except FileNotFoundError:
            return []
        numbered = sorted((int(m.group(1)), n) for n in names if (m := _VERSION.match(n)))
        return [os.path.join(self.versions_dir, n) for _, n in numbered]

    def _current(self) -> str | None:
        """The directory holding the current version (the link's target, a history of the
        first format, or the newest complete version when a crash lost the link)."""
        if os.path.islink(self.path):
            target = os.path.realpath(self.path)
            ours = os.path.realpath(self.versions_dir)
            if os.path.dirname(target) != ours:
                # A link the user made (to a history elsewhere, or to a file): switching
                # versions would replace it and leave its target behind.
                raise HistoryError(
                    f"{self.path!r} is a symbolic link to {target!r}, not a history's own "
                    "version link; give the history's real path"
                )
            if os.path.isdir(target):
                return target
        elif os.path.isdir(self.path):
            return self.path
        elif os.path.lexists(self.path):
            raise HistoryError(f"{self.path!r} exists and is not a history; choose another path")
        found = self._versions()
        return found[-1] if found else None

    def _switch(self, version: str) -> None:
        """Point the history at ``version`` in one rename."""
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            # A history of the first format: keep it as version 0 (a crash right after this
            # rename is recovered by _current, which then finds the newest version).
            os.replace(self.path, os.path.join(self.versions_dir, f"v{0:06d}"))
        link = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.link")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(os.path.relpath(version, os.path.dirname(self.path) or "."), link)
        os.replace(link, self.path)

    def _collect(self, current: str) -> None:
        """Remove versions older than the one before ``current``, and unfinished ones."""
        found = self._versions()
        keep = set(found[-2:]) | {current}
        for version in found:
            if version not in keep:
                shutil.rmtree(version, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.versions_dir):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.versions_dir, name), ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------

    def _read(self, where: str) -> Any:
        import xarray as xr

        self._refuse_other_kinds(where)
        self._check_complete(where)
        try:
            with xr.open_zarr(where, consolidated=False) as ds:
                loaded = ds.load()
        except Exception as exc:  # zarr, numcodecs and xarray raise many types
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise HistoryError(
                f"history {self.path!r} cannot be read ({reason}); it is damaged: move it aside "
                "and run the job again to start a new one"
            ) from exc
        if loaded.attrs.get("format") != FORMAT:
            raise HistoryError(
                f"{self.path!r} is a Zarr store but not a shardeval history (format="
                f"{loaded.attrs.get('format')!r}); choose another path"
            )
        missing = [v for v in ("name", "step", "fingerprint") if v not in loaded.variables]
        if missing:
            raise HistoryError(f"history {self.path!r} lacks {missing}; it is damaged")
        try:
            declared = json.loads(loaded.attrs.get("metrics", "{}"))
            int(loaded.attrs.get("d", 0))
            if not all(isinstance(v.get("outputs"), list) for v in declared.values()):
                raise ValueError("a metric declares no outputs")
        except (ValueError, TypeError, AttributeError) as exc:
            raise HistoryError(
                f"history {self.path!r} has damaged attributes ({exc}); move it aside and run "
                "the job again to start a new one"
            ) from exc
        return loaded

    def _refuse_other_kinds(self, where: str) -> None:
        """A Zarr store that is not a history (features, statistics) is named for what it is,
        not called a damaged history: the advice for damage (move it aside) would move the
        user's data.

        Raises:
            HistoryError: naming what ``where`` holds and what a history is.
        """
        other = _other_kind(where)
        if other is not None:
            kind, holding = other
            raise HistoryError(
                f"{self.path!r} is {kind}, not a history ({holding}); a history is the Zarr store "
                "`shardeval run JOB.toml` writes at the job's [job] history path (one row per "
                "evaluated entry): give that path, or run a job to make one"
            )

    def _check_complete(self, where: str) -> None:
        """Every chunk of every variable is stored: a missing one would read as the fill
        value (steps of 0, FIDs of NaN) and an entry as done. (Histories written before
        :data:`ALL_CHUNKS_ATTR` cannot be checked: their writer left chunks of fill values
        out.)"""
        import zarr

        from shardeval.pipeline.io.reader import missing_chunks

        try:
            group = zarr.open_group(where, mode="r", use_consolidated=False)
            if not group.attrs.get(ALL_CHUNKS_ATTR):
                return  # written before every chunk was stored: a chunk of fill values is not
            arrays = list(group.arrays())
        except Exception:  # unreadable metadata: _read names it
            return
        for name, array in arrays:
            missing, total = missing_chunks(array, f"{self.path}/{name}")
            if missing:
                raise HistoryError(
                    f"history {self.path!r} is damaged: {len(missing)} of {total} chunks of "
                    f"{name!r} are missing (first: {missing[0][1]}); move it aside and run the "
                    "job again to start a new one"
                )

    def load(self) -> Any:
        """The whole history in memory (one consistent version), or None when there is none.

        Raises:
            HistoryError: the path holds something else, or the history is damaged.
        """
        with self._locked(exclusive=False):
            where = self._current()
            return None if where is None else self._read(where)

    def check(self, d: int) -> None:
        """Before computing anything: the history, if there is one, is readable and holds
        features of dimension ``d``.

        Raises:
            HistoryError: damaged, not a history, or of another feature dimension.
        """
        ds = self.load()
        if ds is not None and "d" in ds.attrs and int(ds.attrs["d"]) != d:
            raise HistoryError(
                f"history {self.path!r} holds results for d={ds.attrs['d']} features; this job's "
                f"features have d={d}: use another history"
            )

    def current(
        self, row: HistoryRow, options: dict[str, str], check_content: bool = False
    ) -> set[str]:
        """The metrics whose results for the entry ``row.name`` are recorded and came from
        what ``row`` describes: the same store listing and reference (and, ``check_content``,
        the same bytes), each under its options digest in ``options``.

        Args:
            row: the entry as a run would record it now.
            options: metric name → digest of its options
                (:meth:`shardeval.workflows.jobfile.Job.metric_digest`).
            check_content: compare ``row.content_digest`` too (``--verify``).

        Returns:
            The names among ``options`` that need not be computed again.
        """
        ds = self.load()
        if ds is None:
            return set()
        where = np.flatnonzero(ds["name"].values.astype(str) == row.name)
        if not where.size:
            return set()
        i = int(where[-1])
        if self._whole_job_done(ds, i, row, check_content):
            return set(options)
        done = set()
        for metric, digest in options.items():
            variable = provenance_variable(metric)
            if variable in ds.variables:
                text = str(ds[variable].values[i])
                if _computed_from(text, row, digest, check_content):
                    done.add(metric)
        return done

    @staticmethod
    def _whole_job_done(ds: Any, i: int, row: HistoryRow, check_content: bool) -> bool:
        """Whether row ``i`` was last written by a run of the same job (metrics and options:
        ``row.options``) on the same inputs, which computed, or found current, every metric of
        that job. (Rows written before metrics carried their own provenance decide so.)"""
        columns = ["fingerprint", "options", "reference_fingerprint"]
        if check_content:
            columns.append("content_digest")
        return all(
            column in ds.variables and str(ds[column].values[i]) == getattr(row, column)
            for column in columns
        )

    def declarations(self) -> dict[str, Any]:
        """Per metric, what it returned (outputs with units) and its plots."""
        ds = self.load()
        return json.loads(ds.attrs.get("metrics", "{}")) if ds is not None else {}

    def table(
        self, metric: str | None = None, *, look_at_stores: bool = True
    ) -> list[dict[str, Any]]:
        """Rows as dicts, ordered by step: the entry's name, step, tags and when its results
        were computed, then every scalar result (of one metric only when ``metric`` is given),
        then how the entry's features and its reference's were made (``features_made_by``,
        ``reference_made_by``: :func:`shardeval.workflows.madeby.shown`, None where not
        recorded), then which results are stale.

        Values: a count (an output in ``rows``) is an int; ±inf stays a float; a value never
        computed, or not asked for, is None. ``created`` is, with ``metric``, when that
        metric's results were computed; without, when the entry last ran, and each metric's
        own time is under ``METRIC.created``. ``stale`` maps each metric whose results no
        longer describe the entry's inputs to why (see the module's note).

        Args:
            metric: only this metric's results.
            look_at_stores: compare the recorded listings of local stores and references with
                their listings now (a directory walk each); else only with the entry's latest
                run.

        Raises:
            KeyError: ``metric`` is not in the history.
        """
        ds = self.load()
        if ds is None:
            return []
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

    # -- writing ------------------------------------------------------------------------------

    def append(
        self,
        row: HistoryRow,
        values: dict[str, Any],
        declarations: dict[str, Any],
        d: int,
        computed: dict[str, str] | None = None,
        features: dict[str, Any] | None = None,
        listings: dict[str, str] | None = None,
    ) -> None:
        """Record one entry's results as a new version. An earlier row of the same name is
        merged, not replaced: ``values`` replace the results of the same names, and every
        other result recorded for the entry is kept with its provenance.

        Args:
            row: the entry's provenance (of this run).
            values: the metrics' results by name (scalars, or 1-D arrays; None for an
                optional result not computed).
            declarations: per metric, :meth:`shardeval.pipeline.metrics.Metric.declaration`.
            d: the feature dimension of the job.
            computed: metric → its options digest, for the metrics whose results are in
                ``values``: recorded as their provenance, so that :meth:`current` finds them
                done (None: nothing recorded, and a job computes them again).
            features: how the entry's features were made (encoder, resize, weights digest),
                for an extraction store; every distinct one is kept in the ``features``
                attribute, which the report shows (what its numbers compare with).
            listings: the listing digests of the inputs as computed on, where a reader can
                cheaply look at them again (``store_listing``, ``reference_listing``: local
                stores), recorded with the computed metrics' provenance to tell stale results.

        Raises:
            HistoryError: the history is damaged, of another kind, or of another ``d``.
        """
        import xarray as xr

        data: dict[str, Any] = {k: ("entry", [v]) for k, v in asdict(row).items()}
        for key, value in values.items():
            if np.ndim(value) == 1:
                data[key] = (("entry", f"{key}_component"), np.asarray(value, np.float64)[None])
            else:  # None: an optional result the options did not ask for, recorded missing
                data[key] = ("entry", [math.nan if value is None else float(value)])
        for metric, options in (computed or {}).items():
            recorded = _metric_provenance(row, options, listings)
            data[provenance_variable(metric)] = ("entry", [recorded])
        new = xr.Dataset(data)
        with self._locked(exclusive=True):
            current = self._current()
            old = self._read(current) if current is not None else None
            if old is not None and "d" in old.attrs and int(old.attrs["d"]) != d:
                raise HistoryError(
                    f"history {self.path!r} holds results for d={old.attrs['d']} features, "
                    f"not d={d}"
                )
            known: dict[str, Any] = {}
            made: list[dict[str, Any]] = []
            if old is not None:
                known = json.loads(old.attrs.get("metrics", "{}"))
                made = json.loads(old.attrs.get("features", "[]"))
                names = old["name"].values.astype(str)
                new = _with_kept_results(new, old.isel(entry=np.flatnonzero(names == row.name)))
                old = old.isel(entry=np.flatnonzero(names != row.name))
                new = xr.concat(
                    [old, new],
                    dim="entry",
                    join="outer",
                    data_vars="all",
                    coords="different",
                    compat="equals",
                )
                new = _empty_where_never_computed(new)
            new.attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "d": int(d),
                "metrics": json.dumps({**known, **declarations}),
                "features": json.dumps(
                    [*made, features] if features and features not in made else made
                ),
                "updated": now_iso(),
                "versions": json.dumps(versions()),
                # Every chunk is stored, empty or not, so a missing one means damage.
                ALL_CHUNKS_ATTR: True,
            }
            for name in new.variables:
                new[name].encoding = {}
            os.makedirs(self.versions_dir, exist_ok=True)
            numbers = [int(os.path.basename(v)[1:]) for v in self._versions()]
            version = os.path.join(self.versions_dir, f"v{max(numbers, default=0) + 1:06d}")
            staging = os.path.join(self.versions_dir, f".tmp-{os.path.basename(version)}")
            shutil.rmtree(staging, ignore_errors=True)
            new.to_zarr(
                staging, mode="w", consolidated=False, zarr_format=2, write_empty_chunks=True
            )
            os.replace(staging, version)  # a version appears complete or not at all
            self._switch(version)
            self._collect(version)


def _with_kept_results(new: Any, earlier: Any) -> Any:
    """``new`` (one entry) with every variable of the entry's earlier row that it does not
    replace: the results (and their provenance) of metrics this run did not compute."""
    if not earlier.sizes.get("entry"):
        return new
    earlier = earlier.isel(entry=[-1])  # one row per name; the last if a writer left two
    kept = {name: earlier[name] for name in earlier.data_vars if name not in new.variables}
    return new.assign(kept)


def _empty_where_never_computed(ds: Any) -> Any:
    """Metric provenance as "" (never computed) in rows that lack it, where joining rows
    filled in NaN, so that the variable stays text."""
    for name in list(ds.data_vars):
        if str(name).endswith(_PROVENANCE_SUFFIX):
            ds[name] = ds[name].fillna("").astype(str)
    return ds
