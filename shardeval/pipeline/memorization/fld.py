"""The feature likelihood divergence FLD (Jiralerspong, Bose, Gemp, Qin, Bachrach & Gidel,
"Feature Likelihood Divergence: Evaluating the Generalization of Generative Models Using
Samples", NeurIPS 2023; the authors' code ``marcojira/fld``, ``fld/MoG.py`` and
``fld/metrics/FLD.py``), with the reference's defaults and every step in float64.

Three sets: the training set T (N rows, the reference), a held-out test set P (n rows) and the
generated set Q. Every set is standardised by P's mean and standard deviation (ddof 1). A
mixture of M isotropic Gaussians, one centred on each of M ≤ ``gen_rows`` generated rows
(a seeded sample of Q when it holds more), with one log-variance s_j per centre, is fitted to
T, and the test rows' likelihood under it is compared with a baseline's:

* log p(x) = lse_j(−½‖x − q_j‖² e^(−s_j) − (d/2) s_j) − log M − (d/2) log 2π,
* nll(X) = −(1/(|X| d)) Σ_{x ∈ X} log p(x) (nats per dimension),
* FLD = 100 · (nll_Q(P) − nll_T'(P)), lower is better; 0: the generated set explains fresh
  data as well as training data does; large: it under-fits; below 0, or the train NLL far
  below the test NLL (``evaluate='gap'``): it copies the training set.

The baseline mixture T' is centred on ``min(M, N // 2)`` training rows of a seeded
permutation and fitted to the other training rows, as the reference does.

The fit, as in the reference: s_j starts at log((min_i ‖t_i − q_j‖² + 10⁻³)/d); an extra
"origin" component centred on T's mean, with squared distances scaled by (1 − 0.1)² and
its own log-variance s_o (starts at 0, not clamped), enters the fit's log-sum-exp with weight
1 (not 1/M) so that no training row has a vanishing likelihood, and is left out when a set is
scored. Adam (β = (0.9, 0.999), ε = 10⁻⁸, learning rate 0.5) minimises −(1/(B d)) Σ log p
over batches of B = 10,000 rows of a seeded permutation of T, for 50 epochs; after each step
the s_j are clamped to [−40, 20]. The gradient is analytic:
∂/∂s_j = −(1/(B d)) Σ_i r_ij (½ D_ij e^(−s_j) − d/2), r_ij the responsibility.

Where this differs from the reference: float64 throughout (the reference's distances are
float32 ``torch.cdist``), so its values differ from ours in their last float32 digits; the
random permutations and the generated sample are seeded; the baseline does not standardise the
already standardised sets a second time (a rounding-level change); and the initial minimum
distances are over every training row (the reference's code breaks above 250,000 rows).

Memory: the training rows' squared distances to the M centres (N × M float64) are kept
between epochs when they fit in :data:`CACHE_BYTES`, as the reference keeps them; otherwise
they are recomputed per batch at every epoch (memory flat in N, 50 times the products).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from shardeval.kernels.lse_numpy import row_logsumexp_numpy
from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.memorization import FLD_EVALUATE as EVALUATE
from shardeval.pipeline.memorization import FLD_GEN_ROWS as GEN_ROWS

#: The reference's defaults: generated rows used as centres, Adam's learning rate, epochs,
#: rows per Adam step, the clamp of the log-variances, the origin component's shrink, and
#: the floor added to the initial nearest distances.
LEARNING_RATE, EPOCHS, BATCH_ROWS = 0.5, 50, 10_000
LOG_VAR_BOUNDS = (-40.0, 20.0)
ORIGIN_SHRINK = (1.0 - 0.1) ** 2
MIN_DIST_FLOOR = 1e-3

#: Squared distances (float64) kept between epochs up to this many bytes.
CACHE_BYTES = 4 * 2**30

#: The reference warns beyond these values: copying (FLD below) or a large gap.
FLD_WARN, GAP_WARN = 1_000.0, -1_000.0

#: Row blocks of the distance products (rows × centres float64 at most 64 MiB).
_BLOCK_BYTES = 64 * 2**20


def squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """‖x_i − c_j‖², (rows, centres), float64, clipped at 0 against cancellation."""
    sq = (
        np.einsum("ij,ij->i", x, x)[:, None]
        + np.einsum("ij,ij->i", centres, centres)[None, :]
        - 2.0 * (x @ centres.T)
    )
    return np.maximum(sq, 0.0, out=sq)


def _blocks(n: int, m: int) -> Iterator[slice]:
    step = max(1, _BLOCK_BYTES // (8 * max(1, m)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


@dataclass(frozen=True)
class Mixture:
    """A fitted mixture: its ``centres`` (M, d) and log-variances ``log_var`` (M,), the
    origin component's ``origin_log_var``, and the training loss per Adam step."""

    centres: np.ndarray
    log_var: np.ndarray
    origin_log_var: float
    losses: np.ndarray

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """log p(x) per row of ``x`` under the centres alone (the origin left out)."""
        m, d = self.centres.shape
        const = math.log(m) + 0.5 * d * math.log(2.0 * math.pi)
        out = np.empty(x.shape[0])
        inv = np.exp(-self.log_var)
        for rows in _blocks(x.shape[0], m):
            a = -0.5 * squared_distances(x[rows], self.centres) * inv - 0.5 * d * self.log_var
            top, total = row_logsumexp_numpy(a)
            out[rows] = top + np.log(total) - const
        return out

    def nll(self, x: np.ndarray) -> float:
        """Mean negative log-likelihood per dimension of the rows of ``x`` (nats)."""
        return float(-self.log_density(x).mean() / self.centres.shape[1])


