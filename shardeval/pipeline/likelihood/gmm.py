"""A Gaussian mixture fitted by EM over the shards of a store, and the NLL of test rows under it.

Each EM iteration is one pass over the shards: the E-step of a shard computes its rows' log
responsibilities by log-sum-exp,

    log r_ik = log w_k + log N(x_i | μ_k, Σ_k) − log p(x_i),
    log p(x_i) = LSE_k (log w_k + log N(x_i | μ_k, Σ_k)),

and returns their sufficient statistics as one mergeable state
(:class:`~shardeval.pipeline.likelihood.gmm_states.MixtureStats`: per component Σ r, the
weighted mean and the centred weighted co-moment, merged by Chan's update; the moments of log p);
the M-step, from the merged state only, sets

    w_k = W_k / Σ_j W_j,   μ_k = mean_k,   Σ_k = m2_k / W_k + reg_covar · I   (W_k = Σ_i r_ik).

Initialisation: k-means on a seeded sample of at most :data:`SAMPLE_ROWS` rows, seeded by
k-means++ (Arthur & Vassilvitskii 2007, greedy with 2 + ⌊log K⌋ trials as scikit-learn's) and
refined by at most :data:`LLOYD_ITERATIONS` of Lloyd's iterations, the best (least inertia)
of :data:`KMEANS_RUNS` runs, then one pass that assigns
every row to its nearest centre and takes each cell's weight, mean and covariance (what
scikit-learn does from the labels of its k-means on every row). EM stops when the mean
log-likelihood per row changes by less than ``tol`` between iterations, or after ``max_iter``
(Dempster, Laird & Rubin 1977; the stopping rule and defaults are scikit-learn's
``GaussianMixture``'s).

The E-step is float64 numpy on the worker's CPU; no Triton E-step is built.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from shardeval.kernels.lse_numpy import row_logsumexp_numpy
from shardeval.pipeline.core.chunks import (
    ValueSummary,
    check_nonfinite,
    check_policy,
    count_finite,
    finite_rows,
)
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.core.states import NonFiniteRows, ScalarMoments, chan_merge
from shardeval.pipeline.errors import EmptyComponentWarning, OptionError, ShapeError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.likelihood.gmm_states import Mixture, MixtureStats, RowSample
from shardeval.pipeline.likelihood.nll import NLLResult, summarize_nll
from shardeval.pipeline.options import GMM_MAX_ITER, GMM_REG_COVAR, GMM_TOL

#: k-means++ seeds on at most this many rows, drawn without replacement by the seed: its cost is
#: O(rows · K · d) per centre in memory on the caller, and 10,000 rows hold every component of
#: weight above a few 1/1,000 with near certainty; the seeding only starts EM, which then sees
#: every row.
SAMPLE_ROWS = 10_000

#: Lloyd's k-means iterations on the sample after each k-means++ seeding, at most.
LLOYD_ITERATIONS = 100

#: k-means runs on the sample (k-means++ seeding, then Lloyd), of which the one of least
#: inertia starts EM: k-means stops in a local optimum (two clusters merged, one split) often
#: enough that one run is a gamble, and on the sample a run costs little against a pass.
KMEANS_RUNS = 10

#: A component whose responsibilities sum below this (a billionth of a row) is empty: it is
#: re-seeded at the row of lowest log-likelihood, with the pooled covariance, and a warning.
EMPTY_WEIGHT = 1e-9

#: Defaults: scikit-learn's (declared with the run options).
REG_COVAR, TOL, MAX_ITER = GMM_REG_COVAR, GMM_TOL, GMM_MAX_ITER


@dataclass(frozen=True)
class GMMFit:
    """A fitted mixture and how the fit went.

    Attributes:
        mixture: the mixture after the last M-step.
        initial: the mixture EM started from (k-means on the sample, one hard-assignment pass).
        loglik: mean log-likelihood per row at each iteration's E-step (nats).
        converged: the last change was below ``tol``.
        rows: finite rows fitted.
        nonfinite: rows left out as non-finite.
        reseeded: times a component was found empty and re-seeded.
        sample_rows: rows the k-means initialisation saw.
    """

    mixture: Mixture
    initial: Mixture
    loglik: tuple[float, ...]
    converged: bool
    rows: int
    nonfinite: int
    reseeded: int
    sample_rows: int

    @property
    def iterations(self) -> int:
        return len(self.loglik)


def pick_rows(block: np.ndarray, offset: int, index: np.ndarray) -> RowSample:
    """The finite rows of a shard among the global row indices ``index`` (ascending)."""
    x = np.asarray(block)
    lo, hi = np.searchsorted(index, [offset, offset + x.shape[0]])
    mine = index[lo:hi]
    rows = x[mine - offset].astype(np.float64)
    ok = finite_rows(rows)
    return RowSample(mine[ok], rows[ok])


def every_row(block: np.ndarray, offset: int) -> RowSample:
    """Every row of a shard in float64, non-finite ones too (the caller refuses them, naming
    the row)."""
    x = np.asarray(block, dtype=np.float64)
    return RowSample(np.arange(offset, offset + x.shape[0]), x)


def _finite(block: np.ndarray, offset: int) -> tuple[np.ndarray, NonFiniteRows, np.ndarray]:
    x = np.asarray(block)
    ok = finite_rows(x)
    index = np.flatnonzero(ok) + offset
    return x[ok].astype(np.float64), NonFiniteRows.from_mask(~ok, offset), index


def hard_stats(
    block: np.ndarray, offset: int, centres: np.ndarray, covariance: str
) -> MixtureStats:
    """Statistics of a shard with each row given wholly to its nearest centre (ties: the first);
    its "log-likelihood" is −½ its squared distance, which only ranks rows for re-seeding."""
    x, bad, index = _finite(block, offset)
    sq = (
        np.einsum("ij,ij->i", x, x)[:, None]
        - 2.0 * (x @ centres.T)
        + np.einsum("ij,ij->i", centres, centres)[None, :]
    )
    nearest = sq.argmin(axis=1)
    resp = np.zeros((x.shape[0], centres.shape[0]))
    resp[np.arange(x.shape[0]), nearest] = 1.0
    closest = np.maximum(sq[np.arange(x.shape[0]), nearest], 0.0)
    return MixtureStats.from_rows(x, resp, covariance, -0.5 * closest, bad, offset, index)


def _log_posterior(mixture: Mixture, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log p(x_i) (n,) and the log responsibilities (n, K), by log-sum-exp over components."""
    weighted = mixture.log_components(x)
    m, s = row_logsumexp_numpy(weighted)
    loglik = m + np.log(s)
    return loglik, weighted - loglik[:, None]


