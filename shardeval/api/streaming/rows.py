"""Training-loop metrics that need every row: spilled, and computed by the plug-ins over the
spills."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.results import Report
from shardeval.api.streaming.batches import (
    _SAME_ROWS,
    _SIDES,
    _Batches,
    _check_choice,
    _first_rows,
    _refuse_differences,
    _tensor,
)
from shardeval.api.streaming.distributed import (
    SYNC_TIMEOUT_SECONDS,
    _collective,
    _Group,
    _group,
    _labelled_local,
    _made_here,
)
from shardeval.api.streaming.spill import _chunk_rows, _Spill, _SpilledRows
from shardeval.pipeline.errors import (
    DtypeError,
    NonFiniteError,
    OptionError,
    ShapeError,
    ZeroRowError,
)

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource

#: The metrics a :class:`PairMetrics` computes.
_PAIR_METRICS = ("kid", "cmmd", "prdc")

#: Options that change a pair metric's result: processes that sync must agree on them.
_RESULT_OPTIONS = ("subsets", "subset_size", "seed", "shard_rows", "precision")

#: What each entry of a pair metric's identity asks of metrics that merge.
_PAIR_FIXES = {
    "metrics": "make them for the same metrics",
    "options": "make them with the same options",
    "reference": "give every one the same «reference»",
    "real": _SAME_ROWS,
    "gen": _SAME_ROWS,
}


def _values_digest(source: FeatureSource) -> str:
    """BLAKE2b of a feature source's shape, dtype and values, read shard by shard in row
    order: the digest of the values as read, so that an array and a store of the same
    numbers agree whatever their chunks, compression or byte order. One read of the source."""
    h = hashlib.blake2b(digest_size=16)
    dtype = source.dtype.newbyteorder("=")
    h.update(f"{source.n} {source.d} {dtype.name}\n".encode())
    array = source.array
    for i in range(array.numblocks[0]):
        block = np.asarray(array.blocks[i].compute(scheduler="sync"))
        h.update(np.ascontiguousarray(block, dtype=dtype).tobytes())
    return h.hexdigest()


def _check_engine_device(options: dict[str, Any]) -> None:
    """Refuse now a ``device`` or ``backend`` that the engine could not run: when it runs on
    this machine (no scheduler address, no cluster), the machine's devices decide; else only
    the names are checked (the workers' devices are not this machine's).

    Raises:
        EngineError: naming the device or backend and what to use instead.
    """
    from shardeval.pipeline.core.chunks import check_device
    from shardeval.pipeline.core.engine import LOCAL_SCHEDULERS

    scheduler = options.get("scheduler")
    name = scheduler if scheduler is None or isinstance(scheduler, str) else "distributed"
    name = name or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
    local = not options.get("cluster") and name in LOCAL_SCHEDULERS
    check_device(options.get("device") or "auto", options.get("backend") or "auto", local=local)


class PairMetrics(_Batches):
    r"""KID, CMMD and/or PRDC, exact over all pairs, fed batch by batch.

    The rows are spilled to a Zarr array per set in a work folder, chunk by chunk (memory: one
    chunk per set, :data:`SPILL_CHUNK_BYTES`), and :meth:`compute` runs the block-pair engine
    of :func:`shardeval.kid` over them: no N × N matrix, and no subsets unless KID's
    ``subsets`` asks for the peers' protocol. The result is the report that
    :func:`shardeval.kid`, :func:`shardeval.cmmd` and :func:`shardeval.prdc` give for the
    concatenated rows, the metrics asked for in one report (the same bits: the spill is read in
    the shards those functions cut an array of the same rows into).

    Args:
        metrics: any of ``"kid"``, ``"cmmd"``, ``"prdc"``.
        reference: the real set given up front: a feature store (a path) or an array, as
            :func:`shardeval.kid` takes it; None: feed real rows with ``update(x, real=True)``.
            (Statistics hold no rows: pair metrics cannot use them.)
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
        from shardeval.api.functions import refuse
        from shardeval.api.inputs import IMAGE_OPTIONS
        from shardeval.api.samples import _ENGINE_PARAMS, _declared, _params, _refuse_fp32_sums
        from shardeval.pipeline.metrics import METRICS

        chosen = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        if not chosen or set(chosen) - set(_PAIR_METRICS) or len(set(chosen)) != len(chosen):
            raise OptionError(
                f"«metrics» must name some of {_PAIR_METRICS}, each once; got {chosen!r}"
            )
        declared = {p.name for m in chosen for p in METRICS[m].params}
        # The engine's options as shardeval.kid takes them (images here are batches: the
        # encoder's options are this class's own).
        engine = {name for name, _, _ in _ENGINE_PARAMS} - {*IMAGE_OPTIONS, "array"}
        unknown = sorted(set(options) - declared - engine)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {unknown}")
        # As shardeval.kid and the others check them.
        if set(chosen) <= {"kid", "cmmd"}:
            _refuse_fp32_sums(chosen, options.get("precision"))
        if "kid" in chosen:
            _declared("kid", options)
            if options.get("subsets"):
                why = "apply to the exact estimator, not to «subsets»"
                refuse(options, ("split_every", "device", "backend"), why)
        self._params = _params(chosen, options)
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
        self._reference: FeatureSource | None = None
        self._reference_digest: str | None = None
        if reference is not None:
            self._reference = _pair_reference(reference, chosen, options.get("shard_rows"))
            self._given, self._d = True, self._reference.d
            self._reference_extractor = self._reference.feature_extractor
        self._work_dir = None if work_dir is None else os.fspath(work_dir)
        self._open_folder()
        self._global: Report | None = None
        self._order = _made_here("/".join(chosen))

    def _open_folder(self) -> None:
        """A work folder of this object's own, with empty spills: removed with it, and only
        it, whatever else ``work_dir`` holds.

        Raises:
            OptionError: ``work_dir`` is a file, or a folder cannot be made in it.
        """
        parent = self._work_dir
        if parent is not None and os.path.exists(parent) and not os.path.isdir(parent):
            raise OptionError(
                f"«work_dir» {parent!r} is a file: give a folder (this metric makes a folder of "
                "its own inside it)"
            )
        try:
            if parent is not None:
                os.makedirs(parent, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix="shardeval-pairs-", dir=parent)
        except OSError as exc:
            raise OptionError(
                f"«work_dir» {parent!r} cannot hold a folder of this metric's: "
                f"{exc.strerror or exc}; give a folder one can write in"
            ) from None
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self._spills = {side: _Spill(os.path.join(self.folder, f"{side}.zarr")) for side in _SIDES}

    def _state(self) -> dict[str, Any]:
        """What a copy or a pickle carries: everything but the work folder, and the rows."""
        self._live()
        kept = ("folder", "_finalizer", "_spills")
        state = {k: v for k, v in self.__dict__.items() if k not in kept}
        state["_rows"] = {s: _SpilledRows(sp) if sp.n else None for s, sp in self._spills.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        rows = state.pop("_rows")
        self.__dict__.update(state)
        self._order = _made_here(self._order[0])  # a copy is a metric this process made
        self._open_folder()
        for side, held in rows.items():
            if held is None:
                continue
            for chunk in held.spill.chunks() if isinstance(held, _SpilledRows) else [held]:
                self._spills[side].append(chunk)

    def __enter__(self) -> PairMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove this object's work folder (and its spills); it cannot be used afterwards."""
        self._finalizer()
        self._global = None

    def _live(self) -> None:
        if not self._finalizer.alive:
            raise OptionError("this metric was closed; make a new one")

    @property
    def synced(self) -> bool:
        """Whether this process holds the result over every process's rows (after
        :meth:`sync` or a collective :meth:`compute`, until the next update, merge or reset):
        a :meth:`compute` after which no rank has changed returns it without a gather."""
        return self._global is not None

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
            NonFiniteError: rows with NaN or inf (pair metrics need every row).
            ZeroRowError: a row of zeros for CMMD (it scales rows to unit norm).
            NumericalError: integers beyond 2^53.
        """
        self._live()
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
        if not bool(finite.all()):
            raise NonFiniteError(
                f"{what} has {_first_rows(~finite)} with NaN or inf; pair metrics need every "
                "row: clean them"
            )
        zero = ~(rows != 0).any(dim=1)
        if "cmmd" in self.metrics and bool(zero.any()):
            raise ZeroRowError(
                f"{what} has {_first_rows(zero)} of zeros: CMMD scales each row to unit norm, "
                "which a zero row does not have; remove them"
            )
        spill.append(rows.to(getattr(torch, dtype.name)).cpu().numpy())
        self._global = None

    def reset(self) -> None:
        """Forget the generated rows, and the real rows fed with ``real=True`` when
        ``reset_real`` (a reference given up front stays)."""
        self._live()
        self._global = None
        self._spills["gen"].clear()
        self._forget_rows("gen")
        if self.reset_real:
            self._spills["real"].clear()
        if self._spills["real"].n == 0:
            self._forget_rows("real")
            if not self._given:
                self._d = None

    def merge(self, other: PairMetrics) -> PairMetrics:
        """Append another object's rows after this one's, in place (returns ``self``).

        Raises:
            OptionError: ``other`` asks for other metrics or options, has another reference
                (compared by the digest of its values), or rows made otherwise on a side
                (feature rows and images, or images through another encoder, resize or
                weights); the message names what differs.
            DtypeError: float64 rows of ``other`` for this object's float32 spills.
        """
        self._live()
        if not isinstance(other, PairMetrics):
            raise OptionError(
                f"merge() takes a pair metric with the same metrics, options and reference, "
                f"got {type(other).__name__}"
            )
        other._live()
        labels = ("this pair metric", "the pair metric given")
        _refuse_differences("merge()", labels, [self._identity(), other._identity()], _PAIR_FIXES)
        for side in _SIDES:
            for rows in other._spills[side].chunks():
                if self._d is not None and rows.shape[1] != self._d:
                    raise ShapeError(
                        f"merge(): the pair metric given has d={rows.shape[1]} features per "
                        f"row, this one d={self._d}; compare features of one model"
                    )
                self._d = rows.shape[1]
                self._append(side, rows, f"merge() ({side} rows of the pair metric given)")
        self._take_rows_of([other._made[s] for s in _SIDES], [other._described[s] for s in _SIDES])
        return self

    def _identity(self) -> dict[str, Any]:
        """What processes or objects whose rows are put together must agree on: the metrics
        and the options that change their results, the reference (its size and the digest of
        its values) and how each side's rows were made."""
        ref = self._reference
        if ref is not None and self._reference_digest is None:
            self._reference_digest = _values_digest(ref)
        given = {k: self.options[k] for k in _RESULT_OPTIONS if self.options.get(k) is not None}
        return {
            "metrics": self.metrics,
            "options": {**self._params, **given},
            "reference": None
            if ref is None
            else f"{ref.n} x {ref.d} {ref.dtype} rows of digest {self._reference_digest}",
            "real": self._made["real"],
            "gen": self._made["gen"],
        }

    def compute(self, sync: bool = True) -> Report:
        """The metrics over every pair of rows: every process's under ``torch.distributed``.

        Under a process group of more than one rank (``process_group``, default the whole
        job), this is a collective, as torchmetrics' ``compute`` is: **every rank of the group
        calls it**; rank 0 gathers every rank's rows and computes, as :meth:`sync` does, and
        every rank gets the result. When no rank has changed its rows since the last gather,
        only a cheap agreement runs and the result kept is returned. A rank that calls it
        alone raises at ``sync_timeout``.

        Args:
            sync: False: this rank's rows alone, without communication, on purpose; the
                report is labelled ``local`` when in a group of more than one rank.

        Returns:
            The :class:`~shardeval.api.results.Report` that :func:`shardeval.kid`,
            :func:`shardeval.cmmd` and :func:`shardeval.prdc` give for these rows:
            ``results[name]`` each metric's typed result, ``float()`` the first one's headline,
            ``to_dict()`` the JSON report, with ``processes``: how many processes' rows it
            holds, and ``local`` (``rank``, ``world_size``) when it holds this rank's alone.

        Raises:
            OptionError: no reference; ranks that gather other metrics (see :meth:`sync`);
                processes whose metrics differ in metrics, options, reference or how their
                rows were made.
            ShapeError: fewer than 2 rows on a side, or k not below a set's rows.
            EngineError: not every rank of the group called it within ``sync_timeout``.
        """
        self._live()
        g = _collective(self.process_group) if sync else None
        if g is not None and g.meet(self._changed(g), self.sync_timeout, "compute()"):
            self._sync(g, "compute()")
        if sync and self._global is not None:
            return self._global
        for spill in self._spills.values():
            spill.flush()
        paths = {s: sp.path for s, sp in self._spills.items() if sp.n}
        report = self._compute(paths, 1, self._described)
        return _labelled_local(report, self.process_group)

    def _changed(self, g: _Group) -> bool:
        """Whether this rank's rows differ from those of the last gather over ``g``."""
        return self._global is None or self._synced_over != g.ranks

    def _compute(
        self,
        paths: dict[str, str],
        processes: int,
        described: dict[str, dict[str, Any] | None],
    ) -> Report:
        """The report over the spills at ``paths`` (by side; a side without rows has none),
        whose rows were made as ``described`` says (by side; None: feature rows)."""
        from shardeval.api.evaluate import evaluate
        from shardeval.pipeline.metrics import METRICS

        if self._reference is None and "real" not in paths:
            raise OptionError(
                "no reference: pass «reference» (a feature store) or feed real rows with "
                "update(x, real=True)"
            )
        if "gen" not in paths:
            raise ShapeError(f"{'/'.join(self.metrics)} need generated rows: call update(x)")
        real = self._reference or self._source(paths["real"], described["real"])
        gen = self._source(paths["gen"], described["gen"])
        # The one-shot functions' path: the plug-ins compute, on the spills as feature stores.
        declared = {p.name for m in self.metrics for p in METRICS[m].params}
        given = {k: v for k, v in self.options.items() if v is not None}
        report = evaluate(
            list(self.metrics),
            real,
            gen,
            metric_options={k: v for k, v in given.items() if k in declared},
            run_options={k: v for k, v in given.items() if k not in declared},
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

    def sync(self, group: Any = None) -> None:
        """Bring every process's rows to rank 0 of ``group`` in rank order, compute there, and
        hand the result to every rank (a collective: every process of ``group`` calls it).
        :meth:`compute` does this itself when a rank's rows changed; calling it is needed only
        to gather at another moment.

        Rank 0 then holds the rows that one process fed every rank's batches (rank 0's first)
        would hold, in the same order and the same shards: the result is that process's, bit
        for bit. The rows travel through ``torch.distributed`` one spill chunk at a time (no
        shared file system is needed); rank 0 writes them into its work folder and removes
        them once computed. Afterwards :meth:`compute` returns the result on every rank, until
        the next update, merge or reset.

        Args:
            group: a ``torch.distributed`` process group (default: this metric's
                ``process_group``, else the whole job).

        Raises:
            EngineError: ``torch.distributed`` is not initialised; not every rank called it
                within ``sync_timeout``.
            OptionError: the ranks gather other metrics (of another kind, or made in another
                order: ranks make their metrics, and call their syncs, in the same order); the
                processes were made with other metrics, options or references, or their rows
                were made otherwise (the message names the ranks and what differs).
            ShapeError, DtypeError: the processes' rows differ in d or dtype.
            Whatever :meth:`compute` raises on rank 0, on every rank.
        """
        self._live()
        g = _group(self.process_group if group is None else group)
        g.meet(True, self.sync_timeout, "sync()")
        self._sync(g, "sync()")

    def _sync(self, g: _Group, what: str) -> None:
        """The gather and the computation on rank 0, once every rank of ``g`` is here
        (``what``: the call, for messages)."""
        for spill in self._spills.values():
            spill.flush()
        held = {
            s: (sp.n, None if sp.dtype is None else sp.dtype.name) for s, sp in self._spills.items()
        }
        described = self._described
        shares = g.gather_alike(self._order, (self._identity(), self._d, held, described), what)
        labels = [f"rank {r}" for r in range(g.size)]
        _refuse_differences(what, labels, [s[0] for s in shares], _PAIR_FIXES)
        dims = sorted({s[1] for s in shares if s[1] is not None})
        if len(dims) > 1:
            raise ShapeError(f"{what}: feature dimensions differ between processes: d = {dims}")
        for side in _SIDES:
            kinds = sorted({s[2][side][1] for s in shares if s[2][side][0]})
            if len(kinds) > 1:
                raise DtypeError(
                    f"{what}: the processes spilled {side} rows of different dtypes {kinds}; "
                    "pass the same «dtype» (e.g. 'float64') to every process"
                )
        # How each side's rows were made: the first rank's that holds some (every rank that
        # holds some made them alike: the identities agree).
        described = {
            side: next((s[3][side] for s in shares if s[3][side] is not None), None)
            for side in _SIDES
        }
        paths = {}
        for side in _SIDES:
            sizes = [s[2][side] for s in shares]
            if any(n for n, _ in sizes):
                paths[side] = self._gather(g, side, sizes, dims[0])
        outcome: Any = None
        if g.rank == 0:
            try:
                outcome = self._compute(paths, g.size, described)
            except Exception as exc:  # handed to every rank, so that none waits forever
                outcome = exc
            finally:
                for path in paths.values():
                    shutil.rmtree(path, ignore_errors=True)
        outcome = g.broadcast(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        self._global, self._synced_over = outcome, g.ranks

    def _gather(self, g: _Group, side: str, sizes: list[tuple[int, str | None]], d: int) -> str:
        """Rank 0 copies its own rows of ``side``, then receives every other rank's, chunk by
        chunk, into one spill (rank r sends its own); returns that spill's path."""
        import torch
        import torch.distributed as dist

        path = os.path.join(self.folder, f"synced-{side}.zarr")
        target = _Spill(path) if g.rank == 0 else None
        device = torch.device("cpu")
        if dist.get_backend(g.handle) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        for rank, (n, dtype) in enumerate(sizes):
            if not n or dtype is None:
                continue
            if g.rank == rank:
                for rows in self._spills[side].chunks():
                    if target is not None:
                        target.append(rows)
                    else:
                        dist.send(torch.from_numpy(rows).to(device), dst=g.root, group=g.handle)
            elif target is not None:
                step = _chunk_rows(d, np.dtype(dtype))
                for start in range(0, n, step):
                    shape = (min(step, n - start), d)
                    received = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
                    dist.recv(received, src=g.global_rank(rank), group=g.handle)
                    target.append(received.cpu().numpy())
        if target is not None:
            target.flush()
        return path

    def __repr__(self) -> str:
        real = "given" if self._given else f"{self._spills['real'].n} rows"
        return (
            f"{type(self).__name__}(metrics={self.metrics}, real={real}, "
            f"gen={self._spills['gen'].n} rows, folder={self.folder!r}, synced={self.synced})"
        )


def _pair_reference(x: Any, metrics: tuple[str, ...], shard_rows: int | None) -> FeatureSource:
    """The real set given up front, opened as :func:`shardeval.kid` opens its ``real``."""
    from shardeval.api.inputs import describe_input, features, is_statistics

    if is_statistics(x):
        raise OptionError(
            f"{describe_input(x)!r} holds statistics (a mean and covariance), but "
            f"{'/'.join(metrics)} need every reference row: give the feature store"
        )
    return features(x, shard_rows=shard_rows)


class KID(PairMetrics):
    """:class:`PairMetrics` of KID alone: ``compute()`` is the report of :func:`shardeval.kid`.

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> rng = np.random.default_rng(1)
        >>> with se.KID() as kid:
        ...     kid.update(rng.standard_normal((200, 6)), real=True)
        ...     kid.update(rng.standard_normal((200, 6)) + 1.0)
        ...     value = float(kid.compute())
        >>> value > 0
        True
    """

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("kid",), reference, **options)


class CMMD(PairMetrics):
    """:class:`PairMetrics` of CMMD alone (images go through the CLIP encoder by default):
    ``compute()`` is the report of :func:`shardeval.cmmd`."""

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("cmmd",), reference, **options)


class PRDC(PairMetrics):
    """:class:`PairMetrics` of precision, recall, density and coverage: ``compute()`` is the
    report of :func:`shardeval.prdc`."""

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("prdc",), reference, **options)
