"""Training-loop NLL and ESS: per-sample log-likelihoods or importance log-weights fed batch by
batch, spilled, and summarised by :func:`shardeval.nll` and :func:`shardeval.ess` over all of
them.

Why rows and not merged statistics: the mean NLL and the ESS alone merge exactly from
registered states (``ScalarMoments``, ``WeightStats``), but the report's PSIS k̂ fits the
largest M = ⌈min(N/5, 3√(N/r_eff))⌉ weights, and M depends on the N of every rank together:
no fixed top-M kept per batch holds it exactly. The values are 8 bytes each; spilled, they
cost a work folder, not memory, and the one-shot function computes on them unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from shardeval.api.results import Report
from shardeval.api.streaming.batches import _SAME_ROWS, _tensor
from shardeval.api.streaming.distributed import SYNC_TIMEOUT_SECONDS, _made_here
from shardeval.api.streaming.spill import SpilledMetric
from shardeval.pipeline.errors import OptionError, ShapeError

#: The run options the one-shot functions take beside the values (reading, engine, kernels).
_RUN_OPTIONS = (
    "shard_rows",
    "split_every",
    "device",
    "backend",
    "nonfinite",
    "scheduler",
    "cluster",
    "threads",
    "performance_report",
    "progress",
    "log",
)


class _LogValues(SpilledMetric):
    """Log values (B,) or (B, K) fed with ``update``, spilled as float64 rows (n, 1) or
    (n, K), and summarised by a one-shot function (:meth:`_summarise`) over all of them."""

    #: the shapes a batch may have: 1 for (B,), 2 for (B, K)
    _ndims: tuple[int, ...] = (1, 2)
    #: the options of the one-shot function this metric takes, beside the run options
    _own_options: ClassVar[tuple[str, ...]]
    _fixes: ClassVar[dict[str, str]] = {
        "options": "make them with the same options",
        "gen": _SAME_ROWS.replace("rows", "values", 1),
    }

    def __init__(
        self,
        *,
        work_dir: Any = None,
        process_group: Any = None,
        sync_timeout: float | None = SYNC_TIMEOUT_SECONDS,
        **options: Any,
    ) -> None:
        from shardeval.api.functions import check_options

        unknown = sorted(set(options) - {*self._own_options, *_RUN_OPTIONS})
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {unknown}")
        check_options({k: v for k, v in options.items() if k not in ("progress", "log")})
        super().__init__("inception", None, None, None, process_group, sync_timeout)
        self.options = {k: v for k, v in options.items() if v is not None}
        self.reset_real = True
        self._work_dir = None if work_dir is None else str(work_dir)
        self._open_folder()
        self._global = None
        self._order = _made_here(type(self).__name__.lower())

    def update(self, x: Any) -> None:
        """Add a batch of values: a tensor on any device or a numpy array, (B,) or (B, K) as
        the metric takes them (NaN and ±inf are the one-shot function's to count or refuse).

        Raises:
            ShapeError: another shape, or another K than earlier batches.
            DtypeError: not real numbers.
        """
        import torch

        self._live()
        self._calls += 1
        what = f"update() call {self._calls}"
        t = _tensor(x, what)
        shapes = " or ".join("(B,)" if n == 1 else "(B, K)" for n in self._ndims)
        if t.ndim not in self._ndims:
            raise ShapeError(
                f"{what} has shape {tuple(t.shape)}; {type(self).__name__} takes {shapes}"
            )
        rows = t.to(torch.float64).cpu().numpy()
        if not len(rows):
            return
        kind = "values (N,)" if rows.ndim == 1 else f"values (N, K) with K={rows.shape[1]}"
        rows = rows.reshape(len(rows), -1)
        if self._made["gen"] not in (None, kind):
            raise ShapeError(
                f"{what} holds {kind}, but the earlier batches hold {self._made['gen']}"
            )
        self._append("gen", rows, what)
        self._made["gen"], self._described["gen"] = kind, {"values": kind}

    def _append(self, side: str, rows: Any, what: str) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        self._spills[side].append(rows)
        self._d = rows.shape[1]
        self._global = None

    def _identity(self) -> dict[str, Any]:
        return {"options": self.options, "real": None, "gen": self._made["gen"]}

    def _load(self, state: dict[str, Any]) -> None:
        super()._load(state)
        made = self._made["gen"]
        self._described["gen"] = None if made is None else {"values": made}

    def _compute(
        self, paths: dict[str, str], processes: int, described: dict[str, dict[str, Any] | None]
    ) -> Report:
        import dask.array as da

        if "gen" not in paths:
            raise ShapeError(f"{type(self).__name__} holds no values: call update(x)")
        values = da.from_zarr(paths["gen"])
        if (described["gen"] or {}).get("values") == "values (N,)":
            values = values[:, 0]
        report = self._summarise(values)
        data = {**report.data, "processes": processes}
        return Report(report.metric, report.results, data, report.text, report.value)

    def _summarise(self, values: Any) -> Report:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._spills['gen'].n} rows, folder={self.folder!r}, "
            f"synced={self.synced})"
        )


class NLL(_LogValues):
    """Mean negative log-likelihood with its standard error, accumulated batch by batch:
    ``update(loglik)`` with per-sample log-likelihoods (B,) of a model (its ``log p(x)``), or,
    with ``iw=True``, importance log-weights (B, K) (IWAE, Burda et al. 2016).
    ``compute()`` is the report of :func:`shardeval.nll` over every value fed (every rank's
    under ``torch.distributed``).

    Args:
        iw: the batches are importance log-weights (B, K) rather than log-likelihoods (B,).
        dims: dimensions per sample, for bits/dim.
        reff: relative efficiency of the draws, for the PSIS tail (``iw`` only).
        ci: a confidence level: the normal interval of the mean NLL (see
            :func:`shardeval.nll`); 0 or None: none.
        work_dir, process_group, sync_timeout: as for :class:`~shardeval.RowMetrics`.
        **options: :func:`shardeval.nll`'s run options (``nonfinite``, ``shard_rows``,
            ``split_every``, ``device``, ``backend``, ``scheduler``, …).

    Raises:
        TypeError: an option :func:`shardeval.nll` does not take.
        OptionError: an option's value out of its range; ``reff`` without ``iw``.

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> with se.NLL(dims=3) as nll:
        ...     nll.update(np.full(4, -3.0))
        ...     nll.update(np.full(6, -1.0))
        ...     report = nll.compute()
        >>> float(report)                      # (4·3 + 6·1) / 10
        1.8
        >>> report.to_dict()["n"]
        10
    """

    state_format = "shardeval.NLL"
    called = "an NLL"
    _own_options = ("dims", "reff", "ci")

    def __init__(self, *, iw: bool = False, **options: Any) -> None:
        from shardeval.api.likelihood_functions import interval_level

        if not isinstance(iw, bool):
            raise OptionError(f"«iw» must be True or False, got {iw!r}")
        interval_level(options.get("ci"))  # refused here, not at compute()
        if not iw and options.get("reff") is not None:
            raise OptionError("«reff» applies to importance log-weights: pass «iw=True»")
        self.iw = iw
        self._ndims = (2,) if iw else (1,)
        super().__init__(**options)

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "options": {**self.options, "iw": self.iw}}

    def _summarise(self, values: Any) -> Report:
        from shardeval.api.functions import nll

        if self.iw:
            return nll(iw=values, **self.options)
        return nll(values, **self.options)


class ESS(_LogValues):
    """Effective sample size of importance log-weights, accumulated batch by batch:
    ``update(log_w)`` with (B,) or (B, K) log-weights; ``compute()`` is the report of
    :func:`shardeval.ess` over every weight fed (ESS, the largest normalised weight, PSIS k̂).

    Args:
        reff: relative efficiency of the draws (1 for independent draws).
        ci: a confidence level: the standard error and interval of ESS (see
            :func:`shardeval.ess`); 0 or None: none.
        work_dir, process_group, sync_timeout: as for :class:`~shardeval.RowMetrics`.
        **options: :func:`shardeval.ess`'s run options.

    Raises:
        TypeError: an option :func:`shardeval.ess` does not take.
        OptionError: an option's value out of its range.

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> with se.ESS() as ess:
        ...     ess.update(np.log([1.0, 1.0]))
        ...     ess.update(np.log([2.0]))
        ...     value = float(ess.compute())
        >>> round(value, 6)                    # (1 + 1 + 2)² / (1 + 1 + 4)
        2.666667
    """

    state_format = "shardeval.ESS"
    called = "an ESS"
    _own_options = ("reff", "ci")

    def __init__(self, **options: Any) -> None:
        from shardeval.api.likelihood_functions import interval_level

        interval_level(options.get("ci"))  # refused here, not at compute()
        super().__init__(**options)

    def _summarise(self, values: Any) -> Report:
        from shardeval.api.functions import ess

        return ess(values, **self.options)
