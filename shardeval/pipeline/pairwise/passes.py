"""KID, CMMD, PRDC and the memorization metrics over all pairs of two feature sets, sharing
the passes.

One pass over each set's own block pairs gives the within-set kernel sums (KID, CMMD) and the
k-nearest-neighbour radii (PRDC; the training rows' nearest other row for AuthPct: its
reference's only); one pass over the cross pairs gives the cross sums, the radius tests and
each generated row's nearest reference row. Every block pair computes its product X Yᵀ once
for all the metrics asked for. (The radius tests need the radii, hence two passes.)

The peers' subset protocol for KID (:func:`kid_subsets`) gathers each subset's rows in one
read of each store per group of subsets.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.chunks import check_device
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import SHARD_PREFIX
from shardeval.pipeline.errors import (
    MetricOptionError,
    NumericalError,
    RoundingWarning,
    ShapeError,
)
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.mmd import SCALE, SIGMA, SUBSET_SEED, SUBSET_SIZE
from shardeval.pipeline.mmd.cmmd import CMMDResult, cmmd_from_sums, cmmd_standard_error
from shardeval.pipeline.mmd.kid import (
    KIDResult,
    kernel_params,
    mmd2_and_se,
    mmd2_rounding,
    subset_indices,
    subset_mmd2,
)
from shardeval.pipeline.neighbours import PR_K, K
from shardeval.pipeline.neighbours.prdc import (
    prdc_from,
    radii,
    realism_radii,
    sets_exponent,
)
from shardeval.pipeline.options import PRECISIONS
from shardeval.pipeline.pairwise.blocks import (
    PairPlan,
    SelfState,
    cross_statistics,
    inspect_sets,
    row_blocks,
    same_store,
    self_statistics,
)

#: KID and CMMD are stated to this relative accuracy: a value whose rounding bound exceeds it
#: (a value within about 1e5 bounds of zero) is reported with a warning giving the bound.
ROUNDING_TOLERANCE = 1e-5

#: Unit roundoff of float64.
_U64 = 2.0**-53


def _checked(metric: str, value: float, bound: float, standard_error: float = 0.0) -> None:
    """A value, its bound and its standard error are numbers (else an error: features too
    large for float64); a bound beyond :data:`ROUNDING_TOLERANCE` of the value is a warning."""
    if not all(math.isfinite(v) for v in (value, bound, standard_error)):
        raise NumericalError(
            f"{metric} of these features is beyond float64 (value {value}, rounding bound "
            f"{bound}, standard error {standard_error}): the features are too large for its "
            "kernel; scale them"
        )
    if bound > ROUNDING_TOLERANCE * abs(value):
        warnings.warn(
            RoundingWarning(
                f"{metric} = {value:.6g} is right to ±{bound:.2g} (its float64 rounding bound), "
                f"not to {ROUNDING_TOLERANCE:g} of itself: the value is small beside the kernel "
                "values it is the difference of"
            ),
            stacklevel=3,
        )


@contextlib.contextmanager
def _overflow_named(*sources: FeatureSource) -> Iterator[None]:
    """A kernel sum beyond float64, raised inside a pair task, as one line naming the sets."""
    from shardeval.kernels.kernel_sums import KernelOverflowError

    try:
        yield
    except KernelOverflowError as exc:
        names = " and ".join(repr(s.location) for s in sources)
        raise NumericalError(f"{names}: {exc}") from None


@dataclass(frozen=True)
class KIDParams:
    """The polynomial kernel (γ x·y + c)^degree; γ None means 1/d."""

    degree: int = 3
    gamma: float | None = None
    coef0: float = 1.0


@dataclass(frozen=True)
class CMMDParams:
    sigma: float = SIGMA
    scale: float = SCALE
    unbiased: bool = False


@dataclass(frozen=True)
class PRDCParams:
    """Neighbours of density and coverage (``k``) and of precision and recall (``pr_k``);
    ``groups`` > 0: the standard errors too, coverage's by a jackknife over that many groups
    of the generated rows (:mod:`shardeval.pipeline.neighbours.intervals`); ``realism``: each
    generated row's realism score too (:func:`~shardeval.pipeline.neighbours.prdc.realism_radii`,
    radii of ``pr_k`` neighbours)."""

    k: int = K
    pr_k: int = PR_K
    groups: int = 0
    realism: bool = False


def _check(real: FeatureSource, gen: FeatureSource, precision: str) -> None:
    if real.d != gen.d:
        raise ShapeError(
            f"feature dimensions differ: {real.location!r} has d={real.d}, "
            f"{gen.location!r} has d={gen.d}; compare features of one model"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for source in (real, gen):
        if source.n < 2:
            raise ShapeError(f"{source.location!r} has {source.n} row(s); at least 2 are needed")


def sample_metrics(
    real: FeatureSource,
    gen: FeatureSource,
    *,
    kid: KIDParams | None = None,
    cmmd: CMMDParams | None = None,
    prdc: PRDCParams | None = None,
    memorization: bool = False,
    engine: Engine | None = None,
    block_rows: int | None = None,
    precision: str = "fp32",
    split_every: int | None = None,
    device: str = "auto",
    backend: str = "auto",
    progress: Progress | None = None,
    reference_cache: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """KID, CMMD, PRDC and/or the memorization metrics of GEN against REAL, exact over all
    pairs.

    Args:
        real: the reference set (X, N rows).
        gen: the generated set (Y, M rows). The same store as ``real`` is read once, and
            KID and CMMD are the two-sample estimators all the same (see
            :mod:`shardeval.pipeline.mmd.kid`).
        kid, cmmd, prdc: the metrics wanted, with their parameters (None: not wanted).
        memorization: AuthPct and each generated row's nearest row of REAL (the training
            set), :mod:`shardeval.pipeline.memorization.authpct`.
        engine: where to run.
        block_rows: rows per block of the pair tasks (default: about 32 MiB a block).
        precision: ``fp32`` products (default) or ``fp64``.
        split_every: merge fan-in (see :meth:`Engine.reduce`).
        device: where the pair kernels run (``auto``: a worker's GPU if it has one).
        backend: ``auto``, ``triton`` or ``torch`` (float64 products run the CPU path).
        progress: called with (pairs done, pairs total), once per pass.
        reference_cache: where REAL's own-pair statistics are kept between calls (a job
            evaluates many entries against one reference).

    Returns:
        ``{"kid": KIDResult, "cmmd": CMMDResult, "prdc": PRDCResult, "memorization":
        MemorizationResult}`` for those wanted.

    Raises:
        ShapeError: dimensions differ, too few rows, or k not below the rows of a set.
        NonFiniteError: a set holds NaN or inf (pair metrics need every row).
    """
    _check(real, gen, precision)
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    from shardeval.kernels.kernel_sums import PolyKernel, RBFKernel

    if cmmd:
        try:
            RBFKernel(cmmd.sigma)
        except ValueError as exc:
            raise MetricOptionError(f"metric 'cmmd': {exc}") from None
    same = same_store(real, gen)
    # Blocks first: a cut into too many is refused before any pass reads a row.
    rb = row_blocks(real, block_rows, precision)
    gb = rb if same else row_blocks(gen, block_rows, precision)
    seen = inspect_sets([real] if same else [real, gen], engine, unit_rows=cmmd is not None)
    knn = max(prdc.k, prdc.pr_k) if prdc else None
    if memorization:  # the training rows' nearest other row
        knn = knn or 1
    exponent = 0
    # fp32 rows' float64 distances are in range
    if (prdc or memorization) and (rb.float64 or gb.float64):
        sources = [real] if same else [real, gen]
        exponent = sets_exponent([s.magnitudes for s in seen], [s.location for s in sources])
    key = ("self", real.location, real.name, kid, cmmd, knn, rb.bounds, precision, exponent)
    cached = reference_cache.get(key) if reference_cache is not None else None
    if cached is not None:
        sx, poly, rbf = cached
    else:
        # Both sets' kernel sums expand about the reference's means (see
        # shardeval.kernels.kernel_sums).
        poly = rbf = None
        if kid:
            gamma, coef0, degree = kernel_params(real.d, kid.degree, kid.gamma, kid.coef0)
            poly = PolyKernel(gamma, coef0, degree, seen[0].rows.mean)
        if cmmd:
            rbf = RBFKernel(cmmd.sigma, seen[0].units.mean)
    own = PairPlan(poly=poly, rbf=rbf, knn=knn, device=device, backend=backend, exponent=exponent)
    # AuthPct reads the reference's own pairs only: GEN's are taken for the others.
    gen_own = bool(kid or cmmd or prdc)
    sets = ([] if cached is not None else [rb]) + ([] if same or not gen_own else [gb])
    with _overflow_named(real, gen):
        stats = (
            self_statistics(sets, own, engine=engine, split_every=split_every, progress=progress)
            if sets
            else []
        )
    if cached is None:
        sx = stats[0]
    sy = sx if same else stats[-1] if gen_own else SelfState()
    if reference_cache is not None:
        reference_cache[key] = (sx, poly, rbf)
    m, n = real.n, gen.n
    cross_radii = realism = None
    if prdc and sx.knn is not None and sy.knn is not None:
        cross_radii = (radii(sx.knn, prdc.pr_k), radii(sx.knn, prdc.k), radii(sy.knn, prdc.pr_k))
        if prdc.realism:
            realism = realism_radii(cross_radii[0])
    # One store given twice takes the cross pass too: its pairs (i, i) are cross pairs of the
    # two-sample estimators (see shardeval.pipeline.mmd.kid).
    cross_plan = PairPlan(
        poly=poly,
        rbf=rbf,
        radii=cross_radii,
        nearest=memorization,
        realism=realism,
        device=device,
        backend=backend,
        exponent=exponent,
        groups=prdc.groups if prdc else 0,
    )
    cross = None
    if cross_plan.poly or cross_plan.rbf or cross_plan.radii is not None or memorization:
        with _overflow_named(real, gen):
            cross = cross_statistics(
                rb, gb, cross_plan, engine=engine, split_every=split_every, progress=progress
            )
    out: dict[str, Any] = {}
    if kid and poly and sx.poly is not None:
        if cross is None or cross.poly is None or sy.poly is None:  # unreachable
            raise ValueError("the cross pass did not compute kernel sums")
        value, se = mmd2_and_se(sx.poly, sy.poly, cross.poly, m, n)
        bound = mmd2_rounding(sx.poly, sy.poly, cross.poly, m, n)
        _checked("KID", value, bound, se)
        out["kid"] = KIDResult(
            value,
            se,
            m,
            n,
            poly.degree,
            poly.gamma,
            poly.coef0,
            "all pairs",
            same_store=same,
            rounding_bound=bound,
            sums=(sx.poly, sy.poly, cross.poly),
        )
    if cmmd and sx.rbf is not None:
        if cross is None or cross.rbf is None or sy.rbf is None:  # unreachable
            raise ValueError("the cross pass did not compute RBF sums")
        value, bound, clamped = cmmd_from_sums(
            sx.rbf, sy.rbf, cross.rbf, m, n, unbiased=cmmd.unbiased, scale=cmmd.scale
        )
        se = cmmd_standard_error(sx.rbf, sy.rbf, cross.rbf, m, n, scale=cmmd.scale)
        _checked("CMMD", value, bound, se)
        out["cmmd"] = CMMDResult(
            value,
            se,
            m,
            n,
            cmmd.sigma,
            cmmd.scale,
            "U-statistic" if cmmd.unbiased else "V-statistic",
            same_store=same,
            rounding_bound=bound,
            clamped=clamped,
        )
    if prdc:
        if cross is None or cross.radius is None:  # unreachable
            raise ValueError("the cross pass did not test the radii")
        if prdc.realism and cross.realism is None:  # unreachable
            raise ValueError("the cross pass did not take the realism ratios")
        ratios = cross.realism.ratio if cross.realism is not None else None
        out["prdc"] = prdc_from(cross.radius, m, n, prdc.k, prdc.pr_k, prdc.groups, ratios)
    if memorization:
        from shardeval.pipeline.memorization.authpct import memorization_from

        if cross is None or cross.nearest is None or sx.knn is None:  # unreachable
            raise ValueError("the passes did not find the nearest rows")
        out["memorization"] = memorization_from(cross.nearest, radii(sx.knn, 1), exponent)
    return out


def _gather(
    blocks: Any, b: int, wanted: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each subset, (positions in the subset, rows) of its rows that lie in block b."""
    start, stop = blocks.bounds[b]
    block = None
    out = []
    for rows in wanted:
        positions = np.flatnonzero((rows >= start) & (rows < stop))
        if positions.size and block is None:
            block = blocks.read(b)
        picked = block[rows[positions] - start] if positions.size and block is not None else None
        out.append((positions, picked if picked is not None else np.zeros((0, 0))))
    return out


