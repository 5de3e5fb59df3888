"""What every Triton kernel must agree with, in one table: :data:`KERNELS`.

Each launcher module declares, beside its kernel and its torch path, the kernel's
:class:`~shardeval.kernels._checking.KernelSpec`: how to make its inputs at a shape and dtype,
how to run it (the Triton path the dispatcher takes, launcher and the torch steps around it),
what the dispatcher runs instead (its torch path), its float64 reference, how far apart two
results are (one normalised error), what error is allowed per input dtype (see
:mod:`shardeval.kernels._checking` for the tolerances), and its FLOPs and bytes for a roofline.
This module assembles the declarations. Two users:

* the first-use check (:mod:`shardeval.kernels._selfcheck`): :func:`first_use_check` runs a
  kernel once per process and device on a small fp32 input against its torch path (it reads
  the launcher module's declaration, never this table);
* the GPU acceptance run (``make gpu-check``, ``benchmarks/gpu_check.py``): :func:`run_case`
  at the awkward shapes of :func:`awkward_cases` against the float64 reference, and
  :attr:`KernelSpec.timed` against the roofline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from shardeval.kernels import density, lse, moments, pair_decisions, pair_sums
from shardeval.kernels._checking import (
    CHECK_SEED,
    CHECK_SIZE,
    CHECK_SIZE_INTERPRETED,
    DTYPE_NAMES,
    Inputs,
    KernelSpec,
    Outcome,
    Shape,
    first_use_check,
    run_case,
    torch_dtype,
)
from shardeval.kernels.pair_decisions import KNN_K, exact_sq_distances_torch

__all__ = [
    "CHECK_SEED",
    "CHECK_SIZE",
    "CHECK_SIZE_INTERPRETED",
    "DIMS",
    "DTYPES",
    "KERNELS",
    "KERNELS_BY_NAME",
    "KNN_K",
    "PAIR_PARTNER",
    "ROWS",
    "Case",
    "Inputs",
    "KernelSpec",
    "Outcome",
    "Shape",
    "awkward_cases",
    "awkward_shape",
    "exact_sq_distances_torch",
    "first_use_check",
    "run_case",
    "spec",
]

#: Input dtypes the acceptance run covers, by name.
DTYPES: dict[str, torch.dtype] = {name: torch_dtype(name) for name in DTYPE_NAMES}

#: Awkward shapes of the acceptance run: one row, a few, a thousand, one past a power of two
#: (int64 offsets, masked last tiles); features below a tile, one tile, one past it, and the
#: Inception's 2,048.
ROWS = (1, 7, 1000, 65537)
DIMS = (3, 64, 129, 2048)

#: The other block of a block-pair kernel has at most this many rows (65,537 × 1,000 × 2,048
#: pairs already exercise every index path; 65,537² would cost minutes of float64 reference).
PAIR_PARTNER = 1000

#: Every Triton kernel of :mod:`shardeval.kernels`, as its launcher module declares it.
KERNELS: tuple[KernelSpec, ...] = (
    moments.CHECK,
    lse.ROW_LSE_CHECK,
    lse.FLAT_STATS_CHECK,
    density.WHITENED_SQ_NORM_CHECK,
    density.PARZEN_LSE_CHECK,
    pair_sums.CHECK,
    pair_decisions.PAIR_KNN_CHECK,
    pair_decisions.PAIR_RADIUS_CHECK,
)

KERNELS_BY_NAME: dict[str, KernelSpec] = {spec.name: spec for spec in KERNELS}


def spec(name: str) -> KernelSpec:
    """The entry of kernel ``name``.

    Raises:
        KeyError: no such kernel (the message lists them).
    """
    try:
        return KERNELS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no Triton kernel {name!r}; known: {', '.join(KERNELS_BY_NAME)}") from None


def awkward_shape(kernel: KernelSpec, rows: int, d: int) -> Shape:
    """The shape a kernel is checked at for ``rows`` and ``d``: a block-pair kernel pairs the
    rows with at most :data:`PAIR_PARTNER` others, with themselves where they are no more
    (and the kernel has a diagonal mode)."""
    if not kernel.pair:
        return Shape(rows, d)
    partner = min(rows, PAIR_PARTNER)
    return Shape(rows, d, partner, kernel.diagonal and rows <= PAIR_PARTNER)


@dataclass(frozen=True)
class Case:
    """One kernel, variant, shape and dtype to check."""

    kernel: KernelSpec = field(repr=False)
    variant: str
    shape: Shape
    dtype: str


def awkward_cases(
    kernels: tuple[KernelSpec, ...] = KERNELS,
    rows: tuple[int, ...] = ROWS,
    dims: tuple[int, ...] = DIMS,
    dtypes: tuple[str, ...] = tuple(DTYPES),
) -> Iterator[Case]:
    """Every kernel × variant × rows × d × dtype, kernel by kernel."""
    for kernel in kernels:
        for variant in kernel.variants:
            for n in rows:
                for d in dims:
                    for dtype in dtypes:
                        yield Case(kernel, variant, awkward_shape(kernel, n, d), dtype)