def em_stats(block: np.ndarray, offset: int, mixture: Mixture) -> MixtureStats:
    """The E-step of one shard: responsibilities exp(log r) and their sufficient statistics."""
    x, bad, index = _finite(block, offset)
    loglik, log_resp = _log_posterior(mixture, x)
    return MixtureStats.from_rows(
        x, np.exp(log_resp), mixture.covariance, loglik, bad, offset, index
    )


def score_rows(block: np.ndarray, offset: int, mixture: Mixture) -> ValueSummary:
    """log p(x_i) of a shard's finite rows under the mixture, as mergeable moments."""
    x, bad, _ = _finite(block, offset)
    loglik, _ = _log_posterior(mixture, x)
    return ValueSummary(ScalarMoments.from_values(loglik), bad)


def kmeans_plus_plus(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K centres by greedy k-means++: the first uniformly, each next one the best (lowest total
    squared distance) of 2 + ⌊log K⌋ candidates drawn with probability ∝ D(x)², the squared
    distance to the nearest centre so far (all equal when every D is 0)."""
    n = rows.shape[0]
    trials = 2 + int(math.log(k))
    centres = [rows[rng.integers(n)]]
    closest = np.square(rows - centres[0]).sum(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        p = closest / total if total > 0 else np.full(n, 1.0 / n)
        candidates = rng.choice(n, size=trials, p=p)
        distances = np.square(rows[None, :, :] - rows[candidates][:, None, :]).sum(axis=2)
        options = np.minimum(closest[None, :], distances)
        best = int(np.argmin(options.sum(axis=1)))
        centres.append(rows[candidates[best]])
        closest = options[best]
    return np.array(centres)


def lloyd(rows: np.ndarray, centres: np.ndarray, iterations: int = LLOYD_ITERATIONS) -> np.ndarray:
    """Lloyd's k-means on ``rows`` from ``centres``: each centre moves to the mean of the rows
    nearest to it (a centre without rows stays), until no row changes centre or after
    ``iterations``."""
    owner = None
    for _ in range(iterations):
        sq = np.einsum("ij,ij->i", centres, centres)[None, :] - 2.0 * (rows @ centres.T)
        nearest = sq.argmin(axis=1)
        if owner is not None and np.array_equal(nearest, owner):
            break
        owner = nearest
        counts = np.bincount(owner, minlength=centres.shape[0])
        sums = np.zeros_like(centres)
        np.add.at(sums, owner, rows)
        filled = counts > 0
        centres = centres.copy()
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def best_kmeans(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The centres of least inertia (Σ squared distance to the nearest centre) of
    :data:`KMEANS_RUNS` runs of k-means++ then :func:`lloyd` on ``rows``."""
    best, least = rows[:k], math.inf
    for _ in range(KMEANS_RUNS):
        centres = lloyd(rows, kmeans_plus_plus(rows, k, rng))
        nearest = np.argmin(
            np.einsum("ij,ij->i", centres, centres)[None, :] - 2.0 * (rows @ centres.T), axis=1
        )
        inertia = float(np.square(rows - centres[nearest]).sum())
        if inertia < least:
            best, least = centres, inertia
    return best


def m_step(stats: MixtureStats, reg_covar: float) -> tuple[Mixture, int]:
    """The mixture of merged statistics: w = W/ΣW, μ = mean, Σ = m2/W + reg_covar·I, and how many
    components were empty (re-seeded at the row of lowest log-likelihood with the pooled
    covariance and a weight of one row).

    Raises:
        ShapeError: no finite row.
    """
    n = stats.loglik.n
    if n == 0:
        raise ShapeError("no finite rows remain to fit a Gaussian mixture to")
    weight, mean, m2 = np.array(stats.weight), np.array(stats.mean), np.array(stats.m2)
    empty = np.flatnonzero(weight < EMPTY_WEIGHT)
    diagonal = stats.diagonal
    if empty.size:
        pooled = _pooled(weight, mean, m2, diagonal)
        for j in empty:
            weight[j], mean[j], m2[j] = 1.0, stats.worst_row, pooled / n
        warnings.warn(
            EmptyComponentWarning(
                f"{empty.size} mixture component(s) ({', '.join(map(str, empty))}) had "
                f"responsibilities summing below {EMPTY_WEIGHT:g}: re-seeded at row "
                f"{stats.worst_index} (the lowest log-likelihood) with the pooled covariance"
            ),
            stacklevel=2,
        )
    if diagonal:
        cov = m2 / weight[:, None] + reg_covar
    else:
        cov = m2 / weight[:, None, None] + reg_covar * np.eye(stats.mean.shape[1])[None]
    return Mixture.of(weight / weight.sum(), mean, cov), int(empty.size)


def _pooled(weight: np.ndarray, mean: np.ndarray, m2: np.ndarray, diagonal: bool) -> np.ndarray:
    """The co-moment of all rows from the components' (Chan's update, in turn)."""
    w, mu, total = 0.0, np.zeros(mean.shape[1]), np.zeros(m2.shape[1:])
    for j in np.flatnonzero(weight > 0):
        if w == 0:
            w, mu, total = weight[j], mean[j], m2[j]
            continue
        mu, total = chan_merge(w, mu, total, weight[j], mean[j], m2[j], diagonal)
        w = w + weight[j]
    return total


def seeding_sample(
    source: FeatureSource,
    k: int,
    rng: np.random.Generator,
    engine: Engine,
    split_every: int | None = None,
) -> np.ndarray:
    """The finite rows k-means seeds on: at most :data:`SAMPLE_ROWS` rows of ``source`` drawn
    without replacement by ``rng`` (in index order, whatever the sharding), or every finite
    row when the sample holds fewer than ``k`` (the caller refuses fewer still)."""
    size = min(source.n, SAMPLE_ROWS)
    index = np.sort(rng.choice(source.n, size=size, replace=False)).astype(np.int64)
    (sample,) = engine.reduce([shard_tasks(source, pick_rows, index)], split_every=split_every)
    rows: np.ndarray = sample.rows
    if rows.shape[0] < k:  # the sample missed finite rows: seed on all of them
        (sample,) = engine.reduce(
            [shard_tasks(source, pick_rows, np.arange(source.n, dtype=np.int64))],
            split_every=split_every,
        )
        rows = sample.rows
    return rows


def check_gmm(**values: object) -> None:
    """Refuse fit settings (``gmm``, ``covariance``, ``reg_covar``, ``tol``, ``max_iter``,
    ``seed``) as their declarations do (:func:`~shardeval.pipeline.runoptions.option_problem`).

    Raises:
        OptionError: naming the setting and the value.
    """
    from shardeval.pipeline.runoptions import option_problem

    for name, value in values.items():
        problem = option_problem(name, value)
        if problem:
            raise OptionError(f"«{name}»: {problem}")


def fit_gmm(
    source: FeatureSource,
    k: int,
    *,
    covariance: str = "full",
    reg_covar: float = REG_COVAR,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    seed: int = 0,
    engine: Engine | None = None,
    nonfinite: str = "error",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> GMMFit:
    """Fit a K-component Gaussian mixture to the rows of ``source`` by EM, one pass per iteration.

    Args:
        source: the fitting rows (N, d).
        k: components.
        covariance: ``full`` or ``diag``.
        reg_covar: added to every covariance's diagonal (a floor on the variances).
        tol: stop when the mean log-likelihood per row changes by less (nats).
        max_iter: at most this many EM iterations.
        seed: of the k-means++ sample and seeding.
        engine: where to run.
        nonfinite: ``error`` or ``drop`` for rows with NaN/inf.
        split_every: fan-in of a balanced merge tree (see :meth:`Engine.reduce`).
        progress: called with (shards done, shards total) in each pass.

    Returns:
        :class:`GMMFit`.

    Raises:
        ShapeError: fewer (finite) rows than components.
        NonFiniteError: non-finite rows with ``nonfinite='error'``.
        NumericalError: a covariance not positive definite even with ``reg_covar``.
    """
    check_policy(nonfinite)
    check_gmm(
        gmm=k, covariance=covariance, reg_covar=reg_covar, tol=tol, max_iter=max_iter, seed=seed
    )
    if source.n < k:
        raise ShapeError(
            f"a mixture of gmm={k} components needs at least {k} rows; {source.location!r} "
            f"has {source.n}"
        )
    engine = engine or Engine()
    rng = np.random.default_rng(seed)
    rows = seeding_sample(source, k, rng, engine, split_every)
    if rows.shape[0] < k:
        (count,) = engine.reduce([shard_tasks(source, count_finite)], split_every=split_every)
        check_nonfinite(source.location, count.nonfinite, nonfinite)
        raise ShapeError(
            f"a mixture of gmm={k} components needs at least {k} finite rows; "
            f"{source.location!r} has {rows.shape[0]}"
        )
    centres = best_kmeans(rows, k, rng)
    first = [shard_tasks(source, hard_stats, centres, covariance)]
    (stats,) = engine.reduce(first, split_every=split_every, progress=progress)
    check_nonfinite(source.location, stats.nonfinite, nonfinite)
    mixture, reseeded = m_step(stats, reg_covar)
    initial, history, converged = mixture, [], False
    for _ in range(max_iter):
        tasks = [shard_tasks(source, em_stats, mixture)]
        (stats,) = engine.reduce(tasks, split_every=split_every, progress=progress)
        history.append(stats.loglik.mean)
        mixture, empty = m_step(stats, reg_covar)
        reseeded += empty
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
    return GMMFit(
        mixture, initial, tuple(history), converged, stats.loglik.n, stats.nonfinite.count,
        reseeded, int(rows.shape[0]),
    )  # fmt: skip


def nll_gmm(
    source: FeatureSource,
    test: FeatureSource,
    k: int,
    *,
    covariance: str = "full",
    reg_covar: float = REG_COVAR,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    seed: int = 0,
    engine: Engine | None = None,
    nonfinite: str = "error",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> tuple[NLLResult, GMMFit]:
    """NLL of TEST rows under a Gaussian mixture fitted to STORE's rows by EM (:func:`fit_gmm`).

    Returns:
        The :class:`~shardeval.pipeline.likelihood.nll.NLLResult` (``method='gmm'``, nats per
        row; ``dims=d``, so bits/dim is per feature dimension) with the fit's figures in
        ``extra``: ``k``, ``covariance``, ``reg_covar``, ``tol``, ``max_iter``, ``seed``,
        ``iterations``, ``converged``, ``train_loglik`` (mean log-likelihood per row at each
        iteration), ``bic`` on the fitting set (−2 log L + p log N, scikit-learn's), ``fit_rows``,
        ``fit_nonfinite_dropped``, ``reseeded``, ``init_sample_rows``, ``weights``; and the
        :class:`GMMFit`.

    Raises:
        ShapeError: the dimensions differ, or fewer rows than components.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.pipeline.io.stores import open_features
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((4, 1)))
        >>> result, fit = nll_gmm(open_features(path), open_features(path), 1, reg_covar=1.0)
        >>> round(result.nll, 6), fit.converged   # ½ log 2π under N(0, 1)
        (0.918939, True)
    """
    if source.d != test.d:
        raise ShapeError(
            f"feature dimensions differ: {source.location!r} has d={source.d}, "
            f"{test.location!r} has d={test.d}"
        )
    engine = engine or Engine()
    fit = fit_gmm(
        source, k, covariance=covariance, reg_covar=reg_covar, tol=tol, max_iter=max_iter,
        seed=seed, engine=engine, nonfinite=nonfinite, split_every=split_every,
        progress=progress,
    )  # fmt: skip
    groups = [shard_tasks(x, score_rows, fit.mixture) for x in (source, test)]
    train, scored = engine.reduce(groups, split_every=split_every, progress=progress)
    check_nonfinite(test.location, scored.nonfinite, nonfinite)
    mixture = fit.mixture
    n = train.values.n
    extra = {
        "k": k,
        "covariance": covariance,
        "reg_covar": reg_covar,
        "tol": tol,
        "max_iter": max_iter,
        "seed": seed,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "train_loglik": list(fit.loglik),
        "bic": -2.0 * train.values.mean * n + mixture.parameters() * math.log(n),
        "fit_rows": fit.rows,
        "fit_nonfinite_dropped": fit.nonfinite,
        "reseeded": fit.reseeded,
        "init_sample_rows": fit.sample_rows,
        "weights": mixture.weights.tolist(),
    }
    return summarize_nll("gmm", scored, test.d, **extra), fit