def _subset_value(
    real_parts: Sequence[Any],
    gen_parts: Sequence[Any],
    s: int,
    size: int,
    d: int,
    params: Any,
    dtype: Any,
) -> tuple[float, float]:
    """One subset's estimate and its rounding bound (float64 products of rows centred on the
    subset's reference rows' mean)."""
    from shardeval.kernels.pairs import PolyKernel, kernel_sums

    def assemble(parts: Sequence[Any]) -> np.ndarray:
        rows = np.zeros((size, d), dtype=dtype)
        for part in parts:
            positions, values = part[s]
            if positions.size:
                rows[positions] = values
        return rows

    x, y = assemble(real_parts), assemble(gen_parts)
    gamma, coef0, degree = params
    kernel = PolyKernel(gamma, coef0, degree, x.astype(np.float64).mean(axis=0))
    xx = kernel_sums(x, x, kernel, diagonal_block=True)
    yy = kernel_sums(y, y, kernel, diagonal_block=True)
    xy = kernel_sums(x, y, kernel)
    a, b, c = xx.total / (size * (size - 1)), yy.total / (size * (size - 1)), xy.total / size**2
    bound = (xx.error + yy.error) / (size * (size - 1)) + 2 * xy.error / size**2
    return subset_mmd2(xx, yy, xy, size), bound + 4 * _U64 * (abs(a) + abs(b) + 2 * abs(c))


