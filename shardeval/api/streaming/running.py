"""An FID's running state: per side the count, mean and co-moment of its rows on their device
(merged by the one Chan merge), and the share of it that syncs, merges and reports take."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.results import Side
from shardeval.api.streaming.batches import _SAME_ROWS, _refuse_differences
from shardeval.pipeline.core.states import Moments, chan_merge
from shardeval.pipeline.errors import (
    ShapeError,
)

if TYPE_CHECKING:
    import torch

    from shardeval.pipeline.fid.gaussian import Gaussian

#: Bytes of the rows an FID gathers per side on the device before the moments kernel runs.
BUFFER_BYTES = 32 * 2**20


class _RunningMoments:
    """One side of an FID: count, mean and co-moment as float64 tensors on the batches'
    device, the non-finite rows dropped and the batches seen.

    Batches wait in a buffer on the device (:data:`BUFFER_BYTES`, a few thousand rows) and go
    through the moments kernel together: its O(d²) finish (the centring correction, the
    float64 conversion) is then paid once per buffer, not once per batch, which at d = 2,048
    and batches of 64 rows is 25× the products themselves. The running state is merged on the
    device by the registered states' own Chan merge
    (:func:`~shardeval.pipeline.core.states.chan_merge`, on tensors), so that a GPU never
    copies a (d, d) matrix to the host per batch. Mutable and private on purpose: what leaves
    an FID (state dicts, syncs, merges, results) is a frozen
    :class:`~shardeval.pipeline.core.states.Moments`, merged by its law-tested ``merge``.
    """

    def __init__(self, backend: str = "auto") -> None:
        self.backend = backend
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.dropped = 0
        self.batches = 0
        self._buffer: torch.Tensor | None = None
        self._filled = 0

    @property
    def fed(self) -> int:
        """Rows fed: merged into the state, and waiting in the buffer."""
        return self.n + self._filled

    def push(self, rows: torch.Tensor) -> None:
        """Finite rows for the kernel, on the state's device in the dtype of their products."""
        import torch

        buffer = self._buffer
        if buffer is not None and (
            buffer.dtype != rows.dtype or self._filled + len(rows) > len(buffer)
        ):
            self.flush()
        capacity = max(1, BUFFER_BYTES // (rows.shape[1] * rows.element_size()))
        if len(rows) >= capacity:
            self._reduce(rows)
            return
        if buffer is None or buffer.dtype != rows.dtype:
            shape = (capacity, rows.shape[1])
            buffer = self._buffer = torch.empty(shape, dtype=rows.dtype, device=rows.device)
        buffer[self._filled : self._filled + len(rows)] = rows
        self._filled += len(rows)

    def flush(self) -> None:
        if self._filled and self._buffer is not None:
            self._filled, filled = 0, self._filled
            self._reduce(self._buffer[:filled])

    def _reduce(self, rows: torch.Tensor) -> None:
        """Rows through the moments kernel, with float64 products while the side holds no more
        rows than features (:func:`~shardeval.pipeline.fid.moments.products_precision`'s rule,
        which :func:`shardeval.fid` follows): its covariance is then singular, and fp32
        rounding in its null space (~1e-7 of its scale) would move FID by as much, even below
        zero for a set against itself. Rows reduced once the count passes d take the products
        asked for: a final count above d is where :func:`shardeval.fid` takes them too, and
        the earlier float64 products are only more exact."""
        import torch

        from shardeval.kernels import shard_moments

        if self.n + len(rows) <= rows.shape[1] and rows.dtype != torch.float64:
            rows = rows.to(torch.float64)
        self.add(*shard_moments(rows, backend=self.backend))  # type: ignore[arg-type]

    def add(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Chan, Golub & LeVeque's update by :func:`~shardeval.pipeline.core.states.chan_merge`
        (the registered states' merge), on the state's device."""
        import torch

        if n == 0:
            return
        if self.mean is None or self.m2 is None:
            self.n = n
            self.mean = mean.to(dtype=torch.float64, copy=True)
            self.m2 = m2.to(dtype=torch.float64, copy=True)
            return
        device = self.mean.device
        self.mean, self.m2 = chan_merge(
            self.n, self.mean, self.m2, n, mean.to(device), m2.to(device, torch.float64)
        )
        self.n += n

    def absorb(self, rows: _Rows) -> None:
        """Add the rows of another FID (or of a state dict)."""
        import torch

        m = rows.moments
        if m.n:
            device = "cpu" if self.mean is None else self.mean.device
            self.add(m.n, torch.tensor(m.mean, device=device), torch.tensor(m.m2, device=device))
        self.dropped += rows.dropped
        self.batches += rows.batches

    def to(self, device: Any) -> None:
        self.flush()
        self._buffer = None
        if self.mean is not None and self.m2 is not None:
            self.mean, self.m2 = self.mean.to(device), self.m2.to(device)

    def rows(self, d: int) -> _Rows:
        self.flush()
        if self.mean is None or self.m2 is None:
            return _Rows(Moments.empty(d), self.dropped, self.batches)
        # Copies: the running tensors go on changing in place.
        mean, m2 = self.mean.cpu().numpy().copy(), self.m2.cpu().numpy().copy()
        return _Rows(Moments(self.n, mean, m2), self.dropped, self.batches)


@dataclass(frozen=True)
class _Rows:
    """One side's rows as they leave an FID: their moments, the non-finite rows dropped, the
    batches."""

    moments: Moments
    dropped: int = 0
    batches: int = 0


@dataclass(frozen=True)
class _FIDShare:
    """What one FID holds, as a sync, a merge or a result takes it: both sides' rows, d (None
    before any row), the digest of a reference given up front, the settings that decide the
    moments (``precision``, ``nonfinite``) and how each side's rows were made (None: no rows
    yet). FIDs merge only when the last three agree."""

    real: _Rows
    gen: _Rows
    d: int | None
    reference: str | None
    settings: tuple[str, str]
    made: tuple[str | None, str | None]
    # How each side's rows were made, as reports describe it (None: not recorded); not
    # compared: ``made`` is (the weights' file may be another path on another machine).
    described: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)

    def identity(self) -> dict[str, Any]:
        precision, nonfinite = self.settings
        return {
            "reference": self.reference,
            "precision": precision,
            "nonfinite": nonfinite,
            "real": self.made[0],
            "gen": self.made[1],
        }


#: What each entry of an FID's identity asks of metrics that merge.
_FID_FIXES = {
    "reference": "give every FID the same «reference»",
    "precision": "make every FID with the same «precision»",
    "nonfinite": "make every FID with the same «nonfinite»",
    "real": _SAME_ROWS,
    "gen": _SAME_ROWS,
}


def _check_shares(shares: list[_FIDShare], what: str, labels: Sequence[str]) -> int | None:
    """The d the shares agree on (None: no rows anywhere).

    Raises:
        OptionError: different references, settings or feature provenance; ShapeError:
            different d.
    """
    _refuse_differences(what, labels, [s.identity() for s in shares], _FID_FIXES)
    dims = sorted({s.d for s in shares if s.d is not None})
    if len(dims) > 1:
        raise ShapeError(f"{what}: feature dimensions differ between the FIDs: d = {dims}")
    return dims[0] if dims else None


def _fold(shares: list[_FIDShare], what: str) -> _FIDShare:
    """The shares (one per rank, in rank order) merged in their order by
    :meth:`Moments.merge` (a registered state's pure, law-tested merge): the same bits wherever
    it runs. A share without rows may not know d; its empty moments are left out."""
    d = _check_shares(shares, what, [f"rank {r}" for r in range(len(shares))])

    def side(name: str) -> _Rows:
        parts = [getattr(s, name) for s in shares]
        moments = Moments.empty(d or 0)
        for part in parts:
            if part.moments.n:
                moments = moments.merge(part.moments) if moments.n else part.moments
        return _Rows(moments, sum(p.dropped for p in parts), sum(p.batches for p in parts))

    def made(i: int) -> tuple[str | None, dict[str, Any] | None]:
        return next(((s.made[i], s.described[i]) for s in shares if s.made[i]), (None, None))

    (real_made, real_described), (gen_made, gen_described) = made(0), made(1)
    first = shares[0]
    return _FIDShare(
        side("real"),
        side("gen"),
        d,
        first.reference,
        first.settings,
        (real_made, gen_made),
        (real_described, gen_described),
    )


def _digest(gaussian: Gaussian) -> str:
    """A digest of a reference's numbers, to tell whether two FIDs hold the same one."""
    h = hashlib.blake2b(digest_size=16)
    h.update(b"%d" % (-1 if gaussian.n is None else gaussian.n))
    h.update(np.ascontiguousarray(gaussian.mean, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(gaussian.cov, dtype=np.float64).tobytes())
    return h.hexdigest()


#: Where the rows fed to an FID came from, as its report names them.
_FED = {"real": "update(x, real=True) batches", "gen": "update(x) batches"}


def _fed_side(role: str, rows: _Rows, described: dict[str, Any] | None = None) -> Side:
    """A side of the report for rows fed with ``update`` (its shards: the batches), and how
    they were made (``described``: image rows; None: feature rows, which record nothing)."""
    m = rows.moments
    provenance = dict(described or {})
    return Side(
        role, _FED[role], m.n, m.d, rows.batches, "features", True, rows.dropped, provenance
    )


def _statistics_side(x: Any) -> Side:
    """A side of the report for a reference given as statistics."""
    from shardeval.api.functions import _statistics_side as side_of

    return Side(**{**vars(side_of(x)[1]), "role": "real"})


def _load_reference(x: Any, options: dict[str, Any]) -> tuple[Gaussian, Side]:
    """A reference given up front, read as :func:`shardeval.fid` reads its ``real``: the
    Gaussian and the report's side."""
    from shardeval.api.functions import _feature_side, _moments, _running
    from shardeval.api.inputs import extracted, features, is_images, is_statistics, statistics
    from shardeval.pipeline.fid.gaussian import Gaussian

    if is_statistics(x):
        return statistics(x), _statistics_side(x)
    with _running(options) as run:
        if is_images(x):
            x = extracted(x, options, run.engine, None, [])
        source = features(x)
        ((moments, dropped),) = _moments(run, [source])
    side = _feature_side(source, moments, dropped)
    return Gaussian.from_moments(moments, source.location), Side(**{**vars(side), "role": "real"})
