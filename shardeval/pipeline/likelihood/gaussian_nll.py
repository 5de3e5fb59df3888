"""The Gaussian NLL of feature rows under saved statistics,

    log N(x | μ, Σ) = −½ ‖L⁻¹(x − μ)‖² − Σ_k log L_kk − (d/2) log 2π,   Σ = L Lᵀ,

with fp32 products only where a bound on their rounding meets the stated tolerance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from shardeval.kernels.moments import wide_dtype
from shardeval.pipeline.core.chunks import (
    ValueSummary,
    check_device,
    check_nonfinite,
    check_policy,
    finite_rows,
    to_tensor,
    uses_gpu,
)
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.core.states import (
    Examples,
    NonFiniteRows,
    ScalarMoments,
    examples_of,
    state,
)
from shardeval.pipeline.errors import NumericalError, RoundingWarning, ShapeError
from shardeval.pipeline.fid.gaussian import Gaussian, cholesky_factor
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.likelihood.nll import NLLResult, summarize_nll

_LOG_2PI = math.log(2 * math.pi)


#: The Gaussian NLL's Mahalanobis term is stated to this relative accuracy: fp32 products are
#: used only where their rounding bound meets it (small d, a well-conditioned covariance).
GAUSSIAN_TOLERANCE = 1e-5


def _gaussian_summary_examples(rng: np.random.Generator) -> Examples[GaussianSummary]:
    found = [
        GaussianSummary(values, nonfinite, float(rounding))
        for values, nonfinite, rounding in zip(
            examples_of(ScalarMoments, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            rng.random(3) * 1e-9,
            strict=True,
        )
    ]
    return GaussianSummary.empty(), found


@state(examples=_gaussian_summary_examples)
@dataclass(frozen=True, eq=False)
class GaussianSummary:
    """Log-densities of a shard: moments of the finite ones, where the others are, and a
    bound on the rounding of their sum (nats)."""

    values: ScalarMoments
    nonfinite: NonFiniteRows
    rounding: float = 0.0

    @classmethod
    def empty(cls) -> GaussianSummary:
        return cls(ScalarMoments.empty(), NonFiniteRows.empty())

    def merge(self, other: GaussianSummary) -> GaussianSummary:
        return GaussianSummary(
            self.values.merge(other.values),
            self.nonfinite.merge(other.nonfinite),
            self.rounding + other.rounding,
        )


@dataclass(frozen=True, eq=False)
class Whitening:
    """What every shard needs of the Gaussian: its mean, Cholesky factor, and the norms that
    bound the rounding: ‖L⁻¹‖_F, ‖L‖₂ (the largest singular value) and ‖L‖_F.

    Attributes:
        factorisation: ρ = γ_(d+1)‖L⁻¹‖_F²‖L‖_F², a bound on ‖L⁻¹ΔΣL⁻ᵀ‖₂ for the ΔΣ with
            L Lᵀ = Σ + ΔΣ that the float64 Cholesky factorisation leaves (|ΔΣ| ≤
            γ_(d+1)|L||Lᵀ|, Higham Thm 10.3): the NLL computed is the one under Σ + ΔΣ.
    """

    mean: np.ndarray
    chol: np.ndarray
    inverse_norm: float
    factor_norm: float
    factor_frobenius: float
    factorisation: float

    @classmethod
    def of(cls, mean: np.ndarray, chol: np.ndarray) -> Whitening:
        from scipy.linalg import solve_triangular

        from shardeval.kernels.kernel_sums import gamma_n

        inverse = solve_triangular(chol, np.eye(chol.shape[0]), lower=True)
        inverse_norm, frobenius = float(np.linalg.norm(inverse)), float(np.linalg.norm(chol))
        return cls(
            mean,
            chol,
            inverse_norm,
            float(np.linalg.norm(chol, 2)),
            frobenius,
            gamma_n(chol.shape[0] + 1) * inverse_norm**2 * frobenius**2,
        )

    def relative_rounding(self, products: str) -> float:
        """Bound on |δ‖z‖| / ‖z‖ for z = L⁻¹(x − μ) by ``products`` (fp32 or float64): the
        product errs by γ_(d+3)‖L⁻¹‖_F‖x − μ‖ (the inverse's and the centring's rounding
        included), ‖z‖ ≥ ‖x − μ‖ / ‖L‖₂; the float64 inverse of L, X with |XL − I| ≤
        γ_d|X||L|, moves z by γ_d‖X‖_F‖L‖_F of itself more."""
        from shardeval.kernels.kernel_sums import gamma_n

        d = self.mean.shape[0]
        dtype = np.float32 if products == "fp32" else np.float64
        u = float(np.finfo(dtype).eps) / 2
        inverse = gamma_n(d) * self.inverse_norm * self.factor_frobenius
        return gamma_n(d + 3, u) * self.inverse_norm * self.factor_norm + inverse

    def products(self, source: FeatureSource) -> str:
        """float64 for float64 or wide-integer data, which fp32 cannot hold; else fp32 where
        its bound meets :data:`GAUSSIAN_TOLERANCE` on ‖z‖², float64 otherwise."""
        if wide_dtype(source.dtype):
            return "float64"
        r = self.relative_rounding("fp32")
        return "fp32" if 2 * r + r * r <= GAUSSIAN_TOLERANCE else "float64"


def summarize_gaussian(
    block: np.ndarray,
    offset: int,
    whitening: Whitening,
    products: str = "fp32",
    device: str = "cpu",
    backend: str = "auto",
) -> GaussianSummary:
    """Log-density of each finite feature row under N(mean, L Lᵀ), with products in
    ``products`` precision, and the bound on the rounding of their sum: per row
    ‖z‖·δ + δ²/2 + a float64 rounding of ‖z‖², δ = r‖z‖ (:meth:`Whitening.relative_rounding`),
    plus the fp32 centring's rounding of a large mean (u² ‖μ‖ through ‖L⁻¹‖_F), plus the
    factorisation's: with ρ = :attr:`Whitening.factorisation` < 1, the Mahalanobis term under
    Σ + ΔΣ is within ρ/(1 − ρ) of itself and ½ log det within d ρ/(2(1 − ρ)).

    Raises:
        NumericalError: ρ ≥ ½: the covariance is too ill-conditioned for float64 to bound.
    """
    import torch

    from shardeval.kernels import gaussian_logpdf

    x = np.asarray(block)
    ok = finite_rows(x)
    rows = x[ok].astype(np.float64) if products == "float64" else x[ok]
    tensor = to_tensor(rows, device)
    lp = gaussian_logpdf(
        tensor,
        torch.tensor(whitening.mean, device=tensor.device),  # a copy: read-only statistics
        torch.tensor(whitening.chol, device=tensor.device),
        backend=backend,  # type: ignore[arg-type]
    )
    lp_np = lp.cpu().numpy()
    d = whitening.mean.shape[0]
    log_det = float(np.log(np.diagonal(whitening.chol)).sum())
    sq = np.maximum(-2.0 * (lp_np + log_det + 0.5 * d * _LOG_2PI), 0.0)
    norm_z = np.sqrt(sq)
    r = whitening.relative_rounding(products)
    delta = r * norm_z
    if products == "fp32":  # the mean enters as two fp32 terms: u² of it is lost
        u32 = float(np.finfo(np.float32).eps) / 2
        delta = delta + whitening.inverse_norm * u32 * u32 * float(np.linalg.norm(whitening.mean))
    u64 = 2.0**-53
    rho = whitening.factorisation
    factor = rho / (1 - rho)
    per_row = norm_z * delta + 0.5 * delta * delta + (d + 4) * u64 * (sq + np.abs(lp_np))
    per_row = per_row + 0.5 * (sq + delta * (2 * norm_z + delta)) * factor + 0.5 * d * factor
    rounding = float(per_row.sum())
    return GaussianSummary(
        ScalarMoments.from_values(lp_np), NonFiniteRows.from_mask(~ok, offset), rounding
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
        stats: the Gaussian (from :func:`shardeval.pipeline.io.statsio.load_stats`).
        source: feature rows (n, d).
        engine: where to run.
        nonfinite: ``error`` or ``drop`` for rows with NaN/inf.
        device: where the kernel runs (``auto``: a worker's GPU if it has one).
        backend: kernel backend (``auto``: Triton on GPU, torch on CPU).
        split_every: fan-in of a balanced merge tree (see :meth:`Engine.reduce`).
        progress: called with (shards done, shards total).

    Returns:
        :class:`~shardeval.pipeline.likelihood.nll.NLLResult` with ``method='gaussian'`` and
        ``dims=d``.

    Raises:
        ShapeError: the dimensions differ, or the statistics have n ≤ d rows (a singular
            covariance, under which almost every row has density 0).
        NumericalError: the covariance is singular to working precision.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.pipeline.io.stores import open_features
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

    whitening = Whitening.of(stats.mean, chol)
    if whitening.factorisation >= 0.5:
        raise NumericalError(
            f"the covariance of {stats.source!r} (d={stats.d}) is too ill-conditioned for a "
            f"Gaussian NLL in float64: its Cholesky factorisation's rounding (bound "
            f"{whitening.factorisation:.2g} relative) could change the result entirely"
        )
    products = whitening.products(source)
    tasks = shard_tasks(source, summarize_gaussian, whitening, products, device, backend)
    (summary,) = engine.reduce(
        [tasks], split_every=split_every, progress=progress, gpu=uses_gpu(device)
    )
    check_nonfinite(source.location, summary.nonfinite, nonfinite)
    n = max(summary.values.n, 1)
    result = summarize_nll(
        "gaussian",
        ValueSummary(summary.values, summary.nonfinite),
        source.d,
        products=products,
        rounding_bound=summary.rounding / n,
    )
    bound = result.extra["rounding_bound"]
    if bound > GAUSSIAN_TOLERANCE * abs(result.nll):
        warnings.warn(
            RoundingWarning(
                f"the Gaussian NLL {result.nll:.8g} is right to ±{bound:.2g} nats only (its "
                "rounding bound; the covariance is ill-conditioned)"
            ),
            stacklevel=2,
        )
    return result
