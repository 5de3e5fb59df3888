"""What every training-loop metric does with a batch before its own arithmetic: tell features from
images (and encode these), check d, record how each side's rows were made, and refuse what
cannot be put together."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.inputs import image_pixels
from shardeval.api.streaming.distributed import SYNC_TIMEOUT_SECONDS, _check_timeout, _made_here
from shardeval.pipeline.errors import (
    DtypeError,
    EngineError,
    NumericalError,
    OptionError,
    ShapeError,
)

if TYPE_CHECKING:
    import torch

    from shardeval.kernels.encoders import Encoder

#: What a side's rows are, when they were fed as feature rows (image rows name their encoder).
FEATURE_ROWS = "feature rows"

_SIDES = ("real", "gen")


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise OptionError(f"«{name}» must be one of {choices}, got {value!r}")


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
    "metrics": "their metrics (row metrics merge and sync with the same metrics, options and "
    "reference)",
    "options": "the options that decide their results (row metrics merge and sync with the "
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