def _loss_and_grad(
    dist: np.ndarray,
    origin_dist: np.ndarray,
    log_var: np.ndarray,
    origin_log_var: float,
    d: int,
    work: np.ndarray,
) -> tuple[float, np.ndarray, float]:
    """The fit's loss on one batch (−mean log p / d, without the constant (½) log 2π) and its
    gradient in the log-variances and in the origin's; ``work`` holds at least the batch's
    (rows, centres) floats and is overwritten."""
    b, m = dist.shape
    half_d = 0.5 * d
    half_inv = 0.5 * np.exp(-log_var)  # ½ e^(−s)
    # one (b, m) array, reused from step to step: a fresh one per step costs more in page
    # faults than the arithmetic does
    e = np.multiply(dist, -half_inv, out=work[:b])
    e -= half_d * log_var + math.log(m)
    o2 = 0.5 * origin_dist * math.exp(-origin_log_var)
    o = -o2 - half_d * origin_log_var
    top = np.maximum(e.max(axis=1), o)
    e -= top[:, None]
    np.exp(e, out=e)
    eo = np.exp(o - top)
    z = e.sum(axis=1) + eo
    loss = -float((top + np.log(z)).sum()) / (b * d)
    e /= z[:, None]  # the responsibilities r
    scale = -1.0 / (b * d)
    # Σ_i r_ij (½ D_ij e^(−s_j) − d/2), with ½ e^(−s_j) taken out of the sum
    grad = scale * (half_inv * np.einsum("ij,ij->j", e, dist) - half_d * e.sum(axis=0))
    grad_origin = scale * float(((eo / z) * (o2 - half_d)).sum())
    return loss, grad, grad_origin