def kid_subsets(
    real: FeatureSource,
    gen: FeatureSource,
    *,
    subsets: int,
    subset_size: int = SUBSET_SIZE,
    seed: int = SUBSET_SEED,
    params: KIDParams | None = None,
    engine: Engine | None = None,
    precision: str = "fp32",
    group_bytes: int = 256 * 2**20,
    progress: Progress | None = None,
) -> KIDResult:
    """KID by the peers' subset protocol (see :mod:`shardeval.pipeline.mmd.kid`): the mean and
    the standard deviation (ddof = 0) of the unbiased estimator over ``subsets`` random draws.

    Raises:
        ShapeError: ``subset_size`` exceeds the rows of a set, or dimensions differ.
    """
    from dask.delayed import delayed

    _check(real, gen, precision)
    if subsets < 1 or subset_size < 2:
        raise ShapeError(
            f"need at least 1 subset of at least 2 rows, got {subsets} of {subset_size}"
        )
    for source in (real, gen):
        if subset_size > source.n:
            raise ShapeError(
                f"subset size {subset_size} exceeds the {source.n} rows of {source.location!r}"
            )
    engine = engine or Engine()
    inspect_sets([real] if same_store(real, gen) else [real, gen], engine)
    params = params or KIDParams()
    kernel = kernel_params(real.d, params.degree, params.gamma, params.coef0)
    rb, gb = row_blocks(real, None, precision), row_blocks(gen, None, precision)
    # The subsets' rows as read (float64 data stays float64): the kernel sums take float64
    # products whatever the precision.
    dtype = np.float64
    draws = subset_indices(real.n, gen.n, subsets, subset_size, seed)
    per_group = max(1, group_bytes // (2 * subset_size * real.d * np.dtype(dtype).itemsize))
    values: list[tuple[float, float]] = []
    for first in range(0, subsets, per_group):
        group = draws[first : first + per_group]
        real_parts = [delayed(_gather)(rb, b, [r for r, _ in group]) for b in range(len(rb.bounds))]
        gen_parts = [delayed(_gather)(gb, b, [g for _, g in group]) for b in range(len(gb.bounds))]
        tasks = [
            delayed(_subset_value)(
                real_parts,
                gen_parts,
                s,
                subset_size,
                real.d,
                kernel,
                dtype,
                dask_key_name=f"{SHARD_PREFIX}kid-subset-{seed}-{first + s}",
            )
            for s in range(len(group))
        ]
        with _overflow_named(real, gen):
            values += engine.run_delayed(tasks, progress=progress, shards=len(tasks))
    gamma, coef0, degree = kernel
    estimates = np.array([v for v, _ in values])
    # The mean of the subsets' values errs by the mean of their bounds and its own rounding.
    bound = float(np.mean([b for _, b in values])) + 2 * _U64 * float(np.abs(estimates).max())
    _checked("KID", float(np.mean(estimates)), bound, float(np.std(estimates)))
    return KIDResult(
        float(np.mean(estimates)),
        float(np.std(estimates)),
        real.n,
        gen.n,
        degree,
        gamma,
        coef0,
        "subsets",
        subsets,
        subset_size,
        seed,
        same_store(real, gen),
        bound,
    )
