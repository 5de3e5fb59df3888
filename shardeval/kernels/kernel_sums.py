"""Kernel sums over a block pair, in float64, with a bound on their rounding error.

KID and CMMD are differences of means of kernel values: Σk(x, x')/m² + Σk(y, y')/n² − 2Σk(x, y)/mn.
When the features share a large offset (Inception features are averages of ReLU outputs: all
non-negative), or are nearly parallel, the three means agree in most of their digits and the
estimator keeps only the rest. fp32 products lose exactly those digits (KID with the wrong sign
at an offset of 1,000 std), and no bound on fp32 rounding from the magnitudes a block holds
meets a 1e-5 tolerance on real features (measured on 2,048-d rows: the bound is 1.7–29× the
value itself). So the sums are taken with float64 products, from rows expanded about a centre
``o`` that both sets share, which removes the offset before any product is formed:

* polynomial kernel (γ x·y + c)^D: with a = x − o, b = y − o, x·y = o·o + o·a + o·b + a·b
  exactly, so k = (P + t)^D with P = γ o·o + c (one number for every pair) and
  t = γ(o·a + o·b + a·b). The sums are of k − P^D = Σ_{k≥1} C(D, k) P^(D−k) t^k (Horner in t),
  which every MMD estimator takes unchanged, since its weights sum to zero; the digits P^D
  would have cost are never formed.
* RBF on unit rows, summed as complements 1 − k = −expm1(−‖x̂ − ŷ‖²/2σ²): the squared
  distance is formed from x̂ − o', ŷ − o' (o' a centre of the unit rows), so nearly parallel
  rows give a small squared distance with its digits, not a difference of two numbers near 2.

Each result carries ``error``, a rigorous bound on |total − exact total| (the float64 product
error γ_{d+2}‖a‖‖b‖ per pair, the rounding of the centre terms, of the constant P, of the Horner
steps, of expm1, and of the summation), and ``magnitude``, a bound on the sum of the absolute
values summed, from which the pipeline bounds the further float64 merges. The bounds use only
norms of the rows: they cost O(m + n) beside the O(m·n·d) products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

#: Unit roundoff of float64.
U64 = 2.0**-53

#: Columns of the product reduced at a time: bounds the float64 temporaries to rows × TILE.
TILE = 512


#: The bounds are sums of positive float64 terms, each rounded: widened by this factor, they
#: stay above what exact arithmetic would give.
_BOUND_SAFETY = 1.0 + 1e-6


def gamma_n(n: int, u: float = U64) -> float:
    """γ_n = n·u/(1 − n·u): a dot product of length n errs by at most γ_n Σ|a_k b_k| in any
    summation order (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1)."""
    return n * u / (1 - n * u)


def centre_of(centre: np.ndarray | None, d: int) -> np.ndarray:
    if centre is None:
        return np.zeros(d)
    c = np.asarray(centre, dtype=np.float64)
    if c.shape != (d,):
        raise ValueError(f"the centre has shape {c.shape}; the rows have d={d}")
    return c


@dataclass(frozen=True, eq=False)
class PolyKernel:
    """The polynomial kernel (γ x·y + c)^degree, summed about a centre.

    Attributes:
        gamma: γ (KID: 1/d).
        coef0: c (KID: 1).
        degree: D (KID: 3).
        centre: (d,) float64 point the rows are expanded about (None: the origin); every pair
            whose sums are combined must use the same centre.
    """

    gamma: float
    coef0: float
    degree: int
    centre: np.ndarray | None = None

    def describe(self) -> str:
        return f"({self.gamma:.4g} x·y + {self.coef0:g})^{self.degree}"

    def __post_init__(self) -> None:
        if int(self.degree) != self.degree or self.degree < 1:
            raise ValueError(f"degree must be a positive integer, got {self.degree!r}")


@dataclass(frozen=True, eq=False)
class RBFKernel:
    """The Gaussian RBF exp(−‖x̂ − ŷ‖²/2σ²) on rows scaled to unit norm, summed as 1 − k.

    Attributes:
        sigma: σ (CMMD: 10).
        centre: (d,) float64 centre of the unit rows (None: the origin).

    Raises:
        ValueError: σ is not positive, or so small that 1/2σ² is beyond float64.
    """

    sigma: float
    centre: np.ndarray | None = None

    def describe(self) -> str:
        return f"exp(−‖x̂ − ŷ‖²/2σ²), σ = {self.sigma:g}"

    def __post_init__(self) -> None:
        # σ = inf passed "1/(2σ²) is finite" (it is 0): every kernel value 1, MMD² 0.
        if not (0 < self.sigma < math.inf and math.isfinite(0.5 / self.sigma / self.sigma)):
            raise ValueError(
                f"sigma={self.sigma!r}: the RBF needs a finite σ > 0 with 1/(2σ²) within "
                "float64 (σ above about 5e-155)"
            )


class KernelOverflowError(ArithmeticError):
    """Kernel values, their squares or their rounding bound are beyond float64."""


def _finite(sums: KernelSums, kernel: Any) -> KernelSums:
    """``sums`` if every figure the estimators use is finite, else the overflow named."""
    figures = (sums.total, sums.squares, sums.error, sums.magnitude, sums.shift)
    if all(math.isfinite(v) for v in figures) and np.isfinite(sums.rows).all():
        return sums
    raise KernelOverflowError(
        f"sums of the kernel {kernel.describe()} over these rows are beyond float64 (about "
        "1.8e308): the features are too large for it; scale them"
    )


class KernelSums(NamedTuple):
    """Sums of kernel values over a block pair (float64).

    Every sum is of the values minus ``shift`` (the polynomial kernel: P^D, see the module),
    or of the complements 1 − k (RBF, ``shift`` 0).

    Attributes:
        total: Σ over the pair (off the diagonal for a diagonal block).
        squares: Σ of squares, same pairs.
        rows: (m,) per-row sums over the same pairs.
        cols: (n,) per-column sums over the same pairs.
        diagonal: Σ over the diagonal (i = j) of a diagonal block; 0 otherwise.
        shift: the constant subtracted from every value.
        error: bound on |total − the exact total| from rounding.
        magnitude: bound on Σ |value| over the pairs in ``total``.
    """

    total: float
    squares: float
    rows: np.ndarray
    cols: np.ndarray
    diagonal: float
    shift: float
    error: float
    magnitude: float


# ---------------------------------------------------------------------------------------------
# what both paths share: the centred rows' terms, the constants, and the error bounds


def poly_constants(kernel: PolyKernel, centre: np.ndarray) -> tuple[float, list[float]]:
    """P = γ o·o + c and the Horner coefficients C(D, k)·P^(D−k) for k = 1..D.

    Raises:
        KernelOverflowError: P^D is beyond float64.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is tested just below
        p = kernel.gamma * float(centre @ centre) + kernel.coef0
    degree = int(kernel.degree)
    try:
        coeffs = [math.comb(degree, k) * p ** (degree - k) for k in range(1, degree + 1)]
        if not (math.isfinite(p) and math.isfinite(p**degree)):
            raise OverflowError
    except OverflowError:
        raise KernelOverflowError(
            f"the kernel {kernel.describe()} about the rows' mean reaches {p:.3g}^{degree}, "
            "beyond float64: the features are too large for it; scale them"
        ) from None
    return p, coeffs