def fit_mixture(
    centres: np.ndarray,
    x: np.ndarray,
    order: np.ndarray,
    *,
    epochs: int = EPOCHS,
    learning_rate: float = LEARNING_RATE,
    batch_rows: int = BATCH_ROWS,
    cache_bytes: int = CACHE_BYTES,
    on_epoch: Callable[[], None] | None = None,
) -> Mixture:
    """Fit the log-variances of the mixture on ``centres`` to the rows of ``x``, taken in
    batches of ``batch_rows`` in the permutation ``order`` (the module docstring's fit).

    Args:
        centres: (M, d) float64, standardised.
        x: (N, d) float64, standardised: the rows fitted.
        order: a permutation of range(N): the batches' rows.
        epochs, learning_rate, batch_rows: Adam's schedule (the reference's defaults).
        cache_bytes: keep the N × M squared distances between epochs up to this size.
        on_epoch: called after each epoch (progress).

    Returns:
        The fitted :class:`Mixture`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> q, t = rng.normal(size=(20, 3)), rng.normal(size=(50, 3))
        >>> mix = fit_mixture(q, t, rng.permutation(50))
        >>> mix.log_var.shape, bool(mix.losses[-1] < mix.losses[0])
        ((20,), True)
    """
    m, d = centres.shape
    n = x.shape[0]
    batches = [order[i : i + batch_rows] for i in range(0, n, batch_rows)]
    origin_dist = ORIGIN_SHRINK * squared_distances(x, x.mean(axis=0)[None, :])[:, 0]
    keep = n * m * 8 <= cache_bytes
    cached: list[np.ndarray] = []
    nearest = np.full(m, np.inf)
    for rows in batches:  # one product pass: the initial minima (and the cache)
        dist = _distances(x[rows], centres)
        np.minimum(nearest, dist.min(axis=0), out=nearest)
        if keep:
            cached.append(dist)
    distance: Callable[[int], np.ndarray] = (
        cached.__getitem__ if keep else (lambda i: _distances(x[batches[i]], centres))
    )
    params = np.append(np.log((nearest + MIN_DIST_FLOOR) / d), 0.0)
    work = np.empty((len(batches[0]), m))
    first, second = np.zeros(m + 1), np.zeros(m + 1)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    losses = []
    low, high = LOG_VAR_BOUNDS
    step = 0
    for _ in range(epochs):
        for i, rows in enumerate(batches):
            step += 1
            loss, grad, grad_origin = _loss_and_grad(
                distance(i), origin_dist[rows], params[:m], float(params[m]), d, work
            )
            g = np.append(grad, grad_origin)
            losses.append(loss)
            # torch.optim.Adam's update, term by term (its defaults), so that the fit follows
            # the reference's steps and not only its optimum
            first = beta1 * first + (1.0 - beta1) * g
            second = beta2 * second + (1.0 - beta2) * g * g
            denom = np.sqrt(second) / math.sqrt(1.0 - beta2**step) + eps
            params = params - (learning_rate / (1.0 - beta1**step)) * first / denom
            params[:m] = np.clip(params[:m], low, high)
        if on_epoch is not None:
            on_epoch()
    return Mixture(centres, params[:m].copy(), float(params[m]), np.asarray(losses))


def _distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    out = np.empty((x.shape[0], centres.shape[0]))
    for rows in _blocks(x.shape[0], centres.shape[0]):
        out[rows] = squared_distances(x[rows], centres)
    return out


@dataclass(frozen=True)
class FLDResult:
    """FLD and its parts (nats per dimension). ``nll_train`` is None for ``evaluate='test'``,
    ``baseline_nll`` None for ``evaluate='gap'``."""

    fld: float
    evaluate: str
    nll_test: float
    nll_train: float | None
    baseline_nll: float | None
    centres: int
    n_train: int
    n_test: int
    n_gen: int
    baseline_centres: int | None
    mixture: Mixture


