"""The data-copying statistic C_T (Meehan, Chaudhuri & Dasgupta, "A Non-Parametric Test to
Detect Data-Copying in Generative Models", AISTATS 2020), with dgm-eval's choices (Stein et al.
2023, ``dgm_eval/metrics/ct.py``, taken from the authors' ``data-copying`` code), nearest
training rows exact over the full sets.

Three sets: the training set T (N rows, the reference), a held-out test set P_n (n rows, drawn
like T but not trained on) and the generated set Q_m (m rows). The space is cut into K cells π
by k-means on T (each row belongs to the cell of its nearest centre). For a row x, L(x) is its
distance to its nearest training row (of its own cell, below). In each cell, the Mann-Whitney
U statistic of the generated rows' L against the test rows' L,

* U(π) = Σ_{q ∈ Q_m(π)} Σ_{p ∈ P_n(π)} ([L(q) > L(p)] + ½ [L(q) = L(p)])
  = R_Q − m_π (m_π + 1)/2, R_Q the sum of the generated rows' (average) ranks in the cell,

is Z-scored as dgm-eval does, with its continuity correction and without a tie correction
(``ties=True`` adds scipy's: the variance × (1 − Σ (t³ − t)/(N³ − N)), t the sizes of groups of
equal distances among the cell's N = n_π + m_π):

* Z_U(π) = (U(π) − n_π m_π / 2 + ½) / √(n_π m_π (n_π + m_π + 1) / 12).

Z_U < 0: the generated rows lie closer to the training rows than fresh rows of the
distribution do (data-copying); Z_U > 0: farther (under-fitting). Cells holding τ_rows or
fewer generated rows are skipped (dgm-eval's τ = 20/m with Q_m(π) > τ strict: more than 20),
and the kept cells Π_τ are averaged, weighted by the test set's fractions P_n(π):

* C_T = Σ_{π ∈ Π_τ} P_n(π) Z_U(π) / Σ_{π ∈ Π_τ} P_n(π).

Under the null hypothesis (Q_m drawn like P_n), each Z_U is about N(0, 1), so C_T is about
N(0, Σ w²) with w the normalised weights P_n(π)/Σ P_n(π): within a few units of 0.

What follows dgm-eval, and where it differs:

* K = 3 cells by k-means with k-means++ seeding, the best of 10 runs (scikit-learn's
  ``KMeans(n_clusters=3, n_init=10)``), fitted here on a seeded sample of at most
  :data:`~shardeval.pipeline.likelihood.gmm.SAMPLE_ROWS` training rows (the Gaussian
  mixture's initialisation, :func:`~shardeval.pipeline.likelihood.gmm.best_kmeans`): the test
  holds for any partition fixed before P_n and Q_m are seen, so the cells need not be the
  optimum of every row, and a sample places a few centres as well as the full set does at the
  cost of one read; Lloyd's steps over all of T would cost a pass each.
* L(x) is the distance to the nearest training row of x's own cell (dgm-eval's and the
  authors' code: ``Zu(Pn_cell_i, Qm_cell_i, T_cell_i)``), exact, by one cross pass per kept
  cell over that cell's rows (O(n + m) memory whatever N); ``neighbours='all'`` searches the
  whole training set instead (one cross pass) and counts the rows whose nearest training row
  lies in another cell (``cross_cell``), for which the two differ.
* Distances are Euclidean in the features as given; dgm-eval first projects every set onto
  the 64 leading principal components of T when d > 64 (randomized PCA). Project the
  features first to compare with it there.
* A cell without a test or a training row is refused (dgm-eval raises too).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.memorization import CT_CELLS, CT_SEED, CT_TAU_ROWS, NEIGHBOURS


@dataclass(frozen=True)
class CTResult:
    """C_T and its cells.

    Attributes:
        ct: the statistic (Z units; about N(0, 1) without copying).
        zu: (K,) each cell's Z_U (0 where the cell is skipped, as dgm-eval records it).
        kept: (K,) whether each cell holds more than ``tau_rows`` generated rows.
        train_rows, test_rows, gen_rows: (K,) rows of each set in each cell.
        cross_cell: test and generated rows whose nearest training row lies in another cell
            (None: not counted; the nearest rows were searched within each cell).
        tau_rows: the threshold the cells were kept by.
        ties: whether Z_U's variance took the tie correction.
        sample_rows: training rows the k-means saw.
        centres: (K, d) the k-means centres.
    """

    ct: float
    zu: np.ndarray
    kept: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray
    gen_rows: np.ndarray
    cross_cell: int | None
    tau_rows: int
    ties: bool
    sample_rows: int = 0
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def test_fraction(self) -> np.ndarray:
        """P_n(π): each cell's share of the test rows."""
        return self.test_rows / self.test_rows.sum()

    @property
    def cells(self) -> int:
        return int(self.zu.size)


