"""Gaussians fitted to feature sets: the (mean, covariance) container that statistics files and
FID share, its Cholesky factor with a rank test, and the Gaussian NLL of feature rows.

    log N(x | μ, Σ) = −½ ‖L⁻¹(x − μ)‖² − Σ_k log L_kk − (d/2) log 2π,   Σ = L Lᵀ
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.engine import Engine, Progress
from pipeline.errors import NumericalError, ShapeError
from pipeline.nll import NLLResult, summarize_nll
from pipeline.reduce import shard_tasks
from pipeline.sources import FeatureSource
from pipeline.states import Moments, NonFiniteRows, ScalarMoments
from pipeline.summaries import (
    ValueSummary,
    check_device,
    check_nonfinite,
    check_policy,
    finite_rows,
    to_tensor,
    uses_gpu,
)


@dataclass(frozen=True, eq=False)
class Gaussian:
    """Mean and covariance of a feature set.

    Attributes:
        mean: (d,) float64.
        cov: (d, d) float64, symmetric.
        n: rows behind it, or None when unknown (a bare ``mu``/``sigma`` file): such
            statistics cannot be merged with others.
        source: where it came from.
    """

    mean: np.ndarray
    cov: np.ndarray
    n: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d < 1 or self.cov.shape != (d, d):
            raise ShapeError(
                f"{self.source or 'statistics'}: mean has shape {self.mean.shape} and covariance "
                f"{self.cov.shape}; expected (d,) and (d, d)"
            )

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    @property
    def mergeable(self) -> bool:
        return self.n is not None

    @classmethod
    def from_moments(cls, moments: Moments, source: str = "") -> Gaussian:
        """Sample mean and unbiased covariance (``np.cov``'s ddof=1)."""
        return cls(moments.mean, moments.covariance(ddof=1), moments.n, source)


def as_gaussian(stats: Moments | Gaussian, source: str = "") -> Gaussian:
    return stats if isinstance(stats, Gaussian) else Gaussian.from_moments(stats, source)


def cholesky_factor(cov: np.ndarray) -> np.ndarray | None:
    """The lower Cholesky factor L of ``cov``, or None when ``cov`` is singular to float64
    working precision: Cholesky fails, or a pivot L_kk² falls below d·ε·max pivot (rounding
    of the factorisation itself lets a singular matrix pass with tiny pivots)."""
    d = cov.shape[0]
    try:
        factor = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    pivots = np.diagonal(factor) ** 2
    if pivots.min() > d * np.finfo(np.float64).eps * pivots.max():
        return factor
    return None


def summarize_gaussian(
    block: np.ndarray,
    offset: int,
    mean: np.ndarray,
    chol: np.ndarray,
    device: str = "cpu",
    backend: str = "auto",
) -> ValueSummary:
    """Log-density of each finite feature row under N(mean, L Lᵀ)."""
    import torch

    from kernels import gaussian_logpdf

    x = np.asarray(block)
    ok = finite_rows(x)
    rows = to_tensor(x[ok], device)
    lp = gaussian_logpdf(
        rows,
        torch.tensor(mean, device=rows.device),  # a copy: the statistics are read-only
        torch.tensor(chol, device=rows.device),
        backend=backend,  # type: ignore[arg-type]
    )
    return ValueSummary(
        ScalarMoments.from_values(lp.cpu().numpy()), NonFiniteRows.from_mask(~ok, offset)
    )


def nll_gaussian(
    stats: Gaussian,
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    device: str = "auto",
    backend: str = "auto",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> NLLResult:
    """NLL of feature rows under N(mean, cov) of saved statistics; also nats per dimension.

    Args:
        stats: the Gaussian (from :func:`pipeline.statsio.load_stats`).
        source: feature rows (n, d).
        engine: where to run.
        nonfinite: ``error`` or ``drop`` for rows with NaN/inf.
        device: where the kernel runs (``auto``: a worker's GPU if it has one).
        backend: kernel backend (``auto``: Triton on GPU, torch on CPU).
        split_every: fan-in of a balanced merge tree (see :meth:`Engine.reduce`).
        progress: called with (shards done, shards total).

    Returns:
        :class:`~pipeline.nll.NLLResult` with ``method='gaussian'`` and ``dims=d``.

    Raises:
        ShapeError: the dimensions differ, or the statistics have n ≤ d rows (a singular
            covariance, under which almost every row has density 0).
        NumericalError: the covariance is singular to working precision.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from pipeline.sources import open_features
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((3, 2)))
        >>> g = Gaussian(np.zeros(2), np.eye(2), n=100)
        >>> round(nll_gaussian(g, open_features(path)).nll, 6)   # log 2π
        1.837877
    """
    check_policy(nonfinite)
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    if stats.d != source.d:
        raise ShapeError(
            f"feature dimensions differ: statistics {stats.source!r} have "
            f"d={stats.d}, {source.location!r} has d={source.d}"
        )
    if stats.n is not None and stats.n <= stats.d:
        raise ShapeError(
            f"the statistics {stats.source!r} come from n={stats.n} <= d={stats.d} rows: their "
            "covariance is singular and a Gaussian NLL is not defined; use more rows"
        )
    chol = cholesky_factor(stats.cov)
    if chol is None:
        raise NumericalError(
            f"the covariance of {stats.source!r} (d={stats.d}) is singular to working "
            "precision: a Gaussian NLL under it is not defined"
        )
    import torch  # noqa: F401  # loaded before the graph runs, so its threads are budgeted

    tasks = shard_tasks(source, summarize_gaussian, stats.mean, chol, device, backend)
    (summary,) = engine.reduce(
        [tasks], split_every=split_every, progress=progress, gpu=uses_gpu(device)
    )
    check_nonfinite(source.location, summary.nonfinite, nonfinite)
    return summarize_nll("gaussian", summary, source.d)