def standardise(test: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every set minus the test set's mean, over its standard deviation (ddof 1).

    Raises:
        NumericalError: a feature constant over the test set, named by its column.
    """
    mean = test.mean(axis=0)
    std = test.std(axis=0, ddof=1)
    flat = np.flatnonzero(~(std > 0))
    if flat.size:
        raise NumericalError(
            f"feature {int(flat[0])} is constant over the test set ({flat.size} such "
            "feature(s)): FLD standardises by the test set's standard deviation"
        )
    return [(x - mean) / std for x in (test, *others)]


def fld(
    train: np.ndarray,
    test: np.ndarray,
    gen: np.ndarray,
    *,
    evaluate: str = "test",
    gen_rows: int = GEN_ROWS,
    seed: int = 0,
    epochs: int = EPOCHS,
    cache_bytes: int = CACHE_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> FLDResult:
    """FLD of the generated rows ``gen`` against the training rows ``train`` and the held-out
    test rows ``test`` (the module docstring's definition), in memory.

    Args:
        train, test, gen: (rows, d) features of one encoder, finite.
        evaluate: what the generated set's mixture scores: ``test`` (the paper's FLD),
            ``train`` (its train FLD) or ``gap`` (100 · (train NLL − test NLL): below 0, the
            training rows are likelier than fresh ones: copying).
        gen_rows: centres: a seeded sample of this many generated rows when there are more.
        seed: of the generated sample, the batches' permutations and the baseline's split.
        epochs: Adam's passes over the training rows.
        cache_bytes: see :func:`fit_mixture`.
        progress: called with (epochs done, epochs in all) over the fits.

    Returns:
        :class:`FLDResult`.

    Raises:
        ShapeError: sets of different d, or too few rows (2 test rows, 2 training rows, 1
            generated row).
        NumericalError: a non-finite value, or a feature constant over the test set.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> train, test = rng.normal(size=(400, 4)), rng.normal(size=(200, 4))
        >>> fresh, copies = rng.normal(size=(200, 4)), train[:200] + 1e-4
        >>> good = fld(train, test, fresh).fld
        >>> bad = fld(train, test, copies).fld
        >>> bool(abs(good) < 5 < bad)
        True
    """
    sets = {"training": train, "test": test, "generated": gen}
    widths = {name: x.shape[1] for name, x in sets.items()}
    if len(set(widths.values())) != 1:
        raise ShapeError(f"FLD's sets have different feature dimensions: {widths}")
    for name, least in (("training", 2), ("test", 2), ("generated", 1)):
        rows = sets[name].shape[0]
        if rows < least:
            raise ShapeError(f"FLD needs at least {least} {name} rows, got {rows}")
        if not np.isfinite(sets[name]).all():
            bad = int(np.flatnonzero(~np.isfinite(sets[name]).all(axis=1))[0])
            raise NumericalError(f"the {name} set has a non-finite value (row {bad})")
    if evaluate not in EVALUATE:
        raise ValueError(f"evaluate must be one of {EVALUATE}, got {evaluate!r}")
    pick, fit_order, split, base_order = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    n_gen = gen.shape[0]
    if n_gen > gen_rows:
        gen = gen[np.sort(pick.choice(n_gen, size=gen_rows, replace=False))]
    test_z, train_z, gen_z = standardise(
        np.asarray(test, np.float64), np.asarray(train, np.float64), np.asarray(gen, np.float64)
    )
    n = train_z.shape[0]
    total, done = epochs * (1 if evaluate == "gap" else 2), [0]

    def on_epoch() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    mixture = fit_mixture(
        gen_z,
        train_z,
        fit_order.permutation(n),
        epochs=epochs,
        cache_bytes=cache_bytes,
        on_epoch=on_epoch,
    )
    nll_test = mixture.nll(test_z)
    nll_train = mixture.nll(train_z) if evaluate != "test" else None
    baseline = baseline_centres = None
    if evaluate != "gap":
        perm = split.permutation(n)
        baseline_centres = min(gen_z.shape[0], n // 2)
        rest = train_z[perm[baseline_centres:]]
        base = fit_mixture(
            train_z[perm[:baseline_centres]],
            rest,
            base_order.permutation(rest.shape[0]),
            epochs=epochs,
            cache_bytes=cache_bytes,
            on_epoch=on_epoch,
        )
        baseline = base.nll(test_z)
    if evaluate == "gap":
        value = 100.0 * (float(nll_train) - nll_test)  # type: ignore[arg-type]
    else:
        value = 100.0 * ((nll_test if evaluate == "test" else float(nll_train)) - float(baseline))  # type: ignore[arg-type]
    return FLDResult(
        value,
        evaluate,
        nll_test,
        nll_train,
        baseline,
        gen_z.shape[0],
        n,
        test_z.shape[0],
        n_gen,
        baseline_centres,
        mixture,
    )