def _summation_factor(m: int, n: int) -> float:
    """Relative bound of the float64 sums inside a pair (tile sums, their accumulation over
    column tiles, the sum of the row sums), generous for either path's order."""
    return (math.log2(max(m, 2)) + math.log2(max(n, 2)) + n / 16 + 8) * U64


def _expansion(p: float, t: Any, degree: int) -> Any:
    """(p + t)^D − p^D for p, t ≥ 0, as Σ_{k≥1} C(D, k) p^(D−k) t^k (no cancellation)."""
    return sum(math.comb(degree, k) * p ** (degree - k) * t**k for k in range(1, degree + 1))


def poly_bound(
    kernel: PolyKernel,
    centre: np.ndarray,
    d: int,
    norms_a: np.ndarray,
    alpha: np.ndarray,
    norms_b: np.ndarray,
    beta: np.ndarray,
) -> tuple[float, float]:
    """(error, magnitude) of the polynomial sums over every pair (a_i, b_j) of a block pair.

    Per pair, |t| ≤ T_i = |γ|(‖a_i‖ max‖b‖ + |α_i| + max|β|) (Cauchy–Schwarz), and the computed
    t errs by the product's γ_{d+2}‖a_i‖‖b_j‖ (the centred rows' own rounding included), the
    centre terms' γ_{d+2}‖o‖(‖a‖ + ‖b‖), four roundings of the additions and one of the
    multiplication; P errs by γ_{d+2}‖o‖² and two roundings. The value (P + t)^D − P^D errs by
    at most D(|P| + T_i + δ)^(D−1) times t's error and D[(|P| + T_i + δ)^(D−1) − |P|^(D−1)]
    times P's (small beside the former exactly where P is large: the offset case), plus the
    Horner steps' (3D + 2)u of Σ C(D, k)|P|^(D−k) T_i^k, which also bounds the values'
    magnitude.
    """
    m, n = norms_a.shape[0], norms_b.shape[0]
    if m == 0 or n == 0:
        return 0.0, 0.0
    g, c, degree = abs(kernel.gamma), abs(kernel.coef0), int(kernel.degree)
    p_abs = abs(kernel.gamma * float(centre @ centre) + kernel.coef0)
    on = float(np.sqrt(centre @ centre))
    e_prod = e_dot = gamma_n(d + 2)
    nb_max, beta_max, nb_sum = float(norms_b.max()), float(np.abs(beta).max()), float(norms_b.sum())
    with np.errstate(over="ignore", invalid="ignore"):
        t_max = g * (norms_a * nb_max + np.abs(alpha) + beta_max)
        dp = g * e_dot * on * on + 2 * U64 * (g * on * on + c)
        dt_rest = (
            g * (e_dot * on * (norms_a + nb_max) + 4 * U64 * (norms_a * nb_max + np.abs(alpha)))
            + g * 4 * U64 * beta_max
            + U64 * t_max
        )
        dt_prod = g * e_prod * norms_a
        dt = dt_prod * nb_max + dt_rest
        # ∂/∂t of (P + t)^D − P^D is D(P + t)^(D−1); ∂/∂P is D[(P + t)^(D−1) − P^(D−1)], small
        # where |t| ≪ |P| (the offset case): both taken at the far end of the rounding.
        p_far, t_far = p_abs + dp, t_max + dt
        slope_t = degree * (p_far + t_far) ** (degree - 1)
        slope_p = degree * _expansion(p_far, t_far, degree - 1)
        error_rows = slope_t * (dt_prod * nb_sum + n * dt_rest) + n * slope_p * dp
        # Σ_k C(D, k)|P|^(D−k) T^k bounds the values, and the Horner steps' rounding.
        magnitude = float(n * _expansion(p_abs, t_max, degree).sum())
        error = float(error_rows.sum()) + (3 * degree + 2) * U64 * magnitude
    return _BOUND_SAFETY * (error + _summation_factor(m, n) * magnitude), magnitude


