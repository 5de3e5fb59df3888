"""Log-sum-exp reductions on the CPU in numpy: the same sums as :mod:`shardeval.kernels.lse`
without torch, so that the CPU paths of ESS and the importance-weighted NLL never import it (an
import that costs seconds against milliseconds of arithmetic on a few thousand weights).

Float64 throughout; ``max`` is −inf and the sums 0 where nothing (or only −inf) was seen, as in
the torch path. Inputs hold no NaN or +inf: the pipeline leaves those out and counts them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class WeightSumsNumpy(NamedTuple):
    """As :class:`shardeval.kernels.lse.WeightSums`, in numpy float64: n, m = max lw,
    Σ exp(lw − m), Σ exp(2(lw − m)), the ``top`` largest lw, descending, and, when asked
    (``higher``), Σ exp(3(lw − m)) and Σ exp(4(lw − m)) (else None)."""

    n: int
    max: float
    sum: float
    sum_sq: float
    top: np.ndarray
    sum_cube: float | None = None
    sum_fourth: float | None = None


def _finite_or_zero(m: np.ndarray) -> np.ndarray:
    # A max of -inf (no positive weight) scales nothing: exp(-inf - 0) = 0, not NaN.
    return np.where(np.isneginf(m), 0.0, m)


def largest(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values along the last axis, descending (``torch.topk``'s order)."""
    n = values.shape[-1]
    k = min(k, n)
    top = np.partition(values, n - k, axis=-1)[..., n - k :] if k else values[..., :0]
    return np.flip(np.sort(top, axis=-1), axis=-1).astype(np.float64)


def weight_stats_numpy(log_w: np.ndarray, top: int = 0, higher: bool = False) -> WeightSumsNumpy:
    """Sufficient statistics of importance log-weights (flattened), as
    :func:`shardeval.kernels.weight_stats` computes them; ``higher`` adds the sums of the
    third and fourth powers against the same max (as products of the first two powers'
    exponentials, which are computed the same way either way).

    Example:
        >>> import numpy as np
        >>> w = weight_stats_numpy(np.log([1.0, 1.0, 2.0]), top=1)
        >>> round(w.sum**2 / w.sum_sq, 6)   # ESS = 16 / 6
        2.666667
    """
    v = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if v.size == 0:
        nothing = 0.0 if higher else None
        return WeightSumsNumpy(0, -np.inf, 0.0, 0.0, np.zeros(0), nothing, nothing)
    m = float(v.max())
    shifted = v - float(_finite_or_zero(np.asarray(m)))
    w, w2 = np.exp(shifted), np.exp(2.0 * shifted)
    cube = fourth = None
    if higher:  # products of the two exponentials: two multiplications, no more exp
        cube, fourth = float((w2 * w).sum()), float((w2 * w2).sum())
    return WeightSumsNumpy(
        v.size, m, float(w.sum()), float(w2.sum()), largest(v, top), cube, fourth
    )


def row_logsumexp_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of an (n, K) array: m = max and s = Σ exp(x − m) (LSE = m + log s)."""
    v = np.asarray(x, dtype=np.float64)
    m = v.max(axis=1)
    return m, np.exp(v - _finite_or_zero(m)[:, None]).sum(axis=1)
