"""Training-loop metrics: objects that take batches as a model produces them.

:class:`FID` keeps, per side, the count, mean and centred co-moment of the rows it has seen:
batches gather in a bounded buffer on their device and go through
:func:`shardeval.kernels.shard_moments` there (Triton on CUDA, BLAS on a CPU), and the result is
folded into a running float64 state on that device by Chan, Golub & LeVeque's update; no more
rows than the buffer's are ever held. :class:`PairMetrics` (and :class:`KID`,
:class:`CMMD`, :class:`PRDC`) need every row, since they sum over pairs: they spill the rows to a
Zarr array in a work folder, one chunk at a time, and :meth:`~PairMetrics.compute` runs the
block-pair engine over them, exactly over all pairs. Memory stays flat in the rows either way.

Both take 2-D features ``(B, d)`` (a tensor on any device, or a numpy array) or 4-D image
batches ``(B, 3, H, W)`` (uint8, or floats in [0, 1]) for one of ``extract``'s encoders (the
Inception by default). ``compute()`` returns the :class:`~shardeval.api.results.Report` that the
one-shot function (:func:`shardeval.fid`, :func:`shardeval.kid`…) gives for the same rows.

``torch.distributed`` (any backend): under a process group of more than one rank,
``compute()`` is a collective, as in torchmetrics (``sync_on_compute``): every rank of the group
calls it, and every rank gets the value over every rank's rows; no rank ever gets its own rows'
value by accident. ``compute(sync=False)`` gives that on purpose, and its report says so (a
``local`` entry in the JSON, a first line in the summary). ``sync(group)`` is the same gather,
called explicitly. :meth:`FID.sync` gathers every process's moments and merges them in rank
order with :meth:`Moments.merge <shardeval.pipeline.core.states.Moments.merge>`, so every rank
holds the same bits, equal to one process fed the ranks' batches in rank order up to rounding:
float64's with ``precision='fp64'``, fp32 products' (~1e-7 relative: which rows reach the kernel
together differs) by default, as :func:`shardeval.fid` with other shard sizes.
:meth:`PairMetrics.sync` sends every rank's rows to rank 0, chunk by chunk through
``torch.distributed`` (no shared file system is needed: one chunk is in memory at a time), in rank
order; rank 0 computes over exactly the rows one process would have seen and hands the result to
every rank. A ``compute()`` after which no rank has changed its rows returns the result kept, and
only the cheap agreement of the ranks runs. The ranks first meet through the process group's
store, with a deadline («sync_timeout», :data:`SYNC_TIMEOUT_SECONDS` by default): a rank that
calls ``compute()`` or ``sync()`` alone gets an :class:`~shardeval.pipeline.errors.EngineError`
instead of waiting forever. As with every ``torch.distributed`` collective, ranks call the
``compute()`` and ``sync()`` of their metrics in the same order; a metric is known across ranks
by its kind and the order in which its process made it (copies and unpickled metrics count as
made), so ranks make their metrics in the same order too, and a gather of metrics made in
other orders is refused on every rank. Metrics sync and merge only with metrics of the same
settings, reference and feature provenance (how their rows were made); anything else is
refused, naming what differs. A report says how its features were
made (``features_made_by``, its summary's lines and warnings) as :func:`shardeval.fid` and
:func:`shardeval.kid` say it of the same inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.inputs import image_pixels
from shardeval.api.report import fid_report
from shardeval.api.results import Report, Side, jsonable
from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import (
    DtypeError,
    EngineError,
    NonFiniteError,
    NumericalError,
    OptionError,
    ShapeError,
    StatsFormatError,
    ZeroRowError,
)
from shardeval.pipeline.options import BACKENDS, PRECISIONS

if TYPE_CHECKING:
    import torch

    from shardeval.kernels.encoders import Encoder
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.stores import FeatureSource

__all__ = ["CMMD", "FID", "KID", "PRDC", "PairMetrics"]

#: What :meth:`FID.state_dict` holds, and the version of its layout: per side the content of
#: a statistics file (``n``, ``mean``, ``m2``), under ``real.`` and ``gen.``.
STATE_FORMAT = "shardeval.FID"
STATE_VERSION = 1

#: Bytes of one spilled chunk (and of the buffer that fills it): what a pair metric holds in
#: memory per set, and what one message carries when rows travel to rank 0.
SPILL_CHUNK_BYTES = 8 * 2**20

#: Bytes of the rows an FID gathers per side on the device before the moments kernel runs.
BUFFER_BYTES = 32 * 2**20

#: How long a collective ``compute()`` or ``sync()`` waits for every rank of its group, unless
#: «sync_timeout» says otherwise: ranks that end their batches minutes apart still meet, and a
#: rank that calls ``compute()`` alone gets an error instead of waiting forever. NCCL's default
#: collective timeout (gloo's is 30 minutes).
SYNC_TIMEOUT_SECONDS = 600.0

#: The deadlines a store of ``torch.distributed`` waits for: it takes whole milliseconds, through
#: a 64-bit count of microseconds. Below 1 ms the deadline is 0 ms, which the store reads as no
#: deadline at all (a FileStore then waits forever); beyond 2^63 microseconds (about 292,000
#: years) the count overflows (a FileStore then gives up at once).
MIN_SYNC_TIMEOUT_SECONDS = 1e-3
MAX_SYNC_TIMEOUT_SECONDS = float((2**63 - 1) // 10**6)

#: What a side's rows are, when they were fed as feature rows (image rows name their encoder).
FEATURE_ROWS = "feature rows"

_SIDES = ("real", "gen")


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise OptionError(f"«{name}» must be one of {choices}, got {value!r}")


def _check_timeout(value: Any) -> float | None:
    """«sync_timeout» as the store's wait takes it (see :data:`MIN_SYNC_TIMEOUT_SECONDS`).

    Raises:
        OptionError: not a number of seconds in [:data:`MIN_SYNC_TIMEOUT_SECONDS`,
            :data:`MAX_SYNC_TIMEOUT_SECONDS`].
    """
    if value is None:
        return None
    low, high = MIN_SYNC_TIMEOUT_SECONDS, MAX_SYNC_TIMEOUT_SECONDS
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not low <= value <= high  # NaN fails both
    ):
        raise OptionError(
            f"«sync_timeout» must be a number of seconds from {low:g} (1 ms) to {high:.0f} "
            f"(2^63 microseconds), which torch.distributed's store can wait for, or None (the "
            f"process group's own timeout); got {value!r}"
        )
    return float(value)


def _refuse_differences(
    what: str, labels: Sequence[str], identities: Sequence[dict[str, Any]], fixes: dict[str, str]
) -> None:
    """Metrics whose states are put together must agree on every entry of their identities
    (settings, reference, how each side's rows were made); a ``None`` under a side's rows means
    "no rows yet" and agrees with anything.

    Raises:
        OptionError: the first entry that differs, naming the two holders and both values.
    """
    for name, fix in fixes.items():
        known = [(label, i[name]) for label, i in zip(labels, identities, strict=True)]
        if name in _SIDES:
            known = [(label, value) for label, value in known if value is not None]
        for label, value in known[1:]:
            if value != known[0][1]:
                raise OptionError(
                    f"{what}: {known[0][0]} and {label} differ in {_WHAT[name]}: "
                    f"{_shown(known[0][1])} against {_shown(value)}; {fix}"
                )


#: How a message names each entry of an identity.
_WHAT = {
    "real": "how their real rows were made",
    "gen": "how their generated rows were made",
    "reference": "the reference (they hold different references)",
    "precision": "«precision»",
    "nonfinite": "«nonfinite»",
    "metrics": "their metrics (pair metrics merge and sync with the same metrics, options and "
    "reference)",
    "options": "the options that decide their results (pair metrics merge and sync with the "
    "same metrics, options and reference)",
}

#: What makes two sides' rows alike.
_SAME_ROWS = (
    "states of rows made differently never merge: feed every metric the same kind of batches "
    "(feature rows, or images through the same «encoder», «resize» and «weights»)"
)


def _images_made_by(encoder: str, resize: str, digest: str) -> str:
    """How image rows were made, as metrics compare it (see :func:`_images_made`)."""
    return f"images: encoder={encoder} resize={resize} weights={digest}"


def _images_made(made_by: str) -> tuple[str, str, str] | None:
    """The encoder, resize and weights digest that :func:`_images_made_by` wrote (None: not
    image rows)."""
    found = re.fullmatch(r"images: encoder=(.+) resize=(\S+) weights=(\S+)", made_by)
    return None if found is None else (found[1], found[2], found[3])


def _images_described(
    encoder: str, resize: str, digest: str, weights_file: str | None
) -> dict[str, Any]:
    """How image rows were made, as a feature store describes its features
    (:meth:`~shardeval.pipeline.io.stores.FeatureSource.describe`: the network, and the
    ``extraction`` that :func:`~shardeval.pipeline.images.provenance.made_by` reads, its
    weights' status decided from the digest)."""
    from shardeval.kernels.encoders.registry import ENCODERS, PROVIDER_FORMS, PYTHON, REGISTERED
    from shardeval.pipeline.images.provenance import weights_status

    spec = ENCODERS.get(encoder)
    # A user's encoder (``timm:NAME``, ``python:NAME`` ...) is labelled by its name, as the
    # extraction store of the same encoder labels its features.
    source: str | None = encoder.partition(":")[0]
    extractor: str | None
    if spec is not None:
        extractor, source = spec.feature_extractor, REGISTERED
    elif source in PROVIDER_FORMS or source == PYTHON:
        extractor = encoder
    else:  # a name no encoder of this shardeval has: nothing to say of it
        extractor = source = None
    return {
        "feature_extractor": extractor,
        "extraction": {
            "encoder": encoder,
            "encoder_source": source,
            "resize": resize,
            "weights_digest": digest,
            "weights_file": weights_file or None,
            "weights_status": weights_status(encoder, digest),
        },
    }


def _shown(value: Any) -> str:
    return "none" if value is None else str(value) if isinstance(value, str) else repr(value)


def _first_rows(mask: torch.Tensor) -> str:
    """How many rows a per-row mask marks, and the first few of them."""
    import torch

    first = torch.nonzero(mask).flatten()[:5].tolist()
    return f"{int(mask.sum())} row(s) (first at rows {', '.join(map(str, first))} of the batch)"


# ---------------------------------------------------------------------------------------------
# batches: features or images


def _tensor(x: Any, what: str) -> torch.Tensor:
    """``x`` as a tensor on its own device, of real numbers."""
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iuf" or x.dtype == np.bool_:
            raise DtypeError(f"{what} has dtype {x.dtype}; it must hold integers or floats")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")))
    if not isinstance(x, torch.Tensor):
        raise DtypeError(f"{what} must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    if x.layout != torch.strided or x.is_nested:
        # Rows reach the kernels dense; densifying is the caller's call (it may not fit).
        if x.is_nested:
            raise DtypeError(
                f"{what} is a nested tensor; features and images are dense rows of one shape: "
                "pass one tensor (torch.cat or torch.stack of its parts)"
            )
        raise DtypeError(
            f"{what} is a {str(x.layout).removeprefix('torch.')} tensor; features and images "
            "are dense rows: pass x.to_dense()"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise DtypeError(f"{what} has dtype {x.dtype}; it must hold integers or floats")
    if x.is_meta:
        raise DtypeError(
            f"{what} is a meta tensor: it has a shape {tuple(x.shape)} but no values; pass a "
            "tensor that holds the rows"
        )
    return x.detach()


def _feature_rows(t: torch.Tensor, what: str) -> torch.Tensor:
    """2-D feature rows of a dtype the kernels multiply without rounding the data: integers
    wider than 16 bits become float64, which holds them exactly up to 2^53."""
    import torch

    from shardeval.pipeline.core.chunks import inexact_integer_rows

    if t.ndim != 2:
        raise ShapeError(
            f"{what} has shape {tuple(t.shape)}; give 2-D features (B, d) or 4-D images "
            "(B, 3, H, W)"
        )
    if t.shape[1] == 0:
        raise ShapeError(
            f"{what} has shape {tuple(t.shape)}: 0 features per row; give features (B, d) "
            "with d >= 1"
        )
    if t.is_floating_point() or t.element_size() < 4:
        return t
    if inexact_integer_rows(t.cpu().numpy()).any():
        raise NumericalError(
            f"{what} holds integers beyond 2^53, which float64 cannot hold exactly; pass them "
            "as floats if rounding them is acceptable"
        )
    return t.to(torch.float64)


class _Batches:
    """What every training-loop metric does with a batch before its own arithmetic: count it,
    tell features from images (and encode these), check d, and refuse real rows when the
    reference was given up front.

    The encoder is found (its weights located and hashed) at the first image batch and
    loaded once per process and device (:func:`~shardeval.pipeline.images.extract.cached_encoder`);
    a metric fed features never needs weights.
    """

    #: This metric's kind and count among the metrics of its kind this process made
    #: (:func:`_made_here`): what ranks compare before they gather.
    _order: tuple[str, int]

    def __init__(
        self,
        encoder: str,
        weights: str | os.PathLike[str] | None,
        resize: str | None,
        batch_size: int | None,
        process_group: Any = None,
        sync_timeout: float | None = SYNC_TIMEOUT_SECONDS,
    ) -> None:
        from shardeval._words import marked
        from shardeval.kernels.encoders import EncoderError, resolve_encoder
        from shardeval.pipeline.images.extract import DEFAULT_BATCH_SIZE, EncoderSetupError

        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        try:  # the encoder now (a module's digest once); its weights at the first image
            spec = resolve_encoder(encoder)
            spec.resolve_resize(resize)
        except EncoderError as exc:
            raise EncoderSetupError(marked(exc)) from exc
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionError(f"«batch_size» must be a positive integer, got {batch_size!r}")
        self._encoder = (spec, weights, resize, batch_size)
        self.feature_extractor = spec.feature_extractor
        self._plan: Any = None
        self._calls = 0
        self._d: int | None = None
        self._given = False  # the reference was given up front
        self._reference_extractor: str | None = None
        # How each side's rows were made (None: no rows yet): states merge only with alike.
        self._made: dict[str, str | None] = dict.fromkeys(_SIDES)
        # And as reports describe it (None: feature rows, which record nothing, or no rows).
        self._described: dict[str, dict[str, Any] | None] = dict.fromkeys(_SIDES)
        self.process_group = process_group
        self.sync_timeout = _check_timeout(sync_timeout)
        self._synced_over: tuple[int, ...] | None = None  # the ranks of the last sync
        self._pending: tuple[str, dict[str, Any] | None] | None = None  # the batch in hand's

    def _rows(self, x: Any, real: bool, device: Any) -> tuple[str, torch.Tensor, str]:
        """The batch's side, its rows (images encoded on ``device``, None: their own) and
        how messages name it. The caller records how the rows were made
        (:meth:`_made_rows`) once it has kept them.

        Raises:
            OptionError: rows made otherwise than the side's earlier rows (feature rows and
                image rows, or images through another encoder, resize or weights).
        """
        if not isinstance(real, bool | np.bool_):
            raise OptionError(
                f"«real» must be True or False, got {real!r}; update(x, real=True) adds reference "
                "rows, update(x) generated rows"
            )
        side = "real" if real else "gen"
        if real and self._given:
            raise OptionError(
                "update(x, real=True), but a reference was given up front («reference»): give "
                "one or the other"
            )
        self._calls += 1
        what = f"update() call {self._calls} ({side})"
        t = _tensor(x, what)
        if t.ndim == 4:
            rows = self._encode(t, str(device or t.device), what)
        else:
            rows = _feature_rows(t, what)
        made, before = self._made_by(t.ndim == 4), self._made[side]
        if len(rows) and before is not None and made != before:
            raise OptionError(
                f"{what} holds {made}, but the earlier {side} rows are {before}; {_SAME_ROWS}"
            )
        d = int(rows.shape[1])
        if self._d is None:
            self._d = d
        elif d != self._d:
            raise ShapeError(
                f"{what} has d={d} features per row, but earlier batches or the reference have "
                f"d={self._d}; compare features of one model"
            )
        self._pending = made, self._description(t.ndim == 4)
        return side, rows, what

    def _made_by(self, images: bool) -> str:
        """How rows are made: fed as features, or images through this encoder, its resize and
        the weights of this digest."""
        if not images:
            return FEATURE_ROWS
        plan = self._plan
        return _images_made_by(plan.encoder, plan.resize, plan.digest)

    def _description(self, images: bool) -> dict[str, Any] | None:
        """How rows are made, as reports describe it (None: feature rows record nothing)."""
        if not images:
            return None
        plan = self._plan
        return _images_described(plan.encoder, plan.resize, plan.digest, plan.located)

    def _made_rows(self, side: str) -> None:
        """The side now holds rows of the batch just checked by :meth:`_rows`."""
        if self._pending is not None:
            self._made[side], self._described[side] = self._pending

    def _forget_rows(self, side: str) -> None:
        """The side holds no rows any more."""
        self._made[side] = self._described[side] = None

    def _take_rows_of(self, made: Sequence[str | None], described: Sequence[Any]) -> None:
        """Rows made as ``made`` describes (per side, None: none) joined this metric's."""
        for i, side in enumerate(_SIDES):
            if self._made[side] is None and made[i] is not None:
                self._made[side], self._described[side] = made[i], described[i]

    # -- copies and pickles ----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if self.process_group is not None:
            raise OptionError(
                f"{type(self).__name__} objects made with «process_group» cannot be pickled: a "
                "process group belongs to its process; pickle the metric made without one (or "
                "its state_dict()), and give the group where it is unpickled"
            )
        return self._state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._order = _made_here(self._order[0])  # a copy is a metric this process made

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # What is configuration rather than state is shared, never copied: the process group
        # (this process's), the reference (read only) and the options' objects (a
        # distributed.Client, callbacks).
        shared = (getattr(self, "_reference", None), *getattr(self, "options", {}).values())
        for kept in (self.process_group, *shared):
            if kept is not None:
                memo[id(kept)] = kept
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self._state(), memo))
        return new

    def _state(self) -> dict[str, Any]:
        """What a copy or a pickle carries."""
        return dict(self.__dict__)

    def _encode(self, images: torch.Tensor, device: str, what: str) -> torch.Tensor:
        import torch

        from shardeval.pipeline.images.extract import cached_encoder, plan_extraction

        known = self._reference_extractor
        if known is not None and known != self.feature_extractor:
            raise OptionError(
                f"the reference holds features of {known!r}, but images are encoded by "
                f"{self.feature_extractor!r}; choose the encoder the reference was made with "
                "(«encoder»)"
            )
        pixels = image_pixels(images, what, channels_last=False)
        name, weights, resize, batch_size = self._encoder
        if self._plan is None:
            self._plan = plan_extraction(name, weights, resize)
        plan = self._plan
        # A module given in Python runs where its tensors are (the batch is moved there).
        where = "auto" if plan.source == "python" else device
        model: Encoder = cached_encoder(
            plan.encoder_spec, plan.weights, plan.digest, where, plan.resize
        )
        return torch.from_numpy(model.encode(list(pixels), batch_size))


# ---------------------------------------------------------------------------------------------
# torch.distributed


#: Per kind of training-loop metric ("fid", "kid", "kid/prdc", ...), how many this process has
#: made, copied or unpickled. Under torch.distributed a metric is known across ranks by its
#: kind and this count: ranks gather their states in the order of their calls, and two metrics
#: of one kind and settings whose calls the ranks make in other orders would be gathered into
#: one silently; this pair is what tells them apart.
_MADE_SO_FAR: dict[str, int] = {}


def _made_here(kind: str) -> tuple[str, int]:
    """The kind and count of a metric this process makes now (see :data:`_MADE_SO_FAR`)."""
    count = _MADE_SO_FAR.get(kind, 0)
    _MADE_SO_FAR[kind] = count + 1
    return kind, count


def _nth(order: tuple[str, int]) -> str:
    """How a message names a metric by its kind and count: "its 2nd fid metric"."""
    kind, count = order
    n = count + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"its {n}{suffix} {kind} metric"


#: Per process group (its global ranks), how many meetings this process has completed in it:
#: the n-th meeting of every rank has the same keys in the store.
_MEETINGS: dict[tuple[int, ...], int] = {}


@dataclass(frozen=True)
class _Group:
    """The process group of a sync: its size, this process's rank in it, the global rank
    of its rank 0 (point-to-point calls and broadcasts name global ranks) and the global ranks
    of its members."""

    handle: Any
    size: int
    rank: int
    root: int
    ranks: tuple[int, ...]

    def global_rank(self, group_rank: int) -> int:
        import torch.distributed as dist

        return group_rank if self.handle is None else dist.get_global_rank(self.handle, group_rank)

    def all_gather(self, payload: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, payload, group=self.handle)
        return out

    def gather_alike(self, order: tuple[str, int], payload: Any, what: str) -> list[Any]:
        """Every rank's ``payload`` in rank order, once every rank proved it gathers the same
        metric: the same kind, made as the same one of its kind in its process (``order``,
        from :func:`_made_here`). Every rank sees every rank's ``order``, so all refuse alike
        and none waits in a later collective.

        Raises:
            OptionError: ranks that gather other metrics, naming the first two.
        """
        gathered = self.all_gather((order, payload))
        for rank, (theirs, _) in enumerate(gathered):
            if theirs != gathered[0][0]:
                raise OptionError(
                    f"{what}: rank 0 gathers {_nth(gathered[0][0])} and rank {rank} "
                    f"{_nth(theirs)} (as made in each process): ranks must make their "
                    "training-loop metrics in the same order and call compute() and sync() of "
                    "each in the same order; a metric made on some ranks only is made after "
                    "the others"
                )
        return [payload for _, payload in gathered]

    def broadcast(self, payload: Any) -> Any:
        """Rank 0's ``payload`` on every rank."""
        import torch.distributed as dist

        box = [payload]
        dist.broadcast_object_list(box, src=self.root, group=self.handle)
        return box[0]

    def meet(self, changed: bool, timeout: float | None, what: str) -> bool:
        """Wait until every rank of the group has called this, at most ``timeout`` seconds
        (None: the store's own timeout, the process group's); return whether any rank has
        ``changed`` (its state differs from the one of the last sync).

        The ranks meet in the store of ``torch.distributed``'s default group (TCP or file; what
        ``init_process_group`` made): a counter per meeting, and a key that the last rank to
        arrive sets, which the others wait for. Why the store: a deadline there holds on every
        backend and issues no collective, so a rank that gives up leaves nothing half-done, and
        the collectives that follow start only once every rank is there.
        ``monitored_barrier`` is gloo's alone; a collective's own timeout is the process
        group's, fixed at init (30 minutes for gloo; NCCL's watchdog then aborts the process
        rather than raising), and a collective that one rank never joins cannot be withdrawn.
        The store is reached through ``torch.distributed``'s private ``_get_default_store``
        (the store ``init_process_group`` made; torch has no public accessor); a torch
        without it gathers every time, under the process group's timeout alone.
        Meetings are counted per group, so ranks must call collective computes and syncs in
        the same order (as every ``torch.distributed`` collective). A rank that gives up leaves
        the meeting; one that arrives in the very instant another gives up can still go on into
        the gather alone, where the process group's own timeout ends it.

        Raises:
            EngineError: not every rank arrived in time.
        """
        from datetime import timedelta

        from torch.distributed import distributed_c10d

        default_store = getattr(distributed_c10d, "_get_default_store", None)
        if default_store is None:  # a torch without it: the process group's timeout alone
            return True
        store = default_store()
        done = _MEETINGS.get(self.ranks, 0)
        prefix = f"shardeval/{'.'.join(map(str, self.ranks))}/"
        key = f"{prefix}{done}/"
        store.add(key + "changed", int(changed))
        if store.add(key + "arrived", 1) == self.size:
            store.set(key + "all", "1")
            if done:  # every rank finished the meeting before: its keys are nobody's now
                for name in ("changed", "arrived", "all"):
                    try:
                        store.delete_key(f"{prefix}{done - 1}/{name}")
                    except RuntimeError:  # a store that cannot delete keeps three counters
                        break
        try:
            if timeout is None:
                store.wait([key + "all"])
            else:
                store.wait([key + "all"], timedelta(seconds=timeout))
        except RuntimeError as exc:  # torch raises DistStoreError (or RuntimeError) at the deadline
            # Leave the meeting, so that it can still take place with every rank later.
            store.add(key + "arrived", -1)
            store.add(key + "changed", -int(changed))
            waited = "the store's timeout" if timeout is None else f"{timeout:g} s"
            raise EngineError(
                f"{what} syncs the metric over its torch.distributed group ({self.size} "
                f"processes), and rank {self.rank} waited {waited} for the others "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): call "
                f"{what} on every rank, as torchmetrics does, or compute(sync=False) for this "
                "rank's own rows; a longer «sync_timeout» waits for slow ranks"
            ) from None
        _MEETINGS[self.ranks] = done + 1
        return store.add(key + "changed", 0) > 0


def _group(group: Any) -> _Group:
    """The process group to sync over.

    Raises:
        EngineError: ``torch.distributed`` is not available or not initialised, or this process
            is not in ``group``.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise EngineError(
            "sync() gathers the states of a torch.distributed job, and none is running here: "
            "call torch.distributed.init_process_group() first (a single process needs no sync)"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise EngineError(
            "this process is not in the process group given («process_group», or sync(group)): "
            "a metric syncs over a group it belongs to"
        )
    root = 0 if group is None else dist.get_global_rank(group, 0)
    ranks = tuple(dist.get_process_group_ranks(dist.group.WORLD if group is None else group))
    return _Group(group, dist.get_world_size(group), rank, root, ranks)


def _collective(group: Any) -> _Group | None:
    """The group over which ``compute()`` syncs: None outside ``torch.distributed``, or in a
    group of one process."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    g = _group(group)
    return g if g.size > 1 else None


def _labelled_local(report: Report, group: Any) -> Report:
    """``report`` of this rank's rows alone, marked so when it runs in a group of more than
    one process: a ``local`` entry in the JSON, a first line in the summary."""
    try:
        g = _collective(group)
    except EngineError:  # not a member of the metric's group: the report is this process's
        g = None
    if g is None:
        return report
    data = {**report.data, "local": {"rank": g.rank, "world_size": g.size}}
    text = (
        f"local value: rank {g.rank}'s rows alone, of {g.size} processes (compute(sync=False)); "
        "compute() on every rank gives the value over every rank's rows\n" + report.text
    )
    return Report(report.metric, report.results, data, text, report.value)


# ---------------------------------------------------------------------------------------------
# FID


class _RunningMoments:
    """One side of an FID: count, mean and co-moment as float64 tensors on the batches'
    device, the non-finite rows dropped and the batches seen.

    Batches wait in a buffer on the device (:data:`BUFFER_BYTES`, a few thousand rows) and go
    through the moments kernel together: its O(d²) finish (the centring correction, the
    float64 conversion) is then paid once per buffer, not once per batch, which at d = 2,048
    and batches of 64 rows is 25× the products themselves. The running state is updated in
    place, so that a GPU never copies a (d, d) matrix to the host per batch. Mutable and
    private on purpose: what leaves an FID (state dicts, syncs, merges, results) is a frozen
    :class:`~shardeval.pipeline.core.states.Moments`, merged by its own law-tested ``merge``;
    a test holds :meth:`add` to that merge.
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
        """Chan, Golub & LeVeque's update (:func:`~shardeval.pipeline.core.states.chan_merge`),
        in place: δ = mean_b − mean_a, mean += δ·n_b/n, m2 += m2_b + δδᵀ·n_a·n_b/n, where δδᵀ
        is the outer product of one vector with itself (exactly symmetric)."""
        import torch

        if n == 0:
            return
        if self.mean is None or self.m2 is None:
            self.n = n
            self.mean = mean.to(dtype=torch.float64, copy=True)
            self.m2 = m2.to(dtype=torch.float64, copy=True)
            return
        total = self.n + n
        delta = mean.to(self.mean.device) - self.mean
        scaled = delta * math.sqrt(self.n * n / total)
        self.mean += delta * (n / total)
        self.m2 += m2.to(self.m2.device)
        self.m2.addr_(scaled, scaled)
        self.n = total

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


class FID(_Batches):
    r"""Fréchet Inception Distance, accumulated batch by batch.

    .. math::
        \mathrm{FID} = \lVert \mu_r - \mu_g \rVert^2
            + \operatorname{tr}\left(\Sigma_r + \Sigma_g - 2 (\Sigma_r \Sigma_g)^{1/2}\right)

    of Gaussians fitted to the reference (real) and generated features (Heusel et al.,
    NeurIPS 2017). The count, mean and centred co-moment of a buffer of batches
    (:data:`BUFFER_BYTES`) come from :func:`shardeval.kernels.shard_moments` on the batches'
    device (fp32 products of rows centred on their mean; float64 for float64 rows or
    ``precision='fp64'``) and are merged into a float64 state on that device with Chan, Golub &
    LeVeque's update; raw Σx and Σxxᵀ, which lose digits when the mean is large against the
    spread, are never formed. While a side holds no more rows than features, its rows take
    float64 products whatever ``precision`` asks, as in :func:`shardeval.fid` (its covariance
    is singular, and fp32 rounding in its null space moves FID by ~1e-7 of its scale). The
    distance is :func:`shardeval.fid`'s (a symmetric eigenvalue problem in float64).

    Args:
        reference: the real side, given up front: anything :func:`shardeval.fid` takes as
            ``real``: a statistics file (ours or a pytorch-fid ``.npz``), a feature store or an
            array (its moments are computed now), an image source (extracted into the feature
            cache with this metric's encoder options), a ``Gaussian`` or ``Moments``. None: feed
            real rows with ``update(x, real=True)``.
        device: where the running state lives and the kernels run (``"cuda"``, ``"cuda:1"``,
            ``"cpu"``); batches elsewhere are moved there. None: the first batch's device. A
            CUDA device this machine lacks is refused here.
        backend: the moments kernel: ``auto`` (Triton on CUDA, BLAS on a CPU), ``triton`` or
            ``torch``. ``triton`` without a CUDA device to run on is refused (here when
            ``device`` says so or the machine has no GPU; else at the first CPU batch).
        precision: ``fp32`` products inside a batch (the kernels' contract) or ``fp64``.
        nonfinite: rows with NaN or inf: ``error`` (raise, naming the batch and rows) or
            ``drop`` (leave them out and count them); None: the FID plug-in's default
            (``error``).
        reset_real: whether :meth:`reset` also forgets real rows fed with ``real=True`` (a
            reference given up front is always kept), as torchmetrics' ``reset_real_features``.
        encoder, weights, resize, batch_size: how image batches become features, as for
            :func:`shardeval.extract`.
        cache_root, scheduler: where an image-source reference's features are cached, and
            where a reference store's moments are computed (as for :func:`shardeval.fid`).
        process_group: the ``torch.distributed`` group that :meth:`compute` and :meth:`sync`
            gather over; None: the whole job.
        sync_timeout: seconds that a collective :meth:`compute` or :meth:`sync` waits for
            every rank of the group before it raises (default :data:`SYNC_TIMEOUT_SECONDS`,
            10 minutes), from :data:`MIN_SYNC_TIMEOUT_SECONDS` to
            :data:`MAX_SYNC_TIMEOUT_SECONDS` (what the store of ``torch.distributed`` waits
            for); None: the process group's own timeout.

    Raises:
        OptionError: an option out of its choices, a «sync_timeout» out of its range.
        EngineError: a device or kernel backend this machine cannot run.
        EncoderSetupError: an unknown encoder or resize mode.
        StoreError, StatsFormatError, ShapeError, NonFiniteError: a reference that cannot be
            read, as :func:`shardeval.fid` raises them.

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> fid = se.FID()
        >>> fid.update(rng.standard_normal((500, 4)), real=True)
        >>> for _ in range(5):
        ...     fid.update(rng.standard_normal((100, 4)) + 1.0)
        >>> report = fid.compute()              # the report of se.fid on the same rows
        >>> fid_section = report.to_dict()["fid"]
        >>> fid_section["fid_n_real"], fid_section["fid_n"]
        (500, 500)
        >>> 3.5 < fid_section["fid_mean_term"] < 4.5   # about ‖(1, 1, 1, 1)‖² = 4
        True
        >>> again = se.FID()
        >>> again.load_state_dict(fid.state_dict())
        >>> float(again.compute()) == float(report)
        True

    Distributed (every rank runs this on its own batches):

    .. code-block:: python

        fid = se.FID("cifar10-train.npz", device=f"cuda:{local_rank}")
        for images in loader:
            fid.update(generator(images))
        value = float(fid.compute())    # collective: every rank calls it, every rank gets
                                        # the FID of every rank's batches (the same bits)
        mine = fid.compute(sync=False)  # this rank's batches alone, labelled local
    """

    def __init__(
        self,
        reference: Any = None,
        *,
        device: Any = None,
        backend: str = "auto",
        precision: str = "fp32",
        nonfinite: str | None = None,
        reset_real: bool = True,
        encoder: str = "inception",
        weights: str | os.PathLike[str] | None = None,
        resize: str | None = None,
        batch_size: int | None = None,
        cache_root: str | os.PathLike[str] | None = None,
        scheduler: Any = None,
        process_group: Any = None,
        sync_timeout: float | None = SYNC_TIMEOUT_SECONDS,
    ) -> None:
        from shardeval.api.samples import _declared

        _check_choice("backend", backend, BACKENDS)
        _check_choice("precision", precision, PRECISIONS)
        super().__init__(encoder, weights, resize, batch_size, process_group, sync_timeout)
        self.backend, self.precision = backend, precision
        self.nonfinite = _declared("fid", {"nonfinite": nonfinite})["nonfinite"]
        self.reset_real = bool(reset_real)
        self._device = None if device is None else _torch_device(device)
        _check_runnable(self._device, backend)
        self._reference: Gaussian | None = None
        self._reference_side: Side | None = None
        self._digest: str | None = None
        self._sides = {side: _RunningMoments(backend) for side in _SIDES}
        self._global: _FIDShare | None = None
        self._processes = 1
        if reference is not None:
            options = {
                "device": "auto" if self._device is None else self._device.type,
                "backend": backend,
                "precision": precision,
                "nonfinite": self.nonfinite,
                "encoder": encoder,
                "weights": weights,
                "resize": resize,
                "batch_size": batch_size,
                "cache_root": cache_root,
                "scheduler": scheduler,
            }
            self._set_reference(*_load_reference(reference, options))
        self._order = _made_here("fid")

    def _set_reference(self, gaussian: Gaussian, side: Side) -> None:
        if gaussian.n is not None and gaussian.n < 2:
            raise ShapeError(f"the reference has {gaussian.n} row(s); FID needs at least 2")
        self._reference, self._reference_side = gaussian, side
        self._digest = _digest(gaussian)
        self._given, self._d = True, gaussian.d
        extractor = side.provenance.get("feature_extractor")
        self._reference_extractor = None if extractor is None else str(extractor)

    @property
    def device(self) -> torch.device | None:
        """Where the running state lives (None before the first batch)."""
        return self._device

    @property
    def synced(self) -> bool:
        """Whether this process holds the merged state of every process (after :meth:`sync`
        or a collective :meth:`compute`, until the next update, merge, reset or load): a
        :meth:`compute` after which no rank has changed returns it without a gather."""
        return self._global is not None

    def update(self, x: Any, real: bool = False) -> None:
        """Add a batch: features ``(B, d)``, or images ``(B, 3, H, W)`` for the encoder.

        Args:
            x: a tensor on any device or a numpy array: 2-D feature rows (any real dtype), or
                4-D images, uint8 or floats in [0, 1] (quantised to uint8 as a saved PNG is).
            real: the batch is reference rows (only when no reference was given up front).

        Raises:
            OptionError: ``real`` not a bool; ``real=True`` while a reference was given up
                front; rows made otherwise than the side's earlier rows (feature rows and
                images, or images through another encoder, resize or weights).
            ShapeError: a batch that is neither 2-D nor 4-D, has no features, or whose d
                differs from earlier batches or the reference.
            DtypeError: not real numbers (or a meta tensor, which holds none; a sparse or
                nested tensor: rows are dense); images of another dtype, or floats holding
                NaN or outside [0, 1].
            NonFiniteError: rows with NaN or inf under ``nonfinite='error'``.
            NumericalError: integers beyond 2^53.
            EncoderSetupError: the encoder's weights cannot be found or loaded.
            EngineError: ``backend='triton'`` for a state on a CPU.
        """
        import torch

        side, rows, what = self._rows(x, real, self._device)
        if self._device is None:
            _check_runnable(rows.device, self.backend)
            self._device = rows.device
            for running in self._sides.values():
                running.to(self._device)
        rows = rows.to(self._device, non_blocking=True)
        if self.precision == "fp64":
            rows = rows.to(torch.float64)
        running = self._sides[side]
        if not bool(torch.isfinite(rows).all()):
            finite = torch.isfinite(rows).all(dim=1)
            if self.nonfinite == "error":
                raise NonFiniteError(
                    f"{what} has {_first_rows(~finite)} with NaN or inf; clean them or pass "
                    "«nonfinite='drop'»"
                )
            running.dropped += int((~finite).sum())
            rows = rows[finite]
        running.push(rows)
        running.batches += 1
        if len(rows):
            self._made_rows(side)
        self._global = None

    def _share(self) -> _FIDShare:
        d = self._d or 0
        real, gen = self._sides["real"].rows(d), self._sides["gen"].rows(d)
        settings = (self.precision, self.nonfinite)
        made = (self._made["real"], self._made["gen"])
        described = (self._described["real"], self._described["gen"])
        return _FIDShare(real, gen, self._d, self._digest, settings, made, described)

    def compute(self, sync: bool = True) -> Report:
        """FID of the rows seen against the reference: every process's rows under
        ``torch.distributed``.

        Under a process group of more than one rank (``process_group``, default the whole
        job), this is a collective, as torchmetrics' ``compute`` is: **every rank of the group
        calls it**, and every rank gets the FID of every rank's rows (the same bits), gathered
        as :meth:`sync` gathers them; when no rank has changed its rows since the last gather,
        only a cheap agreement runs. A rank that calls it alone raises at ``sync_timeout``.

        Args:
            sync: False: this rank's rows alone, without communication, on purpose; the
                report is labelled ``local`` when in a group of more than one rank.

        Returns:
            The :class:`~shardeval.api.results.Report` of :func:`shardeval.fid`: ``float()`` the
            FID, ``results["fid"]`` the
            :class:`~shardeval.pipeline.fid.frechet.FrechetDistance`, ``to_dict()`` the JSON
            report; its ``settings`` are this metric's, ``processes`` says how many
            processes' rows it holds, and ``local`` (``rank``, ``world_size``) marks a value of
            this rank's rows alone.

        Raises:
            OptionError: no reference (none given, no real rows); ranks that gather other
                metrics (see :meth:`sync`); processes whose metrics differ in reference,
                settings or how their rows were made.
            ShapeError: fewer than 2 rows on a side.
            NumericalError: a covariance that is not positive semi-definite beyond rounding.
            EngineError: not every rank of the group called it within ``sync_timeout``.
        """
        import torch

        from shardeval.api.functions import _noted
        from shardeval.pipeline.fid.frechet import (
            frechet_distance,
            warn_if_rounding_reached_spectrum,
        )
        from shardeval.pipeline.fid.gaussian import Gaussian

        start = time.perf_counter()
        g = _collective(self.process_group) if sync else None
        if g is not None and g.meet(self._changed(g), self.sync_timeout, "compute()"):
            self._sync(g, "compute()")
        synced = sync and self._global is not None
        share = self._global if synced and self._global is not None else self._share()
        if self._reference is None and share.real.moments.n == 0:
            raise OptionError(
                "FID has no reference: pass «reference» (statistics, a feature store, a "
                "Gaussian or Moments) or feed real rows with update(x, real=True)"
            )
        sides = {
            side: _fed_side(side, getattr(share, side), share.described[i])
            for i, side in enumerate(_SIDES)
        }
        if self._reference is not None and self._reference_side is not None:
            sides["real"] = self._reference_side
        for side in sides.values():
            if side.n is not None and side.n < 2:
                name = {"real": "real", "gen": "generated"}[side.role]
                raise ShapeError(
                    f"FID needs at least 2 {name} rows, and {side.n} were given; update() with "
                    "more rows"
                )
        real = self._reference or Gaussian.from_moments(share.real.moments, _FED["real"])
        gen = Gaussian.from_moments(share.gen.moments, _FED["gen"])
        # fp32 products reached the moments only of a fed side of more rows than features.
        fed = [share.gen.moments] + ([] if self._reference is not None else [share.real.moments])
        fp32_products = self.precision == "fp32" and any(m.n > m.d for m in fed)
        with _noted() as notes:
            result = frechet_distance(real, gen)
            warn_if_rounding_reached_spectrum(result, fp32_products)
            notes.extend(result.warnings)
            settings = {
                "device": str(self._device),
                "backend": self.backend,
                "precision": self.precision,
                "nonfinite": self.nonfinite,
            }
            engine = {"scheduler": "in-process", "threads": torch.get_num_threads()}
            report = fid_report(
                result,
                (real, gen),
                (sides["real"], sides["gen"]),
                self.nonfinite,
                settings,
                {"processes": self._processes if synced else 1},
                notes,
                engine,
                time.perf_counter() - start,
            )
        return report if synced else _labelled_local(report, self.process_group)

    def _changed(self, g: _Group) -> bool:
        """Whether this rank's rows differ from those of the last gather over ``g``."""
        return self._global is None or self._synced_over != g.ranks

    def reset(self) -> None:
        """Forget the generated rows (and the real rows fed with ``real=True`` when
        ``reset_real``); a reference given up front stays."""
        self._global = None
        self._sides["gen"] = _RunningMoments(self.backend)
        self._forget_rows("gen")
        if self.reset_real:
            self._sides["real"] = _RunningMoments(self.backend)
        if self._sides["real"].fed == 0:
            self._forget_rows("real")
            if not self._given:
                self._d = None

    def merge(self, other: FID) -> FID:
        """Add another FID's rows to this one's, in place (returns ``self``, for chaining): the
        result is one FID fed this one's batches, then ``other``'s (merges are associative and
        commutative up to float64 rounding, ~1e-16 relative).

        Raises:
            OptionError: ``other`` is not an FID, or differs in reference, ``precision``,
                ``nonfinite`` or how a side's rows were made (feature rows, or images through
                an encoder, resize and weights); the message names what differs.
            ShapeError: the feature dimensions differ.
        """
        if not isinstance(other, FID):
            raise OptionError(f"FID.merge takes an FID, got {type(other).__name__}")
        theirs = other._share()
        labels = ("this FID", "the FID given")
        self._d = _check_shares([self._share(), theirs], "merge()", labels)
        for side in _SIDES:
            self._sides[side].absorb(getattr(theirs, side))
        self._take_rows_of(theirs.made, theirs.described)
        self._global = None
        return self

    def sync(self, group: Any = None) -> None:
        """Gather every process's state and merge them in rank order (a collective: every
        process of ``group`` calls it). :meth:`compute` does this itself when a rank's rows
        changed; calling it is needed only to gather at another moment.

        Afterwards :meth:`compute` gives the merged state on every rank, the same bits
        everywhere, equal to one process fed the ranks' batches in rank order up to rounding
        (float64's with ``precision='fp64'``; fp32 products' otherwise, ~1e-7 relative). The
        process's own state is kept beside it: a second sync counts nothing twice,
        :meth:`state_dict` holds this process's rows, and :meth:`update` goes on adding to
        them (then :meth:`compute` gathers again).

        Args:
            group: a ``torch.distributed`` process group (default: this metric's
                ``process_group``, else the whole job).

        Raises:
            EngineError: ``torch.distributed`` is not initialised; not every rank called it
                within ``sync_timeout``.
            OptionError: the ranks gather other metrics (of another kind, or made in another
                order: ranks make their metrics, and call their syncs, in the same order); the
                processes differ in reference, settings or how their rows were made (the
                message names the ranks and what differs).
            ShapeError: feature dimensions differ between processes.
        """
        g = _group(self.process_group if group is None else group)
        g.meet(True, self.sync_timeout, "sync()")
        self._sync(g, "sync()")

    def _sync(self, g: _Group, what: str) -> None:
        """The gather itself, once every rank of ``g`` is here (``what``: the call, for
        messages)."""
        self._global = _fold(g.gather_alike(self._order, self._share(), what), what)
        self._processes, self._synced_over = g.size, g.ranks

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This process's state: per side what a statistics file holds (``n``, ``mean`` (d,),
        ``m2`` (d, d), float64), the non-finite rows dropped, the batches and how its rows
        were made (``made_by``: ``"feature rows"``, the encoder, resize and weights of image
        rows, or ``""`` before any row; ``weights_file``: where image rows' weights were
        read, or ``""``); the settings that decide the moments
        (``settings.precision``, ``settings.nonfinite``); a reference given up front as given
        (``reference.mu``, ``reference.sigma``, ``reference.n`` when known, where it came
        from, and ``reference.provenance``, how its features were made: a JSON object, when
        it records that). Arrays are CPU tensors, so that ``torch.load`` reads a checkpoint
        with its default ``weights_only=True``.

        Returns:
            A plain dict of tensors, ints and strings, with ``format`` and ``format_version``.
        """
        import torch

        share = self._share()
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "settings.precision": self.precision,
            "settings.nonfinite": self.nonfinite,
        }
        for side in _SIDES:
            rows = getattr(share, side)
            state |= {
                f"{side}.n": rows.moments.n,
                f"{side}.mean": torch.tensor(rows.moments.mean),
                f"{side}.m2": torch.tensor(rows.moments.m2),
                f"{side}.nonfinite_dropped": rows.dropped,
                f"{side}.batches": rows.batches,
                f"{side}.made_by": self._made[side] or "",
                f"{side}.weights_file": _weights_file(self._described[side]),
            }
        if self._reference is not None and self._reference_side is not None:
            ref = self._reference
            state |= {
                "reference.mu": torch.tensor(np.asarray(ref.mean, dtype=np.float64)),
                "reference.sigma": torch.tensor(np.asarray(ref.cov, dtype=np.float64)),
                "reference.location": self._reference_side.location,
            }
            if ref.n is not None:
                state["reference.n"] = int(ref.n)
            if self._reference_side.provenance:  # how its features were made, as read
                state["reference.provenance"] = json.dumps(
                    jsonable(self._reference_side.provenance)
                )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (tensors or numpy arrays): both sides and
        the reference replace this object's. A state dict of an earlier shardeval, without
        settings or ``made_by``, is read too (what it does not say is not checked).

        Raises:
            StatsFormatError: another format or a newer version, keys missing, shapes that
                differ, values not finite, counts that are not integers in [0, 2^53] (the
                bound of statistics files: float64 holds every count up to it), a covariance
                that is not symmetric or has a negative variance, moments that no rows have (a
                non-zero co-moment of one row or none, a non-zero mean of none); a state made
                with another ``precision`` or ``nonfinite`` than this FID's.
        """
        from shardeval.pipeline.fid.gaussian import Gaussian
        from shardeval.pipeline.io.statsio import check_statistics

        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise StatsFormatError(
                f"load_state_dict takes what FID.state_dict() returns (format "
                f"{STATE_FORMAT!r}), got format {got!r}"
            )
        version = _state_int(state, "format_version")
        if version > STATE_VERSION:
            raise StatsFormatError(
                f"state_dict has format version {version}, and this shardeval reads versions up "
                f"to {STATE_VERSION}: it was written by a newer shardeval"
            )
        for name in ("precision", "nonfinite"):
            key, mine = f"settings.{name}", getattr(self, name)
            if key in state and _state_value(state, key) != mine:
                theirs = _state_value(state, key)
                raise StatsFormatError(
                    f"state_dict was made by an FID with «{name}={theirs!r}», and this one has "
                    f"{mine!r}: its rows and this FID's would not be reduced alike; make the FID "
                    f"with «{name}={theirs!r}» to resume it"
                )
        made, described = {}, {}
        for side in _SIDES:
            value, weights_file = (_state_text(state, f"{side}.{k}") for k in _MADE_KEYS)
            made[side] = value or None
            images = _images_made(value)
            described[side] = None if images is None else _images_described(*images, weights_file)
        sides = {}
        for side in _SIDES:
            n = _state_int(state, f"{side}.n")
            mean, m2 = _state_array(state, f"{side}.mean"), _state_array(state, f"{side}.m2")
            m2 = check_statistics("state_dict", mean, m2, (f"{side}.mean", f"{side}.m2"))
            if n and not mean.size:
                raise StatsFormatError(f"state_dict: {side}.n is {n}, but {side}.mean is empty")
            _check_possible(side, n, mean, m2)
            sides[side] = _RunningMoments(self.backend)
            sides[side].absorb(
                _Rows(
                    Moments(n, mean, m2),
                    _state_int(state, f"{side}.nonfinite_dropped"),
                    _state_int(state, f"{side}.batches"),
                )
            )
        reference, provenance = None, {}
        if "reference.mu" in state:
            mu = _state_array(state, "reference.mu")
            sigma = _state_array(state, "reference.sigma")
            sigma = check_statistics("state_dict", mu, sigma, ("reference.mu", "reference.sigma"))
            count = _state_int(state, "reference.n") if "reference.n" in state else None
            if count is not None and count < 2:
                raise StatsFormatError(f"state_dict: the reference has n={count} < 2")
            reference = Gaussian(mu, sigma, count, str(_state_value(state, "reference.location")))
            provenance = _state_provenance(state, "reference.provenance")
        dims = {len(s.mean) for s in sides.values() if s.mean is not None}
        dims |= set() if reference is None else {reference.d}
        if len(dims) > 1:
            raise StatsFormatError(f"state_dict: the sides have different d {sorted(dims)}")
        self._global = None
        self._sides = sides
        self._made, self._described = made, described
        self._d = next(iter(dims), None)
        self._reference = self._reference_side = self._reference_extractor = self._digest = None
        self._given = False
        if reference is not None:
            read = dataclasses.replace(_statistics_side(reference), provenance=provenance)
            self._set_reference(reference, read)
        if self._device is not None:
            for running in self._sides.values():
                running.to(self._device)

    def __repr__(self) -> str:
        real = "given" if self._given else f"{self._sides['real'].fed} rows"
        return (
            f"FID(real={real}, gen={self._sides['gen'].fed} rows, d={self._d}, "
            f"device={self._device}, synced={self.synced})"
        )


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


def _torch_device(device: Any) -> torch.device:
    import torch

    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(
            f"«device» must name a torch device ('cpu', 'cuda', 'cuda:1'), got {device!r}"
        ) from exc
    if chosen.type == "meta":
        raise OptionError("«device='meta'» holds no values; name a device that computes")
    return chosen


def _check_runnable(device: torch.device | None, backend: str) -> None:
    """Refuse, before any batch, a device and backend this machine cannot run: a CUDA device
    it lacks, Triton kernels without a CUDA device to run them (outside the interpreter the
    tests use). None: the device is not known yet (the first batch's).

    Raises:
        EngineError: naming the device or backend and what to use instead.
    """
    from shardeval.pipeline.core.chunks import check_device

    kind = "auto" if device is None else "cuda" if device.type == "cuda" else "cpu"
    check_device(kind, backend)
    if device is not None and device.type == "cuda" and device.index is not None:
        import torch

        count = torch.cuda.device_count()
        if device.index >= count:
            raise EngineError(
                f"«device={str(device)!r}», but this machine has {count} CUDA GPU(s), numbered "
                f"from 0; name one of them"
            )


def _state_value(state: dict[str, Any], key: str) -> Any:
    if key not in state:
        raise StatsFormatError(
            f"state_dict lacks {key!r}; it holds {sorted(state)} (load what FID.state_dict() "
            "returned)"
        )
    value = state[key]
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


#: The keys of a state dict that say how a side's rows were made (absent in state dicts of
#: earlier shardevals: read as "").
_MADE_KEYS = ("made_by", "weights_file")


def _state_text(state: dict[str, Any], key: str) -> str:
    """A string of a state dict; ``""`` when absent."""
    value = _state_value(state, key) if key in state else ""
    if not isinstance(value, str):
        raise StatsFormatError(f"state_dict: {key!r} is {value!r}; it must be a string")
    return value


def _state_provenance(state: dict[str, Any], key: str) -> dict[str, Any]:
    """How a reference's features were made, as a state dict keeps it (a JSON object; ``{}``
    when absent: nothing recorded)."""
    text = _state_text(state, key)
    try:
        provenance = json.loads(text) if text else {}
    except ValueError:
        provenance = None
    if not isinstance(provenance, dict):
        raise StatsFormatError(
            f"state_dict: {key!r} is {text[:80]!r}; it must be a JSON object (load what "
            "FID.state_dict() returned)"
        )
    return provenance


def _weights_file(described: dict[str, Any] | None) -> str:
    """Where image rows' weights were read, as a state dict keeps it (``""``: none)."""
    extraction = (described or {}).get("extraction") or {}
    return str(extraction.get("weights_file") or "")


def _check_possible(side: str, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
    """Refuse moments no rows have: a side of no rows has a zero mean and co-moment, and a
    side of one row a zero co-moment (the row minus itself).

    Raises:
        StatsFormatError: naming the side, its count and the entry that cannot be.
    """
    if n <= 1 and np.any(m2):
        raise StatsFormatError(
            f"state_dict: {side}.n is {n}, but {side}.m2 is not zero (largest entry "
            f"{np.abs(m2).max():.6g}): the co-moment of {n} row(s) is zero; the state was "
            "altered or mixed from two states: load what FID.state_dict() returned"
        )
    if n == 0 and np.any(mean):
        raise StatsFormatError(
            f"state_dict: {side}.n is 0, but {side}.mean is not zero (largest entry "
            f"{np.abs(mean).max():.6g}): a side of no rows has no mean; the state was altered "
            "or mixed from two states: load what FID.state_dict() returned"
        )


def _state_array(state: dict[str, Any], key: str) -> np.ndarray:
    return np.asarray(_state_value(state, key), dtype=np.float64)


def _state_int(state: dict[str, Any], key: str) -> int:
    """A count of a state dict: an integer in [0, 2^53], the bound statistics files hold
    counts to (float64, which the moments' arithmetic takes them in, is exact up to it)."""
    from shardeval.pipeline.io.statsio import MAX_N

    value = _state_value(state, key)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not 0 <= value <= MAX_N
    ):
        raise StatsFormatError(
            f"state_dict: {key!r} is {value!r}; it must be an integer in [0, 2^53]"
        )
    return int(value)


# ---------------------------------------------------------------------------------------------
# pair metrics: rows spilled to Zarr


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