def rbf_bound(
    sigma: float, d: int, norms_a: np.ndarray, norms_b: np.ndarray
) -> tuple[float, float]:
    """(error, magnitude) of the RBF complement sums over every pair of a block pair.

    The unit rows err by γ_{d+2} (norm, square root, division) and their centring by u‖a‖;
    through t = ‖a − b‖² that is 2(‖a‖ + ‖b‖)(δa + δb) + (δa + δb)², small for nearly parallel
    rows, whose centred norms are small. Forming t from
    ‖a‖² + ‖b‖² − 2a·b adds (γ_d + 3u)(‖a‖ + ‖b‖)². The complement −expm1(−t/2σ²) has slope at
    most 1/2σ² in t and its own rounding of a few u; it lies in [0, min(1, t/2σ²)].
    """
    m, n = norms_a.shape[0], norms_b.shape[0]
    if m == 0 or n == 0:
        return 0.0, 0.0
    inv = 0.5 / sigma / sigma  # never σ² itself: it underflows for σ near 1e-160
    nb_max = float(norms_b.max())
    unit_a = gamma_n(d + 2) + U64 * norms_a
    unit_b = gamma_n(d + 2) + U64 * nb_max
    with np.errstate(over="ignore", invalid="ignore"):
        t_max = (norms_a + nb_max) ** 2
        rounding = unit_a + unit_b
        dt = (
            (gamma_n(d) + 3 * U64) * t_max
            + 2 * (norms_a + nb_max + rounding) * rounding
            + rounding**2
        )
        value_max = np.minimum(1.0, t_max * inv)
        magnitude = float(n * value_max.sum())
        error = float(n * (dt * inv + 4 * U64 * value_max).sum())
    return _BOUND_SAFETY * (error + _summation_factor(m, n) * magnitude), magnitude


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm, in float64 (rows of zeros stay zero). Each row is
    first scaled by a power of two (exact) so that its squares neither overflow nor vanish:
    rows near 1e200 or 1e-200 are scaled like any other."""
    x64 = np.asarray(x, dtype=np.float64)
    if x64.shape[0] == 0:
        return x64.copy()
    peak = np.abs(x64).max(axis=1)
    _, exponent = np.frexp(np.where(peak > 0, peak, 1.0))
    scaled = np.ldexp(x64, -exponent[:, None])
    norms = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
    return scaled / np.where(norms > 0, norms, 1.0)[:, None]


def poly_terms(x: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred rows a = x − o, α = o·a and ‖a‖, in float64 (inf beyond float64: the bound
    and the sums then say so)."""
    a = np.asarray(x, dtype=np.float64) - centre
    with np.errstate(over="ignore", invalid="ignore"):
        return a, a @ centre, np.sqrt(np.einsum("ij,ij->i", a, a))


