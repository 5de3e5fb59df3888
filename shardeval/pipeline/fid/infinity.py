"""FID∞ (Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find
them", CVPR 2020): FID has a bias of order 1/N; computing it at several generated-set sizes N_k
and fitting FID_N = FID∞ + b/N by least squares removes it (the intercept at 1/N = 0).

One pass, never one per size. Each generated row gets a uniform number u from a seeded hash of
its global index; the nested subsets are {u < N_k/N} for 15 sizes N_k from min(5,000, N/10) to
N. A shard keeps one mergeable :class:`~shardeval.pipeline.core.states.Moments` per band (the rows
between two consecutive thresholds); merging the bands 1..k gives the moments of subset k. The real
statistics stay fixed, as in the paper. The subsets are nested (the paper's code draws each
size independently); nested draws share their rows, so the points are less noisy about the
line.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.chunks import (
    FeatureSummary,
    block_moments,
    check_device,
    check_nonfinite,
    finite_rows,
    product_rows,
    summarize_block,
    uses_gpu,
)
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.core.states import (
    Examples,
    Moments,
    NonFiniteRows,
    examples_of,
    merge_fieldwise,
    state,
)
from shardeval.pipeline.errors import ShapeError
from shardeval.pipeline.fid import SEED
from shardeval.pipeline.fid.frechet import frechet_distance
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.io.stores import FeatureSource

#: Sizes at which FID is computed, as in the reference code.
POINTS = 15

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def uniform_hash(seed: int, index: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) for each row index (splitmix64 of seed and index): the same
    row gets the same number on any worker, in any shard."""
    with np.errstate(over="ignore"):
        z = (index.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def subset_sizes(n: int, points: int = POINTS) -> np.ndarray:
    """The target sizes: ``points`` values evenly from min(5,000, N/10) to N (integers)."""
    low = min(5000, max(n // 10, 2))
    return np.linspace(low, n, points).astype(np.int64)


def _band_moments_examples(rng: np.random.Generator) -> Examples[BandMoments]:
    bands = [examples_of(Moments, rng)[1] for _ in range(2)]
    _, nonfinite = examples_of(NonFiniteRows, rng)
    found = [BandMoments(tuple(b), f) for *b, f in zip(*bands, nonfinite, strict=True)]
    return BandMoments.empty(bands[0][0].d, len(bands)), found


@state(examples=_band_moments_examples)
@dataclass(frozen=True, eq=False)
class BandMoments:
    """Per band of the nested subsets, the moments of its finite rows; and the non-finite rows."""

    bands: tuple[Moments, ...]
    nonfinite: NonFiniteRows

    @classmethod
    def empty(cls, d: int, bands: int) -> BandMoments:
        return cls((Moments.empty(d),) * bands, NonFiniteRows.empty())

    def merge(self, other: BandMoments) -> BandMoments:
        return BandMoments(
            tuple(a.merge(b) for a, b in zip(self.bands, other.bands, strict=True)),
            self.nonfinite.merge(other.nonfinite),
        )


def summarize_bands(
    block: np.ndarray,
    offset: int,
    thresholds: np.ndarray,
    seed: int,
    device: str,
    backend: str,
    precision: str = "fp32",
) -> BandMoments:
    """The chunk step: split a block's finite rows by band and take each band's moments, with
    the products :func:`~shardeval.pipeline.core.chunks.summarize_block` takes."""
    block = product_rows(block, offset, precision)
    ok = finite_rows(block)
    u = uniform_hash(seed, np.arange(offset, offset + block.shape[0]))
    band = np.searchsorted(thresholds, u, side="right")  # band k: thresholds[k-1] <= u < [k]
    d = block.shape[1]
    out = []
    for k in range(len(thresholds)):
        rows = block[(band == k) & ok]
        out.append(block_moments(rows, device, backend) if rows.shape[0] else Moments.empty(d))
    return BandMoments(tuple(out), NonFiniteRows.from_mask(~ok, offset))


@dataclass(frozen=True)
class FIDInfinityResult:
    """FID∞ and the fit it comes from.

    Attributes:
        fid_infinity: the intercept of FID_N against 1/N.
        slope: the fitted b in FID_N = FID∞ + b/N.
        r2: the fit's coefficient of determination.
        fid: FID of the whole generated set (the last point).
        sizes: the subsets' sizes N_k (rows, as drawn).
        fids: FID at each size.
        seed: the hash seed that assigned rows to subsets.
        nonfinite: generated rows dropped as non-finite.
    """

    fid_infinity: float
    slope: float
    r2: float
    fid: float
    sizes: tuple[int, ...]
    fids: tuple[float, ...]
    seed: int
    nonfinite: int = 0


def fit_infinity(sizes: np.ndarray, fids: np.ndarray) -> tuple[float, float, float]:
    """Least squares FID_N = a + b/N: (a, b, R²)."""
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    y = np.asarray(fids, dtype=np.float64)
    design = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - (a + b * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return float(a), float(b), r2


def nested_moments(
    gen: FeatureSource,
    *,
    engine: Engine | None = None,
    seed: int = SEED,
    points: int = POINTS,
    nonfinite: str = "error",
    device: str = "auto",
    backend: str = "auto",
    precision: str = "fp32",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> BandMoments:
    """One pass over GEN: the moments of each band of the nested subsets (merged over the
    bands, they are GEN's moments), with GEN's products as FID takes them
    (:func:`~shardeval.pipeline.fid.moments.products_precision`: float64 for n ≤ d).

    Raises:
        ShapeError: GEN has fewer than 20 rows.
        NonFiniteError: non-finite rows and ``nonfinite='error'``.
    """
    state: BandMoments = _band_pass(
        gen,
        summarize_bands,
        engine,
        seed,
        points,
        device,
        backend,
        precision,
        split_every,
        progress,
    )
    check_nonfinite(gen.location, state.nonfinite, nonfinite)
    return state


def _band_pass(
    gen: FeatureSource,
    step: Any,
    engine: Engine | None,
    seed: int,
    points: int,
    device: str,
    backend: str,
    precision: str,
    split_every: int | None,
    progress: Progress | None,
) -> Any:
    """The one read of GEN that FID∞ makes: ``step`` (the bands alone, or with FID's
    summary) over every shard, with GEN's products as FID takes them, merged."""
    from shardeval.pipeline.fid.moments import products_precision

    if gen.n < 20:
        raise ShapeError(f"{gen.location!r} has {gen.n} rows; FID∞ needs at least 20")
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    thresholds = subset_sizes(gen.n, points) / gen.n
    products = products_precision(gen, precision)
    tasks = shard_tasks(gen, step, thresholds, seed, device, backend, products)
    (state,) = engine.reduce(
        [tasks], split_every=split_every, progress=progress, gpu=uses_gpu(device)
    )
    return state


def _summary_and_bands_examples(rng: np.random.Generator) -> Examples[SummaryAndBands]:
    empty_summary, summaries = examples_of(FeatureSummary, rng)
    empty_bands, bands = examples_of(BandMoments, rng)
    found = [SummaryAndBands(s, b) for s, b in zip(summaries, bands, strict=True)]
    return SummaryAndBands(empty_summary, empty_bands), found


@state(examples=_summary_and_bands_examples)
@dataclass(frozen=True, eq=False)
class SummaryAndBands:
    """One read of a shard for FID and FID∞ together: the shard's moments exactly as FID's own
    pass takes them (so FID does not depend on whether FID∞ was asked beside it), and its
    bands."""

    summary: FeatureSummary
    bands: BandMoments

    merge = merge_fieldwise


def summarize_with_bands(
    block: np.ndarray,
    offset: int,
    thresholds: np.ndarray,
    seed: int,
    device: str,
    backend: str,
    precision: str,
) -> SummaryAndBands:
    """The chunk step of :func:`moments_and_bands`: both summaries of one block."""
    return SummaryAndBands(
        summarize_block(block, offset, device, backend, precision),
        summarize_bands(block, offset, thresholds, seed, device, backend, precision),
    )


def moments_and_bands(
    gen: FeatureSource,
    *,
    engine: Engine | None = None,
    seed: int = SEED,
    points: int = POINTS,
    nonfinite: str = "error",
    device: str = "auto",
    backend: str = "auto",
    precision: str = "fp32",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> tuple[tuple[Moments, int], BandMoments]:
    """One read of GEN for FID and FID∞: its moments and non-finite rows dropped, bit for bit
    those of :func:`~shardeval.pipeline.fid.moments.feature_moments` (the same chunk step over
    the same shards, merged by the same tree), and the bands of :func:`nested_moments`.

    Raises:
        ShapeError: GEN has fewer than 20 rows, or fewer than 2 finite ones.
        NonFiniteError: non-finite rows and ``nonfinite='error'``.
    """
    both: SummaryAndBands = _band_pass(
        gen,
        summarize_with_bands,
        engine,
        seed,
        points,
        device,
        backend,
        precision,
        split_every,
        progress,
    )
    check_nonfinite(gen.location, both.bands.nonfinite, nonfinite)
    moments = both.summary.moments
    if moments.n < 2:
        raise ShapeError(f"{gen.location!r} has {moments.n} finite row(s); at least 2 are needed")
    return (moments, both.summary.nonfinite.count), both.bands


def merged(bands: BandMoments) -> Moments:
    """The moments of every row the bands hold."""
    out = bands.bands[0]
    for band in bands.bands[1:]:
        out = out.merge(band)
    return out


def below_zero(fid_inf: float, fid: float) -> str:
    """Why an FID∞ below zero is published as the fit gives it, for reports.

    Chong & Forsyth's FID∞ is the intercept at 1/N = 0 of a line fitted to FID_N, which
    E[FID_N] = FID∞ + k/N describes for generated rows independent of the reference. It
    removes a bias; it is not a distance, and it crosses zero where the true value is within
    the fit's error of 0, or where GEN shares rows with REAL (FID of the whole set then lacks
    the k/N the fit subtracts: for identical sets it is −k/N). Clipping it to 0 would bias it
    upwards; the paper's code reports the intercept as it is, and so does this.
    """
    return (
        f"FID∞ is {fid_inf:.4g}, below 0 (FID of the whole set {fid:.4g}): it is the intercept "
        "of a line through FID_N, a biased estimator, extrapolated to N = ∞ (Chong & Forsyth "
        "2020), not a distance; it crosses zero when the true value is within the fit's error "
        "of 0, or when GEN shares rows with REAL (identical sets give −slope/N); read it as 0 "
        "within that error"
    )


def fit_bands(
    real: Gaussian, bands: BandMoments, seed: int, location: str = ""
) -> FIDInfinityResult:
    """FID at each nested subset against fixed real statistics, and the line in 1/N.

    Raises:
        ShapeError: dimensions differ, or fewer than 3 subsets hold 2 rows or more.
    """
    sizes, fids = [], []
    running = Moments.empty(real.d)
    for band in bands.bands:
        if band.d != real.d:
            raise ShapeError(
                f"feature dimensions differ: {real.source!r} has d={real.d}, "
                f"{location!r} has d={band.d}"
            )
        running = running.merge(band)
        if running.n >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # small subsets may be singular: still defined
                fids.append(frechet_distance(real, Gaussian.from_moments(running, location)).fid)
            sizes.append(running.n)
    if len(sizes) < 3:
        raise ShapeError(f"{location!r}: too few rows in the nested subsets to fit FID∞")
    a, b, r2 = fit_infinity(np.array(sizes), np.array(fids))
    if a < 0:
        warnings.warn(below_zero(a, fids[-1]), UserWarning, stacklevel=2)
    return FIDInfinityResult(
        a, b, r2, fids[-1], tuple(sizes), tuple(fids), seed, bands.nonfinite.count
    )


def fid_infinity(
    real: Gaussian,
    gen: FeatureSource,
    *,
    engine: Engine | None = None,
    seed: int = SEED,
    points: int = POINTS,
    nonfinite: str = "error",
    device: str = "auto",
    backend: str = "auto",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> FIDInfinityResult:
    """FID∞ of the generated set against fixed real statistics, in one pass over GEN.

    Args:
        real: the reference Gaussian (features' moments or a statistics file).
        gen: the generated feature store.
        engine: where to run.
        seed: assigns rows to the nested subsets.
        points: sizes fitted (15 in the paper).
        nonfinite: ``error`` or ``drop`` for generated rows with NaN/inf.
        device, backend: where the moment kernels run.
        split_every: merge fan-in.
        progress: called with (shards done, shards total).

    Returns:
        :class:`FIDInfinityResult`.

    Raises:
        ShapeError: dimensions differ, or GEN has fewer than 20 rows.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.pipeline.io.stores import open_features
        >>> path = os.path.join(tempfile.mkdtemp(), "g.npy")
        >>> np.save(path, np.random.default_rng(0).normal(size=(400, 2)))
        >>> r = fid_infinity(Gaussian(np.zeros(2), np.eye(2)), open_features(path))
        >>> len(r.sizes), r.sizes[-1], abs(r.fid_infinity) < abs(r.fid) + 0.05
        (15, 400, True)
    """
    if real.d != gen.d:
        raise ShapeError(
            f"feature dimensions differ: {real.source!r} has d={real.d}, "
            f"{gen.location!r} has d={gen.d}"
        )
    bands = nested_moments(
        gen,
        engine=engine,
        seed=seed,
        points=points,
        nonfinite=nonfinite,
        device=device,
        backend=backend,
        split_every=split_every,
        progress=progress,
    )
    return fit_bands(real, bands, seed, gen.location)