def z_u(test_sq: np.ndarray, gen_sq: np.ndarray, ties: bool = False) -> float:
    """Z-scored Mann-Whitney U of the generated rows' distances against the test rows', as
    dgm-eval scores it (continuity correction ½; ``ties``: scipy's tie correction of the
    variance). Distances are ranked by their squares (the same order, exactly).

    Raises:
        NumericalError: the variance is zero (no rows, or every distance equal with ``ties``).

    Example:
        >>> round(z_u(np.array([1.0, 4.0, 9.0]), np.array([0.0, 0.0, 16.0])), 6)
        -0.436436
    """
    from scipy.stats import rankdata

    n, m = test_sq.size, gen_sq.size
    pooled = np.concatenate([gen_sq, test_sq])
    ranks = rankdata(pooled)
    u = float(ranks[:m].sum()) - m * (m + 1) / 2
    variance = n * m * (n + m + 1) / 12
    if ties and n + m > 1:
        _, counts = np.unique(pooled, return_counts=True)
        t = counts.astype(np.float64)
        total = float(n + m)
        variance *= 1.0 - float(np.sum(t**3 - t)) / (total**3 - total)
    if not variance > 0:
        raise NumericalError(
            f"Z_U of {m} generated and {n} test distances has zero variance (every distance equal)"
        )
    return (u - (n * m / 2 - 0.5)) / float(np.sqrt(variance))