def unit_terms(x: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred unit rows a = x/‖x‖ − o', ‖a‖² and ‖a‖, in float64 (rows of zeros stay zero:
    the pipeline refuses them before any pair runs)."""
    a = unit_rows(x) - centre
    sq = np.einsum("ij,ij->i", a, a)
    return a, sq, np.sqrt(sq)


# ---------------------------------------------------------------------------------------------
# the CPU path


def _accumulate(
    values: np.ndarray,
    start: int,
    diagonal_block: bool,
    out: dict[str, Any],
) -> None:
    """Add one column tile of values to the running sums, the diagonal set apart."""
    if diagonal_block:
        i = np.arange(start, min(start + values.shape[1], values.shape[0]))
        out["diagonal"] += float(values[i, i - start].sum())
        values[i, i - start] = 0.0
    out["rows"] += values.sum(axis=1)
    out["cols"][start : start + values.shape[1]] = values.sum(axis=0)
    out["squares"] += float(np.vdot(values, values))


def poly_sums(
    x: np.ndarray, y: np.ndarray, kernel: PolyKernel, *, diagonal_block: bool = False
) -> KernelSums:
    """Sums of (γ x·y + c)^D − P^D over a block pair, float64 products of centred rows.

    .. math:: k(x, y) - P^D = \\sum_{k=1}^{D} \\binom{D}{k} P^{D-k} t^k,\\quad
              P = \\gamma\\, o\\cdot o + c,\\quad t = \\gamma\\,(o\\cdot a + o\\cdot b + a\\cdot b)

    Args:
        x: (m, d) rows.
        y: (n, d) rows (the same block as ``x`` when ``diagonal_block``).
        kernel: the kernel and the centre.
        diagonal_block: ``x`` and ``y`` are one block of one set: the pairs (i, i) are summed
            apart into ``diagonal``.

    Returns:
        :class:`KernelSums` with ``shift`` = P^D.

    Example:
        >>> import numpy as np
        >>> s = poly_sums(np.ones((2, 2)), np.ones((3, 2)), PolyKernel(0.5, 1.0, 3))
        >>> s.total + 6 * s.shift, s.rows.tolist()   # (0.5·2 + 1)³ = 8 over 2 × 3 pairs
        (48.0, [21.0, 21.0])
    """
    d = x.shape[1]
    centre = centre_of(kernel.centre, d)
    a, alpha, norms_a = poly_terms(x, centre)
    b, beta, norms_b = (a, alpha, norms_a) if y is x else poly_terms(y, centre)
    p, coeffs = poly_constants(kernel, centre)
    out: dict[str, Any] = {"rows": np.zeros(a.shape[0]), "cols": np.zeros(b.shape[0])}
    out["squares"] = out["diagonal"] = 0.0
    for start in range(0, b.shape[0], TILE):
        stop = min(start + TILE, b.shape[0])
        t = a @ b[start:stop].T
        t += alpha[:, None]
        t += beta[None, start:stop]
        t *= kernel.gamma
        values = t * coeffs[-1]
        for coeff in reversed(coeffs[:-1]):
            values += coeff
            values *= t
        _accumulate(values, start, diagonal_block, out)
    error, magnitude = poly_bound(kernel, centre, d, norms_a, alpha, norms_b, beta)
    sums = KernelSums(
        float(out["rows"].sum()),
        out["squares"],
        out["rows"],
        out["cols"],
        out["diagonal"],
        p ** int(kernel.degree),
        error,
        magnitude,
    )
    return _finite(sums, kernel)


def rbf_sums(
    x: np.ndarray, y: np.ndarray, kernel: RBFKernel, *, diagonal_block: bool = False
) -> KernelSums:
    """Sums of 1 − exp(−‖x̂ − ŷ‖²/2σ²) over a block pair, from centred unit rows in float64.

    A row's distance to itself is exactly 0 (its complement too), whatever the rounding.

    Example:
        >>> import numpy as np
        >>> s = rbf_sums(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]), RBFKernel(1.0))
        >>> round(s.total, 12) == round(1 - float(np.exp(-1.0)), 12)   # ‖x̂ − ŷ‖² = 2
        True
    """
    d = x.shape[1]
    centre = centre_of(kernel.centre, d)
    a, sq_a, norms_a = unit_terms(x, centre)
    b, sq_b, norms_b = (a, sq_a, norms_a) if y is x else unit_terms(y, centre)
    scale = -0.5 / kernel.sigma / kernel.sigma
    out: dict[str, Any] = {"rows": np.zeros(a.shape[0]), "cols": np.zeros(b.shape[0])}
    out["squares"] = out["diagonal"] = 0.0
    for start in range(0, b.shape[0], TILE):
        stop = min(start + TILE, b.shape[0])
        t = a @ b[start:stop].T
        t *= -2.0
        t += sq_a[:, None]
        t += sq_b[None, start:stop]
        np.maximum(t, 0.0, out=t)
        t *= scale
        values = np.expm1(t, out=t)
        values *= -1.0
        _accumulate(values, start, diagonal_block, out)
        if diagonal_block:
            out["diagonal"] = 0.0  # 1 − k(x, x) = 0 exactly
    error, magnitude = rbf_bound(kernel.sigma, d, norms_a, norms_b)
    sums = KernelSums(
        float(out["rows"].sum()),
        out["squares"],
        out["rows"],
        out["cols"],
        0.0,
        0.0,
        error,
        magnitude,
    )
    return _finite(sums, kernel)


def kernel_sums_reference(
    x: np.ndarray,
    y: np.ndarray,
    kernel: PolyKernel | RBFKernel,
    *,
    diagonal_block: bool = False,
) -> KernelSums:
    """Float64 reference by the definition, the whole m × n matrix at once (for tests): the
    polynomial kernel from x·y itself (no centre; minus P^D of the kernel's centre), the RBF
    from the difference of the unit rows. ``error`` and ``magnitude`` are 0."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if isinstance(kernel, PolyKernel):
        p, _ = poly_constants(kernel, centre_of(kernel.centre, x.shape[1]))
        shift = p ** int(kernel.degree)
        k = (kernel.gamma * (x64 @ y64.T) + kernel.coef0) ** int(kernel.degree) - shift
    else:
        shift = 0.0
        diff = unit_rows(x64)[:, None, :] - unit_rows(y64)[None, :, :]
        k = -np.expm1(-np.einsum("ijk,ijk->ij", diff, diff) / (2 * kernel.sigma**2))
    diagonal = 0.0
    if diagonal_block:
        diagonal = float(np.trace(k))
        np.fill_diagonal(k, 0.0)
    return KernelSums(
        float(k.sum()), float((k * k).sum()), k.sum(1), k.sum(0), diagonal, shift, 0.0, 0.0
    )
