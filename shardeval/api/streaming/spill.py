"""Rows spilled to a Zarr array in a work folder, one whole chunk at a time: what a training-loop
metric that needs every row keeps."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.results import Report
from shardeval.api.streaming.base import TrainingMetric
from shardeval.api.streaming.batches import (
    _SIDES,
    _refuse_differences,
)
from shardeval.api.streaming.checkpoint import (
    _made_entries,
    _read_made,
    _state_text,
    _state_value,
)
from shardeval.api.streaming.distributed import _Group, _made_here
from shardeval.pipeline.errors import DtypeError, OptionError, ShapeError, StatsFormatError

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource

    pass


#: Bytes of one spilled chunk (and of the buffer that fills it): what a pair metric holds in
#: memory per set, and what one message carries when rows travel to rank 0.
SPILL_CHUNK_BYTES = 8 * 2**20


def _chunk_rows(d: int, dtype: np.dtype) -> int:
    return max(1, SPILL_CHUNK_BYTES // max(1, d * dtype.itemsize))


class _Spill:
    """One set's rows, appended to a Zarr array ``(n, d)`` one whole chunk at a time.

    Memory: one chunk (the buffer). :meth:`flush` writes a partial last chunk and keeps it in
    the buffer, so that the chunk is written whole once it fills. The fill value is NaN: a
    chunk that was never written cannot pass for rows.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.array: Any = None
        self.buffer: np.ndarray | None = None
        self.start = 0  # rows stored before the buffer's first row (whole chunks)
        self.filled = 0  # rows in the buffer

    @property
    def n(self) -> int:
        return self.start + self.filled

    @property
    def dtype(self) -> np.dtype | None:
        return None if self.buffer is None else self.buffer.dtype

    def append(self, rows: np.ndarray) -> None:
        if self.buffer is None:
            import zarr

            d = rows.shape[1]
            chunk = _chunk_rows(d, rows.dtype)
            self.array = zarr.create_array(
                self.path,
                shape=(0, d),
                chunks=(chunk, d),
                dtype=rows.dtype,
                fill_value=np.nan,
                compressors=None,  # features hardly compress; the CPU time is better spent
                dimension_names=("sample", "feature"),
                config={"write_empty_chunks": True},
            )
            self.buffer = np.empty((chunk, d), dtype=rows.dtype)
        pos = 0
        while pos < len(rows):
            take = min(len(self.buffer) - self.filled, len(rows) - pos)
            self.buffer[self.filled : self.filled + take] = rows[pos : pos + take]
            self.filled += take
            pos += take
            if self.filled == len(self.buffer):
                self.flush()
                self.start += self.filled
                self.filled = 0

    def flush(self) -> None:
        if self.filled and self.buffer is not None:
            stop = self.start + self.filled
            if self.array.shape[0] < stop:
                self.array.resize((stop, self.array.shape[1]))
            self.array[self.start : stop] = self.buffer[: self.filled]

    def chunks(self) -> Iterator[np.ndarray]:
        """The rows, one spill chunk at a time."""
        self.flush()
        step = 1 if self.buffer is None else len(self.buffer)
        for start in range(0, self.n, step):
            yield np.asarray(self.array[start : min(start + step, self.n)])

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.array, self.buffer, self.start, self.filled = None, None, 0, 0


class _SpilledRows:
    """A spill's rows as a copy or a pickle takes them: ``copy.deepcopy`` hands the spill
    itself to the copy, which reads it chunk by chunk (never every row in memory); a pickle
    holds every row, as one array."""

    def __init__(self, spill: _Spill) -> None:
        self.spill = spill

    def __deepcopy__(self, memo: dict[int, Any]) -> _SpilledRows:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (np.asarray, (np.concatenate(list(self.spill.chunks())),))


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


def gather_rows(
    g: _Group, mine: _Spill, path: str, sizes: list[tuple[int, str | None]], d: int
) -> str:
    """Every rank's rows of one side onto rank 0, in rank order, into a spill at ``path``:
    rank 0 copies its own (``mine``), then receives every other rank's chunk by chunk, as
    each sends its own (``sizes``: each rank's count and dtype); returns ``path``."""
    import torch
    import torch.distributed as dist

    target = _Spill(path) if g.rank == 0 else None
    device = torch.device("cpu")
    if dist.get_backend(g.handle) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    for rank, (n, dtype) in enumerate(sizes):
        if not n or dtype is None:
            continue
        if g.rank == rank:
            for rows in mine.chunks():
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