def cell_rows(
    train_cell: np.ndarray,
    test_cell: np.ndarray,
    gen_cell: np.ndarray,
    cells: int,
    tau_rows: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of each set in each cell, and which cells are kept (more than ``tau_rows``
    generated rows).

    Raises:
        ShapeError: a cell without a test or a training row, or every cell skipped.
    """
    count = {
        name: np.bincount(c, minlength=cells)
        for name, c in (("train", train_cell), ("test", test_cell), ("gen", gen_cell))
    }
    for name in ("train", "test"):
        empty = np.flatnonzero(count[name] == 0)
        if empty.size:
            listed = ", ".join(str(int(c)) for c in empty[:5]) + (", …" if empty.size > 5 else "")
            raise ShapeError(
                f"{empty.size} of the {cells} cells hold no {name} row (cell {listed}): C_T "
                f"needs {name} rows in every cell; use fewer «cells»"
            )
    kept = count["gen"] > tau_rows
    if not kept.any():
        raise ShapeError(
            f"every cell holds «tau_rows={tau_rows}» or fewer of the {gen_cell.size} generated "
            f"rows (at most {int(count['gen'].max())}): C_T keeps none; give more generated "
            "rows, fewer «cells» or a lower «tau_rows»"
        )
    return count["train"], count["test"], count["gen"], kept


def ct_from(
    test_sq: np.ndarray,
    test_cell: np.ndarray,
    gen_sq: np.ndarray,
    gen_cell: np.ndarray,
    train_cell: np.ndarray,
    *,
    cells: int,
    tau_rows: int = CT_TAU_ROWS,
    ties: bool = False,
    cross_cell: int | None = None,
) -> CTResult:
    """C_T from each test and generated row's squared distance to its nearest training row and
    every row's cell.

    Args:
        test_sq, test_cell: (n,) the test rows' squared distances and cells (0 … K−1).
        gen_sq, gen_cell: (m,) the generated rows'. Distances of rows in skipped cells are
            not read (they may be NaN).
        train_cell: (N,) the training rows' cells.
        cells: K.
        tau_rows: a cell is kept when it holds more than this many generated rows.
        ties: the tie correction in Z_U's variance.
        cross_cell: rows whose nearest training row lies in another cell (recorded only).

    Returns:
        :class:`CTResult`.

    Raises:
        ShapeError: a cell without a test or a training row, or every cell skipped.

    Example:
        >>> test, gen = np.arange(1.0, 31.0), np.arange(30.0)   # one cell, m = 30
        >>> one = np.zeros(30, dtype=int)
        >>> r = ct_from(test, one, gen, one, np.zeros(5, dtype=int), cells=1)
        >>> round(r.ct, 6), r.kept.tolist()
        (-0.428748, [True])
    """
    train_rows, test_rows, gen_rows, kept = cell_rows(
        train_cell, test_cell, gen_cell, cells, tau_rows
    )
    zu = np.zeros(cells)
    for c in np.flatnonzero(kept):
        zu[c] = z_u(test_sq[test_cell == c], gen_sq[gen_cell == c], ties)
    weight = test_rows[kept] / test_sq.size
    ct = float(np.dot(weight, zu[kept]) / weight.sum())
    return CTResult(ct, zu, kept, train_rows, test_rows, gen_rows, cross_cell, tau_rows, ties)


def _in_memory(rows: np.ndarray, name: str) -> FeatureSource:
    import dask.array as da

    return FeatureSource(name, da.from_array(rows, chunks=rows.shape))


def _cell_of(source: FeatureSource, index: np.ndarray, cell: int) -> FeatureSource:
    """The rows ``index`` (ascending) of ``source``: one cell's, read through its dask array."""
    return FeatureSource(f"{source.location} (cell {cell})", source.array[index])


def data_copying(
    train: FeatureSource,
    test: FeatureSource,
    gen: FeatureSource,
    *,
    cells: int = CT_CELLS,
    tau_rows: int = CT_TAU_ROWS,
    seed: int = CT_SEED,
    ties: bool = False,
    neighbours: str = "cell",
    engine: Engine | None = None,
    block_rows: int | None = None,
    precision: str = "fp32",
    split_every: int | None = None,
    device: str = "auto",
    backend: str = "auto",
    progress: Progress | None = None,
) -> CTResult:
    """C_T of GEN against TRAIN, with TEST as the held-out sample.

    Passes: one read of a seeded sample of TRAIN for k-means; every row's nearest centre
    (float64 products); the exact nearest training row of every test and generated row
    (:func:`~shardeval.pipeline.pairwise.nearest.nearest_rows`, fp32 products with close calls
    in float64), among the training rows of its cell (``neighbours='cell'``: one cross pass
    per kept cell, of that cell's rows) or of the whole set (``'all'``: one cross pass).

    Args:
        train, test, gen: the three sets, of one d.
        cells: K, the k-means cells.
        tau_rows: a cell is kept when it holds more than this many generated rows.
        seed: of the k-means sample and seeding.
        ties: the tie correction in Z_U's variance.
        neighbours: ``cell`` (dgm-eval's) or ``all``: where a row's nearest training row is
            searched.
        engine, block_rows, precision, split_every, device, backend, progress: as the pair
            metrics take them.

    Returns:
        :class:`CTResult` (``cross_cell`` counted with ``neighbours='all'`` only).

    Raises:
        ShapeError: the sets' d differ, fewer training rows than cells, a cell without a test
            or training row, or every cell skipped.
        NonFiniteError: a set holds NaN or inf.
        ValueError: ``neighbours`` is neither.

    Example:
        >>> import dask.array as da
        >>> rng = np.random.default_rng(0)
        >>> t, p = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
        >>> q = t[:150] + 1e-3 * rng.normal(size=(150, 2))   # copies of training rows
        >>> src = lambda a, name: FeatureSource(name, da.from_array(a, chunks=(64, 2)))
        >>> r = data_copying(src(t, "t"), src(p, "p"), src(q, "q"), device="cpu")
        >>> bool(r.ct < -5), r.cells
        (True, 3)
    """
    from shardeval.pipeline.likelihood.gmm import best_kmeans, seeding_sample
    from shardeval.pipeline.pairwise.nearest import nearest_rows

    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {NEIGHBOURS}, got {neighbours!r}")
    for source in (test, gen):
        if source.d != train.d:
            raise ShapeError(
                f"feature dimensions differ: {train.location!r} has d={train.d}, "
                f"{source.location!r} has d={source.d}; compare features of one model"
            )
    if train.n < cells:
        raise ShapeError(
            f"C_T cuts the training set into «cells={cells}» cells by k-means; "
            f"{train.location!r} has {train.n} row(s)"
        )
    engine = engine or Engine()
    passes: dict[str, Any] = {
        "engine": engine,
        "block_rows": block_rows,
        "split_every": split_every,
        "device": device,
        "backend": backend,
        "progress": progress,
    }
    rng = np.random.default_rng(seed)
    sample = seeding_sample(train, cells, rng, engine, split_every)
    if sample.shape[0] < cells:
        raise ShapeError(
            f"C_T cuts the training set into «cells={cells}» cells by k-means; "
            f"{train.location!r} has {sample.shape[0]} finite row(s)"
        )
    centres = best_kmeans(sample, cells, rng)
    to_centre = nearest_rows(
        _in_memory(centres, "the k-means centres"), [train, test, gen], precision="fp64", **passes
    )
    train_cell, test_cell, gen_cell = (found.index for found in to_centre)
    kept = cell_rows(train_cell, test_cell, gen_cell, cells, tau_rows)[3]
    test_sq, gen_sq = np.full(test.n, np.nan), np.full(gen.n, np.nan)
    cross: int | None = None
    if neighbours == "all":
        found = nearest_rows(train, [test, gen], precision=precision, **passes)
        test_sq, gen_sq = found[0].sq, found[1].sq
        cross = sum(
            int(np.count_nonzero(train_cell[f.index] != cell))
            for f, cell in zip(found, (test_cell, gen_cell), strict=True)
        )
    else:
        for c in np.flatnonzero(kept):
            rows = [np.flatnonzero(cell == c) for cell in (train_cell, test_cell, gen_cell)]
            parts = [_cell_of(s, r, int(c)) for s, r in zip((train, test, gen), rows, strict=True)]
            found = nearest_rows(parts[0], parts[1:], precision=precision, **passes)
            test_sq[rows[1]], gen_sq[rows[2]] = found[0].sq, found[1].sq
    result = ct_from(
        test_sq,
        test_cell,
        gen_sq,
        gen_cell,
        train_cell,
        cells=cells,
        tau_rows=tau_rows,
        ties=ties,
        cross_cell=cross,
    )
    return replace(result, sample_rows=int(sample.shape[0]), centres=centres)
