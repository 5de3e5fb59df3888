"""What a block pair is reduced to: the request, the result, and the result of radius tests;
a block's rows as numpy for the CPU paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from shardeval.kernels.kernel_sums import KernelSums, PolyKernel, RBFKernel


@dataclass(frozen=True, eq=False)
class PairRequest:
    """What to reduce a block pair to.

    Attributes:
        poly: the polynomial kernel and its centre, for sums of its values, or None.
        rbf: the RBF on unit rows and its centre, for sums of its complements 1 − k, or None.
        knn: k for the per-row k smallest squared distances, or None.
        radii: squared radii (x_le (m,), x_lt (m,), y_le (n,)) for :class:`RadiusDecisions`,
            or None.
        nearest: for each row of y, its nearest row of x (exact squared distance and index;
            of rows at one distance, the first).
        realism: (m,) squared radii of the rows of x (0: a row that does not count) for
            each row of y's largest ratio r_i / ‖x_i − y‖² (the realism score's square,
            :class:`PairResult`), or None.
    """

    poly: PolyKernel | None = None
    rbf: RBFKernel | None = None
    knn: int | None = None
    radii: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    nearest: bool = False
    realism: np.ndarray | None = None

    @property
    def decides(self) -> bool:
        """Whether it asks for decisions on distances (not only kernel sums)."""
        return (
            self.knn is not None
            or self.radii is not None
            or self.nearest
            or self.realism is not None
        )


class PairResult(NamedTuple):
    """The reductions a :class:`PairRequest` asked for (None where it asked nothing)."""

    poly: KernelSums | None
    rbf: KernelSums | None
    knn: tuple[np.ndarray, np.ndarray] | None
    radius: RadiusDecisions | None
    #: per row of y, (the exact squared distance (n,) to its nearest row of x, that row's
    #: index in x (n,), int64)
    nearest: tuple[np.ndarray, np.ndarray] | None = None
    #: per row of y (n,), max_i r_i / ‖x_i − y‖² over the rows of x with r_i > 0 (0 where
    #: none; inf where such a row equals y), from the exact float64 squared distances
    realism: np.ndarray | None = None


class RadiusDecisions(NamedTuple):
    """Per-row outcomes of comparing a block pair's distances with radii.

    Attributes:
        y_within_x_radius: (n,) for each y, whether some x_i has ‖x_i − y‖ ≤ r_x,i (``le``).
        y_count_x_radius: (n,) for each y, how many x_i have ‖x_i − y‖ < r2_x,i (strict).
        x_within_y_radius: (m,) for each x, whether some y_j has ‖x − y_j‖ ≤ r_y,j.
        x_covered: (m,) for each x, whether some y_j has ‖x − y_j‖ < r2_x,i (strict).
        uncertain: pairs that were re-decided in float64.
    """

    y_within_x_radius: np.ndarray
    y_count_x_radius: np.ndarray
    x_within_y_radius: np.ndarray
    x_covered: np.ndarray
    uncertain: int


def to_numpy(x: Any) -> np.ndarray:
    """A block as a numpy array for the CPU path: tensors copied to the host, bfloat16 (which
    numpy lacks) as float32, exactly."""
    if isinstance(x, np.ndarray):
        return x
    if str(x.dtype) == "torch.bfloat16":
        x = x.float()
    return np.asarray(x.detach().cpu().numpy())
