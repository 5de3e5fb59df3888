"""Training-loop metrics that need every row: spilled, and computed by the plug-ins over the
spills."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.results import Report, jsonable
from shardeval.api.streaming.batches import (
    _SAME_ROWS,
    _check_choice,
    _check_engine_device,
    _first_rows,
    _tensor,
)
from shardeval.api.streaming.distributed import (
    SYNC_TIMEOUT_SECONDS,
    _made_here,
)
from shardeval.api.streaming.spill import SpilledMetric, _values_digest
from shardeval.pipeline.errors import (
    DtypeError,
    NonFiniteError,
    OptionError,
    ShapeError,
    ZeroRowError,
)

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource

#: The metrics a :class:`PairMetrics` computes by default.
_PAIR_METRICS = ("kid", "cmmd", "prdc")


def row_metrics() -> tuple[str, ...]:
    """The registered metrics a :class:`RowMetrics` computes: every one of two sets at most.
    (FID has a class of its own, :class:`~shardeval.api.streaming.fid.FID`, which keeps
    moments instead of rows; over rows, it takes what needs them: its interval's groups, «ci».
    The metrics that also read a held-out test set, C_T and FLD, are computed at once:
    ``se.ct``, ``se.fld``.)"""
    from shardeval.pipeline.metrics import METRICS

    return tuple(m for m, cls in METRICS.items() if not cls.needs_test)


#: Options that change a row metric's result: processes that sync must agree on them.
_RESULT_OPTIONS = ("subsets", "subset_size", "seed", "shard_rows", "precision")

#: What each entry of a row metric's identity asks of metrics that merge.
_PAIR_FIXES = {
    "metrics": "make them for the same metrics",
    "options": "make them with the same options",
    "reference": "give every one the same «reference»",
    "real": _SAME_ROWS,
    "gen": _SAME_ROWS,
}


class RowMetrics(SpilledMetric):
    r"""Registered metrics that read every row (KID, CMMD, PRDC, FID∞, IS, Gaussian NLL, FID
    with its interval, and any metric registered later), fed batch by batch, exact over all
    rows.

    The rows are spilled to a Zarr array per set in a work folder, chunk by chunk (memory: one
    chunk per set, :data:`~.spill.SPILL_CHUNK_BYTES`), and :meth:`compute` runs the metrics'
    plug-ins over the spills, as :func:`shardeval.metrics` runs them over stores: for the pair
    metrics the block-pair engine (no N × N matrix, no subsets unless KID's ``subsets`` asks
    for the peers' protocol). The report is the one-shot functions' for the concatenated rows,
    the metrics asked for in one report (the same bits: the spill is read in the shards those
    functions cut an array of the same rows into).

    Args:
        metrics: registered metric names (:func:`row_metrics`; default KID, CMMD and PRDC).
        reference: the real set given up front: a feature store (a path) or an array, as
            :func:`shardeval.kid` takes it, or statistics where every metric asked takes them
            (FID∞, Gaussian NLL); None: feed real rows with ``update(x, real=True)``
            (metrics of one set, the Inception Score, take none).
        work_dir: where the spills go: a folder of this object's own is made inside it and
            removed by :meth:`close` (nothing else there is touched). Default: a temporary
            folder. With a ``scheduler`` on other machines, it must be on a file system they
            share. A copy (``copy.deepcopy``) or an unpickled object makes a folder of its own
            there, with its rows.
        dtype: the spilled rows' dtype, ``"float32"`` or ``"float64"``; None: float64 for
            float64 (and wide integer) batches, float32 for the rest (exact for float16,
            bfloat16 and small integers). A batch the spill would round is refused.
        reset_real: whether :meth:`reset` also forgets real rows fed with ``real=True``.
        encoder, weights, resize, batch_size: how image batches become features, as for
            :func:`shardeval.extract` (default encoder: CLIP for CMMD alone, else the
            Inception).
        **options: the metrics' own options, with the defaults their declarations give
            (``subsets``, ``subset_size``, ``seed`` for KID; ``sigma``, ``unbiased`` for CMMD;
            ``k``, ``pr_k`` for PRDC), and the engine's as :func:`shardeval.kid` takes them
            (``shard_rows``: rows per block; ``split_every``, ``device``, ``backend``,
            ``precision``, ``scheduler``, ``cluster``, ``threads``, ``performance_report``,
            ``progress``, ``log``).
        process_group, sync_timeout: the ``torch.distributed`` group that :meth:`compute`
            and :meth:`sync` gather over (None: the whole job), and how long they wait for
            every rank of it (as for :class:`FID`; default :data:`SYNC_TIMEOUT_SECONDS`,
            from :data:`MIN_SYNC_TIMEOUT_SECONDS` to :data:`MAX_SYNC_TIMEOUT_SECONDS`).

    Merges and syncs compare the references by a digest of their values (BLAKE2b of the rows
    as read, so an array and a store of the same numbers agree, whatever their chunks or
    compression): it costs one more read of the reference, at the first merge or sync
    (every collective :meth:`compute` syncs), and is kept for the object's life (a store
    changed afterwards is not read again for it).

    Copies and pickles carry the rows: ``copy.deepcopy`` copies the spills chunk by chunk into
    a work folder of the copy's own; a pickle holds every row (as torchmetrics' KID state
    does), so that it unpickles anywhere, into a work folder of its own. A closed object holds
    no rows, and is neither copied nor pickled.

    Raises:
        TypeError: an option that none of the metrics takes.
        OptionError: unknown metrics; options that do not apply or fit; a ``work_dir``
            that is not a folder one can write in.
        EngineError: a device or kernel backend this machine cannot run (when the engine
            runs here: no ``scheduler`` address or ``cluster``).
        MetricOptionError: an option's value that its declaration refuses.
        StoreError, ShapeError: a reference that cannot be read.

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> with se.PairMetrics(("kid", "prdc"), k=3) as pm:
        ...     pm.update(rng.standard_normal((300, 8)), real=True)
        ...     for _ in range(3):
        ...         pm.update(rng.standard_normal((100, 8)) + 0.5)
        ...     report = pm.compute()
        >>> report["kid"]["kid_n_real"], report["kid"]["kid_n"], report["prdc"]["prdc_n"]
        (300, 300, 300)
        >>> report.to_dict()["options"]["prdc"]["k"]
        3
        >>> bool(float(report) > 0)                         # KID, the first metric
        True

    Distributed: every rank runs ``update`` on its own batches, then ``pm.compute()``
    (collective: every rank calls it; rank 0 receives every rank's rows and computes, every
    rank gets the result); ``pm.close()`` at the end.
    """

    state_format = "shardeval.RowMetrics"
    called = "a row metric (KID, CMMD, PRDC, …)"
    _fixes = _PAIR_FIXES

    def __init__(
        self,
        metrics: Sequence[str] = _PAIR_METRICS,
        reference: Any = None,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        dtype: str | None = None,
        reset_real: bool = True,
        encoder: str | None = None,
        weights: str | os.PathLike[str] | None = None,
        resize: str | None = None,
        batch_size: int | None = None,
        process_group: Any = None,
        sync_timeout: float | None = SYNC_TIMEOUT_SECONDS,
        **options: Any,
    ) -> None:
        from shardeval.api.evaluate import Evaluation
        from shardeval.api.inputs import IMAGE_OPTIONS
        from shardeval.pipeline.metrics import METRICS
        from shardeval.pipeline.runoptions import BY_NAME

        chosen = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        takes = row_metrics()
        if not chosen or set(chosen) - set(takes) or len(set(chosen)) != len(chosen):
            raise OptionError(f"«metrics» must name some of {takes}, each once; got {chosen!r}")
        declared = {p.name for m in chosen for p in METRICS[m].params}
        # The run options as the one-shot functions take them (images here are batches: the
        # encoder's options are this class's own, and rows are read from the spills whole).
        engine = set(BY_NAME) - {*IMAGE_OPTIONS, "array"}
        unknown = sorted(set(options) - declared - engine)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {unknown}")
        given = {k: v for k, v in options.items() if v is not None}
        # The options routed once, as compute() hands them to the plug-ins: checked here as the
        # one-shot functions check them (the plug-ins' declarations; run options that no metric
        # asked takes refused).
        self._metric_options = {k: v for k, v in given.items() if k in declared}
        self._run_options = {k: v for k, v in given.items() if k not in declared}
        evaluation = Evaluation(
            list(chosen), metric_options=self._metric_options, run_options=self._run_options
        )
        self._params = {m.name: dict(m.options) for m in evaluation.instances}
        self._reads = {m.reads for m in evaluation.instances}
        self._one_set = not any(m.needs_reference for m in evaluation.instances)
        # Non-finite rows go to the spill only for metrics that all drop them themselves.
        self._drops = all(m.options.get("nonfinite") == "drop" for m in evaluation.instances)
        _check_choice("dtype", dtype, (None, "float32", "float64"))
        super().__init__(
            encoder or ("clip-vitl14-336" if chosen == ("cmmd",) else "inception"),
            weights,
            resize,
            batch_size,
            process_group,
            sync_timeout,
        )
        _check_engine_device(options)
        self.metrics, self.options = chosen, options
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.reset_real = bool(reset_real)
        self._reference: Any = None
        self._reference_digest: str | None = None
        if reference is not None:
            if self._one_set:
                raise OptionError(
                    f"{'/'.join(chosen)} measure the generated set alone: give no «reference»"
                )
            self._reference = _row_reference(reference, chosen, options.get("shard_rows"))
            self._given, self._d = True, self._reference.d
            self._reference_extractor = getattr(self._reference, "feature_extractor", None)
        self._work_dir = None if work_dir is None else os.fspath(work_dir)
        self._open_folder()
        self._global: Report | None = None
        self._order = _made_here("/".join(chosen))

    def update(self, x: Any, real: bool = False) -> None:
        """Append a batch of rows: features ``(B, d)``, or images ``(B, 3, H, W)``.

        Args:
            x: a tensor on any device or a numpy array (see :meth:`FID.update`).
            real: reference rows (only when no reference was given up front).

        Raises:
            OptionError: ``real`` not a bool; ``real=True`` with a reference given up front; a
                closed metric; rows made otherwise than the side's earlier rows (feature rows
                and images, or images through another encoder, resize or weights).
            ShapeError: wrong rank, no features, or d unlike earlier batches or the reference.
            DtypeError: not real numbers (or a meta tensor; a sparse or nested tensor), or
                float64 rows for float32 spills.
            NonFiniteError: rows with NaN or inf, unless every metric asked takes
                «nonfinite='drop'» (they are then spilled and dropped by the metrics).
            ZeroRowError: a row of zeros for CMMD (it scales rows to unit norm).
            NumericalError: integers beyond 2^53.
        """
        self._live()
        if real is True and self._one_set:
            raise OptionError(
                f"{'/'.join(self.metrics)} measure the generated set alone: update(x) without "
                "«real»"
            )
        if "logits" in self._reads and getattr(x, "ndim", None) == 4:
            raise ShapeError(
                f"{'/'.join(self.metrics)} read class logits: update() takes the logits (B, C) "
                "of each batch (the Inception's, or a classifier's), not images"
            )
        side, rows, what = self._rows(x, real, self.options.get("device"))
        if rows.shape[0] == 0:
            return
        self._append(side, rows, what)
        self._made_rows(side)

    def _append(self, side: str, rows: Any, what: str) -> None:
        """Checked rows (a tensor or an array) onto the side's spill."""
        import torch

        rows = _tensor(rows, what)
        spill = self._spills[side]
        wide = rows.dtype == torch.float64
        dtype = self.dtype or spill.dtype or np.dtype(np.float64 if wide else np.float32)
        if dtype == np.float32 and wide:
            raise DtypeError(
                f"{what} has float64 rows, but the {side} rows are spilled as float32: pass "
                "«dtype='float64'» to keep every digit (or cast the batches to float32)"
            )
        finite = torch.isfinite(rows).all(dim=1)
        if not bool(finite.all()) and not self._drops:
            raise NonFiniteError(
                f"{what} has {_first_rows(~finite)} with NaN or inf; clean them, or make the "
                "metrics with «nonfinite='drop'» where they all take it"
            )
        zero = ~(rows != 0).any(dim=1)
        if "cmmd" in self.metrics and bool(zero.any()):
            raise ZeroRowError(
                f"{what} has {_first_rows(zero)} of zeros: CMMD scales each row to unit norm, "
                "which a zero row does not have; remove them"
            )
        spill.append(rows.to(getattr(torch, dtype.name)).cpu().numpy())
        self._global = None

    def _identity(self) -> dict[str, Any]:
        """What processes or objects whose rows are put together must agree on: the metrics
        and the options that change their results, the reference (its size and the digest of
        its values) and how each side's rows were made."""
        from shardeval.api.streaming.running import _digest
        from shardeval.pipeline.fid.gaussian import Gaussian

        ref = self._reference
        if isinstance(ref, Gaussian):
            self._reference_digest = _digest(ref)
            reference = f"statistics of d={ref.d} of digest {self._reference_digest}"
        elif ref is not None:
            if self._reference_digest is None:
                self._reference_digest = _values_digest(ref)
            reference = f"{ref.n} x {ref.d} {ref.dtype} rows of digest {self._reference_digest}"
        given = {k: self.options[k] for k in _RESULT_OPTIONS if self.options.get(k) is not None}
        return {
            "metrics": self.metrics,
            "options": {**self._params, **given},
            "reference": None if ref is None else reference,
            "real": self._made["real"],
            "gen": self._made["gen"],
        }

    def _compute(
        self,
        paths: dict[str, str],
        processes: int,
        described: dict[str, dict[str, Any] | None],
    ) -> Report:
        """The report over the spills at ``paths`` (by side; a side without rows has none),
        whose rows were made as ``described`` says (by side; None: feature rows)."""
        from shardeval.api.evaluate import evaluate

        if self._reference is None and "real" not in paths and not self._one_set:
            raise OptionError(
                "no reference: pass «reference» (a feature store) or feed real rows with "
                "update(x, real=True)"
            )
        if "gen" not in paths:
            raise ShapeError(f"{'/'.join(self.metrics)} need generated rows: call update(x)")
        real = self._reference
        if real is None and not self._one_set:
            real = self._source(paths["real"], described["real"])
        gen = self._source(paths["gen"], described["gen"])
        # The one-shot functions' path: the plug-ins compute, on the spills as feature stores.
        report = evaluate(
            list(self.metrics),
            real,
            gen,
            metric_options=self._metric_options,
            run_options=self._run_options,
        )
        data = {**report.data, "processes": processes}
        return Report(report.metric, report.results, data, report.text, report.value)

    def _source(self, path: str, described: dict[str, Any] | None) -> FeatureSource:
        """A spill as a feature source, in the shards that :func:`shardeval.kid` cuts an array
        of the same rows into (as :func:`shardeval.api.inputs.features` does), described with
        how its rows were made (``described``: image rows; None: feature rows, which record
        nothing), as the feature cache's store of the same images describes itself."""
        import zarr

        from shardeval.api.inputs import _SHARD_BYTES
        from shardeval.pipeline.io.stores import open_features

        array = zarr.open_array(path, mode="r")
        d, itemsize = array.shape[1], array.dtype.itemsize
        rows = self.options.get("shard_rows") or max(1, _SHARD_BYTES // (d * itemsize))
        source = open_features(path, shard_rows=rows)
        if described is None:
            return source
        return dataclasses.replace(
            source,
            feature_extractor=described["feature_extractor"],
            extraction=described["extraction"],
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        options = self._identity()["options"]
        return {
            "metrics": ",".join(self.metrics),
            "options": json.dumps(jsonable(options), sort_keys=True),
        }

    def __repr__(self) -> str:
        real = "given" if self._given else f"{self._spills['real'].n} rows"
        return (
            f"{type(self).__name__}(metrics={self.metrics}, real={real}, "
            f"gen={self._spills['gen'].n} rows, folder={self.folder!r}, synced={self.synced})"
        )


def _row_reference(x: Any, metrics: tuple[str, ...], shard_rows: int | None) -> Any:
    """The real set given up front, opened as the one-shot functions open their ``real``:
    statistics (a ``Gaussian``) where every metric asked takes them, else a feature source."""
    from shardeval.api.inputs import describe_input, features, is_statistics, statistics
    from shardeval.pipeline.metrics import METRICS

    if is_statistics(x):
        readers = [m for m in metrics if "real" not in METRICS[m].takes_statistics]
        if readers:
            raise OptionError(
                f"{describe_input(x)!r} holds statistics (a mean and covariance), but "
                f"{'/'.join(readers)} need every reference row: give the feature store"
            )
        return statistics(x)
    return features(x, shard_rows=shard_rows)