class SpilledMetric(TrainingMetric):
    """A training-loop metric whose state is its rows: each side spilled to a work folder of
    the object's own (``folder``, made in ``_work_dir``, removed by :meth:`close` or when the
    object is collected, never anything else there). Merges append the other's rows; a sync
    brings every rank's rows to rank 0 in rank order, which computes and hands the result to
    every rank; copies and pickles carry the rows into a folder of their own; a state dict
    carries them as tensors.

    Subclasses write :meth:`_append` (a checked batch onto a side's spill), :meth:`_compute`
    (the report over the spills) and :meth:`_identity`.
    """

    _work_dir: str | None
    #: the reference given up front (None: none)
    _reference: Any = None

    def _append(self, side: str, rows: Any, what: str) -> None:
        raise NotImplementedError

    def _compute(
        self, paths: dict[str, str], processes: int, described: dict[str, dict[str, Any] | None]
    ) -> Report:
        """The report over the spills at ``paths`` (by side; a side without rows has none),
        whose rows were made as ``described`` says (by side; None: feature rows), holding
        the rows of ``processes`` processes."""
        raise NotImplementedError

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

    def __enter__(self) -> Any:
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

    def _held(self, side: str) -> int:
        return self._spills[side].n

    def _clear(self, side: str) -> None:
        self._spills[side].clear()

    def _absorb(self, other: SpilledMetric) -> None:
        """Append ``other``'s rows after this one's, side by side, chunk by chunk."""
        for side in _SIDES:
            for rows in other._spills[side].chunks():
                if self._d is not None and rows.shape[1] != self._d:
                    raise ShapeError(
                        f"merge(): the metric given has d={rows.shape[1]} features per row, "
                        f"this one d={self._d}; compare features of one model"
                    )
                self._d = rows.shape[1]
                self._append(side, rows, f"merge() ({side} rows of the metric given)")

    def _report(self, synced: bool) -> Report:
        """The result kept by the last gather (``synced``), or this rank's rows' report."""
        if synced and self._global is not None:
            return self._global
        for spill in self._spills.values():
            spill.flush()
        paths = {s: sp.path for s, sp in self._spills.items() if sp.n}
        return self._compute(paths, 1, self._described)

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
        _refuse_differences(what, labels, [s[0] for s in shares], self._fixes)
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
                path = os.path.join(self.folder, f"synced-{side}.zarr")
                paths[side] = gather_rows(g, self._spills[side], path, sizes, dims[0])
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

    # -- checkpoints ---------------------------------------------------------------------------

    def _entries(self) -> dict[str, Any]:
        """Per side every row fed (``rows``, a CPU tensor (n, d) in the spill's dtype) and how
        they were made (``made_by``, ``weights_file``, as for :class:`FID`); ``reference``: a
        reference given up front, by its size and the digest of its values (``""``: none).

        A checkpoint carries the rows rather than naming the spill: the spill lives in a work
        folder this object removes when it closes, and a checkpoint outlives the process (as
        torchmetrics' KID keeps its features). It is as large as the rows fed (4 bytes per
        value for float32 rows); a reference given up front is named, not copied, and must be
        given again to the metric that loads it.
        """
        import torch

        state: dict[str, Any] = {}
        for side in _SIDES:
            spill = self._spills[side]
            if spill.n:
                rows = np.concatenate(list(spill.chunks()))
            else:
                rows = np.zeros((0, self._d or 0), dtype=spill.dtype or np.float32)
            state[f"{side}.rows"] = torch.from_numpy(rows)
        state |= _made_entries(self._made, self._described)
        state["reference"] = self._identity().get("reference") or ""
        return state

    def _load(self, state: dict[str, Any]) -> None:
        reference, mine = _state_text(state, "reference"), self._identity().get("reference") or ""
        if reference != mine:
            raise StatsFormatError(
                f"state_dict was made with the reference {reference or 'none'!r}, and this "
                f"metric has {mine or 'none'!r}: make it with the same «reference» to resume it"
            )
        rows = {}
        for side in _SIDES:
            held = np.asarray(_state_value(state, f"{side}.rows"))
            if held.ndim != 2 or held.dtype not in (np.float32, np.float64):
                raise StatsFormatError(
                    f"state_dict: {side}.rows has shape {held.shape} and dtype {held.dtype}; "
                    "it must be float32 or float64 rows (n, d)"
                )
            rows[side] = held
        dims = {r.shape[1] for r in rows.values() if len(r)}
        dims |= set() if self._reference is None else {self._reference.d}
        if len(dims) > 1:
            raise StatsFormatError(f"state_dict: the sides have different d {sorted(dims)}")
        self._made, self._described = _read_made(state)
        for side in _SIDES:
            self._spills[side].clear()
            if len(rows[side]):
                self._append(side, rows[side], f"state_dict ({side}.rows)")
        self._d = next(iter(dims), None)
