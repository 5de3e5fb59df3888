"""The checks every statistics file passes before it is used, whatever its format: an integer
row count ``n`` ≥ 2 that float64 holds exactly (:func:`check_n`), and a finite mean with a
finite, symmetric covariance of non-negative variances (:func:`check_statistics`).
"""

from __future__ import annotations

import zipfile
import zlib
from typing import Any

import numpy as np

from shardeval.pipeline.errors import StatsFormatError

#: Largest asymmetry max|Σ − Σᵀ| / max|Σ| accepted: float32 storage of a symmetric matrix is
#: exactly symmetric, and anything computed then rounded stays within a few ulps of fp32.
SYMMETRY_RTOL = 1e-5


#: Largest row count accepted: float64 counts are exact up to 2^53.
MAX_N = 2**53


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def check_n(path: str, n: Any) -> int:
    """An exact row count: an integer in [2, 2^53] (``path``: how messages name the
    statistics).

    Raises:
        StatsFormatError: anything else.
    """
    if isinstance(n, np.ndarray):
        n = n.item() if n.ndim == 0 and n.dtype.kind in "iu" else n
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise StatsFormatError(
            f"{path!r}: the row count n is {n!r}; it must be an integer (how many rows the "
            "statistics summarise)"
        )
    if not 2 <= int(n) <= MAX_N:
        raise StatsFormatError(f"{path!r}: the row count n is {int(n)}; it must be in [2, 2^53]")
    return int(n)


def check_statistics(
    path: str, mean: np.ndarray, second: np.ndarray, names: tuple[str, str]
) -> np.ndarray:
    """Shapes, finite values, symmetry and non-negative diagonal of a covariance-like matrix;
    returns it exactly symmetric. The one check of statistics, read from a file or given in
    memory (``path``: how messages name them; ``names``: of the mean and the matrix).

    Asymmetry up to :data:`SYMMETRY_RTOL` of the largest entry is rounding, and the matrix is
    symmetrised; more is refused (a matrix holding one triangle would give a wrong FID).

    Raises:
        StatsFormatError: naming what is wrong.
    """
    a, b = names
    if mean.ndim != 1 or second.shape != (mean.shape[0], mean.shape[0]):
        raise StatsFormatError(
            f"{path!r}: {a!r} has shape {mean.shape} and {b!r} {second.shape}; "
            "expected (d,) and (d, d)"
        )
    if not (np.isfinite(mean).all() and np.isfinite(second).all()):
        raise StatsFormatError(f"{path!r}: {a!r} or {b!r} holds NaN or inf")
    scale = float(np.abs(second).max()) if second.size else 0.0
    asymmetry = float(np.abs(second - second.T).max()) if second.size else 0.0
    if asymmetry > SYMMETRY_RTOL * scale:
        raise StatsFormatError(
            f"{path!r}: {b!r} is not symmetric (max |S - S^T| = {asymmetry:.3g} against max |S| "
            f"= {scale:.3g}); it may hold only one triangle. A covariance must be stored whole"
        )
    if (np.diagonal(second) < 0).any():
        raise StatsFormatError(f"{path!r}: {b!r} has a negative variance on its diagonal")
    return 0.5 * (second + second.T)
