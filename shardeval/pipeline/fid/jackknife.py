"""The delete-a-group jackknife of FID: a standard error, a confidence interval and a bias
estimate from the same pass over the rows, without resampling them.

Rows are assigned to G groups by a seeded hash of their global row index (splitmix64, Steele
et al. 2014), so a row's group depends on neither the sharding nor the order in which shards
are reduced; a sorted dataset's groups are as mixed as a shuffled one's. Each side's shards
reduce to G :class:`~shardeval.pipeline.core.states.Moments` (a registered state, merged by
Chan's update), and the moments without group g are a prefix merge (groups before g) and a
suffix merge (groups after g): G Fréchet distances, not G passes. With θ̂ the FID of every
row and θ₋g the FID without group g of either side (a reference given as statistics is held
fixed: the interval is then conditional on it),

    θ̄ = mean θ₋g,   SE = √((G − 1)/G · Σ (θ₋g − θ̄)²),   bias = (G − 1)(θ̄ − θ̂),

and the interval is θ̂ ± t_{G−1, (1+level)/2} · SE (Efron & Stein 1981; Shao & Tu 1995, §2.3
for the delete-a-group form). The bias estimate is a look at the sample-size bias that FID∞
extrapolates, from the rows' own variability.

Two generated sets against one reference (:func:`fid_difference_jackknife`) take the same
groups: replicate g drops group g from the reference and from both sets at once, so that the
difference's standard error counts the reference the two distances share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shardeval.pipeline.core.chunks import check_policy, finite_rows, product_rows
from shardeval.pipeline.core.mergeable import Examples, examples_of, state
from shardeval.pipeline.core.states import Moments, NonFiniteRows
from shardeval.pipeline.errors import ShapeError

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine, Progress
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.stores import FeatureSource

#: Groups of the jackknife by default: ten leave-one-group-out distances (Shao & Tu's
#: delete-a-group jackknife is near its asymptotic efficiency from about ten groups, and each
#: group costs one eigendecomposition).
GROUPS = 10
#: The seed of the rows' groups by default.
CI_SEED = 0

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_groups(offset: int, n: int, groups: int, seed: int) -> np.ndarray:
    """The groups of rows ``offset`` … ``offset + n − 1``: splitmix64 of (seed, row index),
    modulo ``groups``. A row's group is a function of its global index alone."""
    with np.errstate(over="ignore"):  # the hash wraps modulo 2^64 by design
        z = np.arange(offset, offset + n, dtype=np.uint64) + np.uint64(seed) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(groups)).astype(np.int64)


def _grouped_examples(rng: np.random.Generator) -> Examples[GroupedMoments]:
    empty, found = examples_of(Moments, rng)
    _, rows = examples_of(NonFiniteRows, rng)
    d = empty.d
    made = [
        GroupedMoments((m, Moments.empty(d), m.merge(m)), r)
        for m, r in zip(found, rows, strict=True)
        if m.d == d
    ]
    return GroupedMoments.empty(d, 3), made


@state(examples=_grouped_examples)
@dataclass(frozen=True, eq=False)
class GroupedMoments:
    """One side's rows as G groups' moments, and the rows left out as non-finite."""

    groups: tuple[Moments, ...]
    nonfinite: NonFiniteRows

    @classmethod
    def empty(cls, d: int, groups: int) -> GroupedMoments:
        return cls(tuple(Moments.empty(d) for _ in range(groups)), NonFiniteRows.empty())

    def whole(self) -> Moments:
        """The moments of every row: the groups merged, in group order (FID's estimate with
        «ci» comes from these, so that it and its replicates come from the same states)."""
        whole = Moments.empty(self.groups[0].d)
        for m in self.groups:
            whole = whole.merge(m)
        return whole

    def merge(self, other: GroupedMoments) -> GroupedMoments:
        if len(self.groups) != len(other.groups):
            raise ValueError(f"cannot merge {len(self.groups)} groups with {len(other.groups)}")
        merged = tuple(a.merge(b) for a, b in zip(self.groups, other.groups, strict=True))
        return GroupedMoments(merged, self.nonfinite.merge(other.nonfinite))


