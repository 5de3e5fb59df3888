"""The training-loop FID."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.report import fid_report
from shardeval.api.results import Report, Side, jsonable
from shardeval.api.streaming.base import TrainingMetric
from shardeval.api.streaming.batches import (
    _SIDES,
    _check_choice,
    _check_runnable,
    _first_rows,
    _torch_device,
)
from shardeval.api.streaming.checkpoint import (
    _check_possible,
    _made_entries,
    _read_made,
    _state_array,
    _state_int,
    _state_provenance,
    _state_value,
)
from shardeval.api.streaming.distributed import (
    SYNC_TIMEOUT_SECONDS,
    _Group,
    _made_here,
)
from shardeval.api.streaming.running import (
    _FED,
    _FID_FIXES,
    _check_shares,
    _digest,
    _fed_side,
    _FIDShare,
    _fold,
    _load_reference,
    _Rows,
    _RunningMoments,
    _statistics_side,
)
from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import (
    NonFiniteError,
    OptionError,
    ShapeError,
    StatsFormatError,
)
from shardeval.pipeline.options import BACKENDS, PRECISIONS

if TYPE_CHECKING:
    import torch

    from shardeval.pipeline.fid.gaussian import Gaussian


#: What :meth:`FID.state_dict` holds, and the version of its layout: per side the content of
#: a statistics file (``n``, ``mean``, ``m2``), under ``real.`` and ``gen.``.
STATE_FORMAT = "shardeval.FID"
STATE_VERSION = 1


class FID(TrainingMetric):
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
        ci: refused unless 0: an interval needs rows, which this class does not keep
            (``se.RowMetrics(["fid"], ci=0.95)`` does).

    Raises:
        OptionError: an option out of its choices, a «sync_timeout» out of its range, «ci».
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

    state_format = STATE_FORMAT
    called = "an FID"
    state_version = STATE_VERSION
    _fixes = _FID_FIXES

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
        ci: float = 0.0,
    ) -> None:
        from shardeval.pipeline.metrics import METRICS

        if ci:
            raise OptionError(
                f"«ci» = {ci!r}: se.FID keeps each set's moments, not its rows, and FID's "
                "interval needs the rows' groups by their index in the whole set: use "
                f"se.RowMetrics(['fid'], ci={ci!r}), which keeps the rows (in a work folder)"
            )
        _check_choice("backend", backend, BACKENDS)
        _check_choice("precision", precision, PRECISIONS)
        super().__init__(encoder, weights, resize, batch_size, process_group, sync_timeout)
        self.backend, self.precision = backend, precision
        # checked by the FID plug-in's declaration, its default filled in
        given = {} if nonfinite is None else {"nonfinite": nonfinite}
        self.nonfinite = METRICS["fid"](given).options["nonfinite"]
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

    def _report(self, synced: bool) -> Report:
        """The report of :func:`shardeval.fid` for the gathered state (``synced``) or this
        rank's: ``float()`` the FID, ``results["fid"]`` the
        :class:`~shardeval.pipeline.fid.frechet.FrechetDistance`, its ``settings`` this
        metric's."""
        import torch

        from shardeval.api.functions import _noted
        from shardeval.pipeline.fid.frechet import (
            frechet_distance,
            warn_if_rounding_reached_spectrum,
        )
        from shardeval.pipeline.fid.gaussian import Gaussian

        start = time.perf_counter()
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
        return report

    def _identity(self) -> dict[str, Any]:
        return {
            "reference": self._digest,
            "precision": self.precision,
            "nonfinite": self.nonfinite,
            "real": self._made["real"],
            "gen": self._made["gen"],
        }

    def _settings(self) -> dict[str, Any]:
        return {"precision": self.precision, "nonfinite": self.nonfinite}

    def _held(self, side: str) -> int:
        return self._sides[side].fed

    def _clear(self, side: str) -> None:
        self._sides[side] = _RunningMoments(self.backend)

    def _absorb(self, other: FID) -> None:
        theirs = other._share()
        labels = ("this FID", "the FID given")
        self._d = _check_shares([self._share(), theirs], "merge()", labels)
        for side in _SIDES:
            self._sides[side].absorb(getattr(theirs, side))

    def _sync(self, g: _Group, what: str) -> None:
        """The gather itself, once every rank of ``g`` is here (``what``: the call, for
        messages)."""
        self._global = _fold(g.gather_alike(self._order, self._share(), what), what)
        self._processes, self._synced_over = g.size, g.ranks

    # -- checkpoints ---------------------------------------------------------------------------

    def _entries(self) -> dict[str, Any]:
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
            The entries of :meth:`state_dict` beside its format, version and settings.
        """
        import torch

        share = self._share()
        state: dict[str, Any] = {}
        for side in _SIDES:
            rows = getattr(share, side)
            state |= {
                f"{side}.n": rows.moments.n,
                f"{side}.mean": torch.tensor(rows.moments.mean),
                f"{side}.m2": torch.tensor(rows.moments.m2),
                f"{side}.nonfinite_dropped": rows.dropped,
                f"{side}.batches": rows.batches,
            }
        state |= _made_entries(self._made, self._described)
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

    def _load(self, state: dict[str, Any]) -> None:
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

        made, described = _read_made(state)
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
