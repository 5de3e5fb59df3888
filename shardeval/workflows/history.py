"""Run history: an xarray Dataset in Zarr, one row per evaluated entry (dim ``entry``), the
metrics' results side by side, provenance in variables and attributes.

Versions, switched in one step. ``HISTORY`` is a symbolic link to a complete version under
``HISTORY.versions/``; an append writes the next version beside the current one (under a
temporary name, renamed when complete), then replaces the link with one ``rename``, which is
atomic. A crash at any point leaves the old history or the new one, and a link lost between
steps is recovered from the newest complete version. Writers hold an exclusive lock
(``HISTORY.lock``); readers a shared one, so they always see one whole version. The version
before the current one is kept for readers that do not lock (``xr.open_zarr(HISTORY)``)
(:mod:`shardeval.workflows.history_versions`).

The history knows no metric by name: what each metric returned, with units and plots, is
described by the declarations that the metrics' plug-ins give and the history stores.

A history keeps every result it has recorded for an entry until that same metric is computed
for it again: a run writes the metrics it computed into the entry's row and keeps the others
(a job with another set of metrics adds columns; it removes none). So that a run can tell what
is already done, each metric's results carry their own provenance (``METRIC.provenance``, JSON:
the store's fingerprint, the metric's options, the reference, when), beside the entry's
provenance of its latest run (:mod:`shardeval.workflows.history_rows`).

A kept result may no longer describe its store: the store was rewritten and another job
recomputed only its own metrics, or nobody has run since. :meth:`History.table` says so, per
result (``stale``): its recorded store or reference digest differs from the one of the entry's
latest run, or (where that is cheap: a local store, a listing) from the store's listing now.
Such results are marked, not recomputed: recomputing one needs the options of the job that
asked for it, which the history of another job's run does not hold, and dropping it would
lose a result that is still right for the rows it was computed on.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shardeval.pipeline.io.provenance import now_iso, versions
from shardeval.workflows.history_rows import (
    LISTINGS,
    PROVENANCE,
    HistoryRow,
    computed_from,
    empty_where_never_computed,
    entry_dataset,
    provenance_variable,
    table_rows,
    whole_job_done,
    with_kept_results,
)
from shardeval.workflows.history_versions import (
    ALL_CHUNKS_ATTR,
    FORMAT,
    FORMAT_VERSION,
    HistoryError,
    HistoryVersions,
)

__all__ = [
    "ALL_CHUNKS_ATTR",
    "FORMAT",
    "FORMAT_VERSION",
    "LISTINGS",
    "PROVENANCE",
    "History",
    "HistoryError",
    "HistoryRow",
    "provenance_variable",
]


class History(HistoryVersions):
    """A history at ``path`` (a trailing slash is ignored)."""

    # -- reading ------------------------------------------------------------------------------

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
        if whole_job_done(ds, i, row, check_content):
            return set(options)
        done = set()
        for metric, digest in options.items():
            variable = provenance_variable(metric)
            if variable in ds.variables:
                text = str(ds[variable].values[i])
                if computed_from(text, row, digest, check_content):
                    done.add(metric)
        return done

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
        return table_rows(ds, metric, look_at_stores)

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

        new = entry_dataset(row, values, computed, listings)
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
                new = with_kept_results(new, old.isel(entry=np.flatnonzero(names == row.name)))
                old = old.isel(entry=np.flatnonzero(names != row.name))
                new = xr.concat(
                    [old, new],
                    dim="entry",
                    join="outer",
                    data_vars="all",
                    coords="different",
                    compat="equals",
                )
                new = empty_where_never_computed(new)
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
            self._write_version(new)