def summarize_groups(
    block: np.ndarray,
    offset: int,
    groups: int,
    seed: int,
    device: str = "cpu",
    backend: str = "auto",
    precision: str = "fp32",
) -> GroupedMoments:
    """The chunk step: the moments of the block's finite rows, group by group."""
    from shardeval.pipeline.core.chunks import block_moments

    block = product_rows(block, offset, precision)
    finite = finite_rows(block)
    ids = row_groups(offset, len(block), groups, seed)
    moments = []
    for g in range(groups):
        rows = block[finite & (ids == g)]
        moments.append(block_moments(rows, device, backend) if len(rows) else None)
    d = block.shape[1]
    return GroupedMoments(
        tuple(Moments.empty(d) if m is None else m for m in moments),
        NonFiniteRows.from_mask(~finite, offset),
    )


def grouped_moments(
    source: FeatureSource,
    *,
    groups: int,
    seed: int,
    engine: Engine,
    device: str = "auto",
    backend: str = "auto",
    nonfinite: str = "error",
    precision: str = "fp32",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> tuple[GroupedMoments, int]:
    """One pass over ``source``: its rows' moments per group, and the non-finite rows left
    out (``nonfinite='drop'``).

    Raises:
        NonFiniteError: non-finite rows under ``nonfinite='error'``.
        EngineError: a device or kernel backend this machine cannot run.
    """
    from shardeval.pipeline.core.chunks import check_device, check_nonfinite, uses_gpu
    from shardeval.pipeline.core.reduce import shard_tasks
    from shardeval.pipeline.fid.moments import products_precision

    check_policy(nonfinite)
    check_device(device, backend, local=not engine.is_distributed)
    tasks = shard_tasks(
        source,
        summarize_groups,
        groups,
        seed,
        device,
        backend,
        products_precision(source, precision),
    )
    (summary,) = engine.reduce(
        [tasks], split_every=split_every, progress=progress, gpu=uses_gpu(device)
    )
    check_nonfinite(source.location, summary.nonfinite, nonfinite)
    return summary, summary.nonfinite.count


def _left_out(groups: tuple[Moments, ...]) -> list[Moments]:
    """The moments of every group but g, for each g: a prefix merge and a suffix merge."""
    d = groups[0].d
    prefix = [Moments.empty(d)]
    for m in groups:
        prefix.append(prefix[-1].merge(m))
    suffix = [Moments.empty(d)]
    for m in reversed(groups):
        suffix.append(suffix[-1].merge(m))
    suffix.reverse()
    return [prefix[g].merge(suffix[g + 1]) for g in range(len(groups))]


@dataclass(frozen=True)
class Jackknife:
    """The delete-a-group jackknife of a statistic.

    Attributes:
        standard_error: √((G − 1)/G · Σ (θ₋g − θ̄)²).
        bias: (G − 1)(θ̄ − θ̂).
        low, high: θ̂ ∓ t_{G−1} · SE at ``level``.
        level: the interval's confidence level.
        groups: G.
        replicates: the θ₋g.
    """

    standard_error: float
    bias: float
    low: float
    high: float
    level: float
    groups: int
    replicates: tuple[float, ...]


def jackknife(estimate: float, replicates: list[float], level: float) -> Jackknife:
    """The jackknife of ``estimate`` (θ̂) from its leave-one-group-out ``replicates``."""
    from scipy import stats

    theta = np.asarray(replicates, dtype=np.float64)
    g = len(theta)
    mean = float(theta.mean())
    se = math.sqrt((g - 1) / g * float(np.sum((theta - mean) ** 2)))
    half = float(stats.t.ppf((1 + level) / 2, g - 1)) * se
    return Jackknife(
        se, (g - 1) * (mean - estimate), estimate - half, estimate + half, level, g, tuple(theta)
    )


def _replicate(real: Moments | Gaussian, gen: Moments, locations: tuple[str, str]) -> float:
    """One leave-one-group-out FID (a task of its own: the G replicates run side by side)."""
    from shardeval.pipeline.fid.frechet import frechet_distance
    from shardeval.pipeline.fid.gaussian import Gaussian

    def unnumbered(x: Moments | Gaussian, location: str) -> Gaussian:
        # Without its row count: the estimate's own distance has warned of a side of n ≤ d
        # rows, and each replicate, of fewer rows, would warn again.
        g = x if isinstance(x, Gaussian) else Gaussian.from_moments(x, location)
        return Gaussian(g.mean, g.cov, None, location)

    return frechet_distance(unnumbered(real, locations[0]), unnumbered(gen, locations[1])).fid


def fid_replicates(
    real: GroupedMoments | Gaussian,
    gen: GroupedMoments,
    locations: tuple[str, str],
    engine: Engine | None = None,
) -> list[float]:
    """The leave-one-group-out FIDs θ₋g of ``real`` (groups, or a Gaussian held fixed) against
    ``gen``'s groups: group g dropped from both sides at once. They are G tasks of ``engine``
    (each one d × d eigenvalue problem, run side by side on its workers; one after another in
    this process without it).

    Raises:
        ShapeError: a side whose rows without some group are fewer than 2, or fewer rows
            than groups (a group with no row leaves no replicate); sides in different numbers
            of groups.
    """
    from shardeval.pipeline.fid.gaussian import Gaussian

    if not isinstance(real, Gaussian) and len(real.groups) != len(gen.groups):
        raise ShapeError(
            f"{locations[0]!r} is in {len(real.groups)} groups and {locations[1]!r} in "
            f"{len(gen.groups)}: a group is dropped from both sides at once, so both need the "
            "same «ci_groups»"
        )

    sides = [(gen, locations[1])] + (
        [(real, locations[0])] if not isinstance(real, Gaussian) else []
    )
    for side, location in sides:
        counts = [m.n for m in side.groups]
        if min(counts) == 0 or sum(counts) - max(counts) < 2:
            raise ShapeError(
                f"{location!r}: its {sum(counts):,} rows leave a group of {min(counts)} rows "
                f"among {len(counts)}; the interval needs every group to hold rows: give more "
                "rows or fewer «ci_groups»"
            )
    gen_out = _left_out(gen.groups)
    real_out: list[Moments | Gaussian] = (
        [real] * len(gen_out) if isinstance(real, Gaussian) else list(_left_out(real.groups))
    )
    pairs = list(zip(real_out, gen_out, strict=True))
    if engine is None:
        return [_replicate(r, g, locations) for r, g in pairs]
    from dask import delayed

    tasks = [delayed(_replicate, pure=False)(r, g, locations) for r, g in pairs]
    return list(engine.run_delayed(tasks))


def fid_jackknife(
    estimate: float,
    real: GroupedMoments | Gaussian,
    gen: GroupedMoments,
    level: float,
    locations: tuple[str, str],
    engine: Engine | None = None,
) -> Jackknife:
    """The jackknife of the FID ``estimate`` of ``real`` (groups, or a Gaussian held fixed)
    against ``gen``'s groups (the replicates on ``engine``: :func:`fid_replicates`).

    Raises:
        ShapeError: see :func:`fid_replicates`.
    """
    return jackknife(estimate, fid_replicates(real, gen, locations, engine), level)


def fid_difference_jackknife(
    estimate: float,
    real: GroupedMoments | Gaussian,
    gen_a: GroupedMoments,
    gen_b: GroupedMoments,
    level: float,
    locations: tuple[str, str, str],
    engine: Engine | None = None,
) -> Jackknife:
    """The jackknife of ``estimate`` = FID(real, A) − FID(real, B), two generated sets against
    one reference. Its replicates drop group g from the reference and from both sets at once,

        θ₋g = FID(real₋g, A₋g) − FID(real₋g, B₋g),

    so that the reference's rows, which move both distances together, enter each replicate
    once: the (reference group, A group, B group) triples are the independent units the
    jackknife leaves out (the three sets' groups are independent, each a seeded hash of its
    rows' indices). A reference given as a Gaussian is held fixed: the interval is then
    conditional on it.

    Raises:
        ShapeError: see :func:`fid_replicates`; the sets in different numbers of groups.
    """
    real_location, a_location, b_location = locations
    if len(gen_a.groups) != len(gen_b.groups):
        raise ShapeError(
            f"{a_location!r} is in {len(gen_a.groups)} groups and {b_location!r} in "
            f"{len(gen_b.groups)}: the paired jackknife drops one group of each at once"
        )
    theta_a = fid_replicates(real, gen_a, (real_location, a_location), engine)
    theta_b = fid_replicates(real, gen_b, (real_location, b_location), engine)
    return jackknife(estimate, [a - b for a, b in zip(theta_a, theta_b, strict=True)], level)
