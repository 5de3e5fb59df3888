"""Exact squared distances of a block pair, and the CPU path of the decisions taken on them:
per row, the k smallest squared distances to the other block, and radius tests.

The decisions start from one product G = X Yᵀ of the pair per column tile (fp32 products by
the numerical contract, float64 for float64 input), never keeping more than a column tile of
it. Decisions taken on fp32 products are exact: a squared distance ‖x‖² + ‖y‖² − 2x·y from an
fp32 dot product is off by at most 2γ_d‖x‖‖y‖ (γ_d = d·u/(1 − d·u), u the unit roundoff: a
bound for any summation order); every comparison within that bound of its threshold, and every
candidate within it of the k-th nearest, is recomputed in float64 from the rows themselves.
Self-distances are exactly zero, and no squared distance is negative. A row's nearest row of
the other block is the one at the smallest exact distance, and of rows at one exact distance
(duplicates) the first. The realism reduction takes, per column, the largest ratio of a row's
squared radius to its exact squared distance: every row whose ratio bounds (from the fp32
distance ± twice its error bound) reach the largest lower bound is recomputed in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardeval.kernels.pair_types import PairRequest, PairResult, RadiusDecisions

#: Columns of the product reduced at a time by the decisions: bounds the temporaries to
#: rows × TILE.
TILE = 1024


#: A block pair whose first tile leaves more fp32 decisions than this fraction of its pairs
#: undecided (distances concentrated within the fp32 error bound, as in high-dimensional,
#: nearly isotropic data) is redone with float64 products: one float64 product is cheaper
#: than recomputing that many distances one by one.
UNDECIDED_FRACTION = 1e-3


def _working(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both blocks in the working precision: float64 if either is, else fp32."""
    dtype = np.float64 if np.float64 in (x.dtype, y.dtype) else np.float32
    return np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(y, dtype=dtype)


def dot_error_bound(d: int, dtype: np.dtype) -> float:
    """γ_d = d·u/(1 − d·u): |fl(x·y) − x·y| ≤ γ_d ‖x‖‖y‖ for a dot product of length d."""
    u = float(np.finfo(dtype).eps) / 2
    return d * u / (1 - d * u)


def sq_bound(d: int, dtype: np.dtype) -> float:
    """c with |fl(‖x‖² + ‖y‖² − 2x·y) − ‖x − y‖²| ≤ c·(‖x‖ + ‖y‖)² in the working precision:
    each of the three dot products errs by at most γ_d times the product of its norms, and the
    two additions and the doubling by at most 3u of operands no larger than (‖x‖ + ‖y‖)²."""
    u = float(np.finfo(dtype).eps) / 2
    return 2.0 * dot_error_bound(d, dtype) + 4.0 * u


#: Pairs recomputed per chunk: their rows stay in cache while they are differenced.
_EXACT_CHUNK = 256


def _exact_sq(x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """‖x_i − y_j‖² in float64 for pairs (i, j), from the rows themselves: the definition every
    decision of this module is exact against. (The difference of two fp32 numbers is exact in
    float64.)"""
    out = np.empty(i.size)
    for start in range(0, i.size, _EXACT_CHUNK):
        a, b = i[start : start + _EXACT_CHUNK], j[start : start + _EXACT_CHUNK]
        diff = np.subtract(x[a], y[b], dtype=np.float64)
        out[start : start + a.size] = np.einsum("ij,ij->i", diff, diff)
    return out


def exact_sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """All squared distances ‖x_i − y_j‖² in float64, by the same definition as the decisions
    (for references and tests: it builds the whole m × n matrix)."""
    i, j = np.meshgrid(np.arange(x.shape[0]), np.arange(y.shape[0]), indexing="ij")
    return _exact_sq(x, y, i.ravel(), j.ravel()).reshape(x.shape[0], y.shape[0])


def _norms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared norms in float64 and the norms of the rows."""
    sq = np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64))
    return sq, np.sqrt(sq)


def reduce_numpy(
    x: np.ndarray, y: np.ndarray, request: PairRequest, diagonal_block: bool
) -> PairResult:
    """The neighbours and radius tests of ``request`` by the CPU path, in the working precision
    of ``x`` and ``y`` (fp32 unless either is float64), redone with float64 products when the
    first tile leaves more than :data:`UNDECIDED_FRACTION` of its pairs undecided."""
    x, y = _working(x, y)
    if request.decides and x.dtype == np.float32:
        result = _reduce(x, y, request, diagonal_block, probe=True)
        if result is not None:
            return result
        x, y = x.astype(np.float64), y.astype(np.float64)
    result = _reduce(x, y, request, diagonal_block, probe=False)
    if result is None:  # unreachable: no probe, no abort
        raise ValueError("the pair was not reduced")
    return result


def _reduce(
    x: np.ndarray, y: np.ndarray, request: PairRequest, diagonal_block: bool, probe: bool
) -> PairResult | None:
    """:func:`reduce_numpy` in the working precision of ``x`` and ``y``; with ``probe``, None
    when the first tile leaves too many decisions to float64 recomputation."""
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if y.shape[1] != d:
        raise ValueError(f"x has d={d} but y has d={y.shape[1]}")
    dtype = x.dtype
    xx, xn = _norms(x)
    yy, yn = _norms(y)
    xx_w, yy_w = xx.astype(dtype), yy.astype(dtype)
    c = sq_bound(d, dtype)
    k = request.knn
    best_x = np.full((m, k), np.inf) if k else None
    best_y = np.full((n, k), np.inf) if k else None
    radius = _Radius(m, n, request.radii, dtype) if request.radii is not None else None
    nearest = _Nearest(n) if request.nearest else None
    realism = _Realism(request.realism, n) if request.realism is not None else None
    for start in range(0, n, TILE):
        stop = min(start + TILE, n)
        g = x @ y[start:stop].T
        diag_i = np.arange(start, min(stop, m)) if diagonal_block else np.zeros(0, np.int64)
        diag_j = diag_i - start
        if best_x is None and radius is None and nearest is None and realism is None:
            continue
        sq = xx_w[:, None] + yy_w[None, start:stop] - 2 * g
        np.maximum(sq, 0, out=sq)
        # Per-row bounds (the largest norm of the other side stands in for each one).
        err_x = c * (xn + yn[start:stop].max()) ** 2
        err_y = c * (yn[start:stop] + xn.max()) ** 2
        recomputed = 0
        if best_x is not None and best_y is not None and k is not None:
            sq[diag_i, diag_j] = np.inf  # not a neighbour of itself
            best_x, count_x = _merge_candidates(best_x, sq, err_x, k, x, y, start)
            best_y[start:stop], count_y = _merge_candidates(
                best_y[start:stop], sq.T, err_y, k, y[start:stop], x, 0
            )
            recomputed += count_x + count_y - k * (m + stop - start)
        if radius is not None:
            before = radius.uncertain
            radius.add(sq, err_x, err_y, x, y, start)
            recomputed += radius.uncertain - before
        if nearest is not None:
            recomputed += nearest.add(sq, err_y, x, y, start) - (stop - start)
        if realism is not None:
            recomputed += realism.add(sq, err_y, x, y, start) - (stop - start)
        if probe and start == 0 and recomputed > UNDECIDED_FRACTION * m * (stop - start):
            return None
    return PairResult(
        None,
        None,
        (best_x, best_y) if best_x is not None and best_y is not None else None,
        radius.result() if radius is not None else None,
        (nearest.sq, nearest.index) if nearest is not None else None,
        realism.ratio if realism is not None else None,
    )


def _kth_smallest(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest value of each row (k small: k − 1 rounds of a row-wise argmin on a
    contiguous copy, several times faster than a partition)."""
    if k > 8:
        return np.partition(a, k - 1, axis=1)[:, k - 1]
    b = np.array(a, order="C")  # row-wise argmin is vectorised only along contiguous rows
    rows = np.arange(b.shape[0])
    for _ in range(k - 1):
        b[rows, b.argmin(axis=1)] = np.inf
    return b.min(axis=1)


def _merge_candidates(
    best: np.ndarray,
    sq: np.ndarray,
    err: np.ndarray,
    k: int,
    rows: np.ndarray,
    others: np.ndarray,
    offset: int,
) -> tuple[np.ndarray, int]:
    """Merge a tile's approximate squared distances into each row's exact k smallest; also
    return how many distances were recomputed exactly.

    The k-th smallest exact distance of the union is at most T = min(previous k-th, the tile's
    k-th approximate + err); a column can be below T only if its approximate distance is within
    err of it. Those candidates are recomputed exactly and merged with the row's previous best.
    (``err`` (m,) bounds each row's approximation; columns of the tile are rows of ``others``
    starting at ``offset``.)
    """
    m, width = sq.shape
    if width == 0:
        return best, 0
    limit = best[:, -1] + err
    todo = ~np.isfinite(limit)
    if todo.any():  # rows without k exact neighbours yet: the tile's own k-th bounds them
        part = sq if todo.all() else sq[todo]
        kth = _kth_smallest(part, min(k, width)).astype(np.float64)
        limit[todo] = np.minimum(kth + err[todo], best[todo, -1])
        limit[todo] += err[todo]
    # The threshold rounded to the working precision may fall by one ulp: widen it by that.
    threshold = (limit * (1 + 4 * float(np.finfo(sq.dtype).eps))).astype(sq.dtype)
    cand_r, cand_c = np.nonzero((sq <= threshold[:, None]) & np.isfinite(sq))
    exact = _exact_sq(rows, others, cand_r, cand_c + offset)
    # Gather candidates per row into a (m, width_max) array padded with inf, then keep k.
    counts = np.bincount(cand_r, minlength=m)
    width_max = int(counts.max()) if counts.size else 0
    padded = np.full((m, width_max + best.shape[1]), np.inf)
    padded[:, : best.shape[1]] = best
    if width_max:
        order = np.argsort(cand_r, kind="stable")
        slot = np.arange(cand_r.size) - np.repeat(np.cumsum(counts) - counts, counts)
        padded[cand_r[order], best.shape[1] + slot] = exact[order]
    return np.sort(padded, axis=1)[:, :k], int(cand_r.size)


class _Nearest:
    """Accumulates, tile by tile of the columns, each column's nearest row: the exact squared
    distance and the row's index (of rows at one exact distance, the first)."""

    def __init__(self, n: int) -> None:
        self.sq = np.full(n, np.inf)
        self.index = np.full(n, -1, dtype=np.int64)

    def add(self, sq: np.ndarray, err: np.ndarray, x: np.ndarray, y: np.ndarray, start: int) -> int:
        """The nearest rows of the tile's columns (``err`` (width,) bounds each column's
        approximation); returns how many distances were recomputed exactly.

        A row at the smallest exact distance D has an approximate distance within err of D,
        and D is within err of the column's smallest approximate one a: every row whose
        approximate distance is within 2·err of a is recomputed, and the least (distance,
        index) of them taken.
        """
        if sq.shape[0] == 0 or sq.shape[1] == 0:
            return 0
        limit = sq.min(axis=0).astype(np.float64) + 2 * err
        threshold = (limit * (1 + 4 * float(np.finfo(sq.dtype).eps))).astype(sq.dtype)
        rows, cols = np.nonzero(sq <= threshold[None, :])
        exact = _exact_sq(x, y, rows, cols + start)
        order = np.lexsort((rows, exact, cols))  # by column, then distance, then row
        cols, rows, exact = cols[order], rows[order], exact[order]
        first = np.ones(cols.size, dtype=bool)
        first[1:] = cols[1:] != cols[:-1]
        self.sq[start + cols[first]] = exact[first]
        self.index[start + cols[first]] = rows[first]
        return int(rows.size)


#: Rows of the realism reduction's float64 temporaries at a time (rows × TILE × 8 bytes).
_REALISM_ROWS = 2048


class _Realism:
    """Accumulates, tile by tile of the columns, each column's largest ratio r_i / ‖x_i − y_j‖²
    over the rows with a squared radius r_i > 0, from exact float64 squared distances (a row
    equal to the column: inf).

    Args:
        radii: (m,) squared radii of the rows (0: the row does not count).
        n: columns.
    """

    def __init__(self, radii: np.ndarray, n: int) -> None:
        self.all = np.asarray(radii, dtype=np.float64)
        self.rows = np.flatnonzero(self.all > 0)
        self.radii = self.all[self.rows]
        self.ratio = np.zeros(n)
        # The candidates are screened in fp32 when every radius is a normal fp32 number (fp32
        # rows, which pair_decisions keeps within fp32's range), else in float64.
        tiny, big = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
        self.fits32 = bool(((self.radii >= tiny) & (self.radii <= big)).all())

    def add(self, sq: np.ndarray, err: np.ndarray, x: np.ndarray, y: np.ndarray, start: int) -> int:
        """The tile's columns (``err`` (width,) bounds each column's approximation); returns
        how many distances were recomputed exactly.

        Each exact squared distance D lies within 2·err of its approximation a (err bounds
        both a's error and the float64 recomputation's), so r / D lies in [r / (a + 2·err),
        r / (a − 2·err)] (inf where a ≤ 2·err). The largest ratio is at least the largest
        lower bound L: every row whose upper bound reaches L is recomputed, and the largest
        exact ratio of them taken. The screen runs in the tile's precision with L lowered by
        2^-16 of itself and 2·err raised by 2^-20, far beyond the few fp32 roundings of each
        bound (2^-24 each), so it keeps every row the exact screen keeps.
        """
        width = sq.shape[1]
        if self.rows.size == 0 or width == 0:
            return 0
        dtype: Any = np.float32 if sq.dtype == np.float32 and self.fits32 else np.float64
        margin: Any = (2.0 * (1 + 2.0**-20) * err).astype(dtype)[None, :]
        radii: Any = self.radii.astype(dtype)[:, None]
        chunks = [
            (self.rows[a : a + _REALISM_ROWS], radii[a : a + _REALISM_ROWS])
            for a in range(0, self.rows.size, _REALISM_ROWS)
        ]
        lower: Any = np.zeros(width, dtype)
        found_rows, found_cols = [], []
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for rows, r in chunks:
                s = sq[rows].astype(dtype, copy=False)
                np.maximum(lower, (r / (s + margin)).max(axis=0), out=lower)
            limit = (lower * (1 - 2.0**-16))[None, :]
            for rows, r in chunks:
                # upper ≥ L: r / (a − 2·err) ≥ L, or a ≤ 2·err (the upper bound is inf); as a
                # product (r > 0), with no division
                below = sq[rows].astype(dtype, copy=False) - margin
                i, j = np.nonzero((below <= 0) | (r >= limit * below))
                found_rows.append(rows[i])
                found_cols.append(j)
            rows_c, cols_c = np.concatenate(found_rows), np.concatenate(found_cols)
            exact = _exact_sq(x, y, rows_c, cols_c + start)
            ratio = self.all[rows_c] / exact
        np.maximum.at(self.ratio, start + cols_c, ratio)
        return int(rows_c.size)


def realism_reference(x: np.ndarray, y: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Float64 reference of the ``realism`` reduction: per row of ``y``, the largest
    r_i / ‖x_i − y‖² over the rows of ``x`` with r_i > 0 (0 where none)."""
    sq = exact_sq_distances(x, y)
    keep = np.asarray(radii) > 0
    if not keep.any():
        return np.zeros(y.shape[0])
    with np.errstate(divide="ignore"):
        return (np.asarray(radii, np.float64)[keep, None] / sq[keep]).max(axis=0)


def nearest_reference(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference of the ``nearest`` reduction: per row of ``y``, the exact squared
    distance to its nearest row of ``x`` and that row's index (the first of equals)."""
    sq = exact_sq_distances(x, y)
    index = np.argmin(sq, axis=0)  # the first of equal minima
    return sq[index, np.arange(y.shape[0])], index.astype(np.int64)


def knn_sq_distances_reference(
    x: np.ndarray, y: np.ndarray, k: int, *, diagonal_block: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference of :func:`shardeval.kernels.pairs.knn_sq_distances`."""
    sq = exact_sq_distances(x, y)
    if diagonal_block:
        np.fill_diagonal(sq, np.inf)

    def smallest(a: np.ndarray) -> np.ndarray:
        out = np.full((a.shape[0], k), np.inf)
        s = np.sort(a, axis=1)[:, :k]
        out[:, : s.shape[1]] = s
        return out

    return smallest(sq), smallest(sq.T)


class _Radius:
    """Accumulates :class:`RadiusDecisions` tile by tile.

    Comparisons run in the working precision against the radii rounded to it; those within
    the error bound (plus the radius' own rounding) of the threshold are redone in float64.
    """

    def __init__(
        self, m: int, n: int, radii: tuple[np.ndarray, np.ndarray, np.ndarray], dtype: np.dtype
    ) -> None:
        self.exact = tuple(np.asarray(r, dtype=np.float64) for r in radii)
        self.rounded = tuple(r.astype(dtype) for r in self.exact)
        eps = float(np.finfo(dtype).eps)
        self.slack = tuple(eps * np.where(np.isfinite(r), r, 0.0) for r in self.exact)
        self.y_within = np.zeros(n, dtype=bool)
        self.y_count = np.zeros(n, dtype=np.int64)
        self.x_within = np.zeros(m, dtype=bool)
        self.x_covered = np.zeros(m, dtype=bool)
        self.uncertain = 0

    def add(
        self,
        sq: np.ndarray,
        err_x: np.ndarray,
        err_y: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        start: int,
    ) -> None:
        stop = start + sq.shape[1]
        (x_le, x_lt, y_le), (x_le_w, x_lt_w, y_le_w) = self.exact, self.rounded
        s_le, s_lt, s_y = self.slack
        tests = (  # (exact radii, rounded, margin (broadcast), strict)
            (x_le[:, None], x_le_w[:, None], (err_x + s_le)[:, None], False),  # precision
            (x_lt[:, None], x_lt_w[:, None], (err_x + s_lt)[:, None], True),  # density, coverage
            (  # recall
                y_le[None, start:stop],
                y_le_w[None, start:stop],
                (err_y + s_y[start:stop])[None, :],
                False,
            ),
        )
        results = []
        for exact_r, rounded, margin, strict in tests:
            inside = sq < rounded if strict else sq <= rounded
            near = np.abs(sq - rounded) <= margin.astype(sq.dtype)
            if near.any():
                i, j = np.nonzero(near)
                exact = _exact_sq(x, y, i, j + start)
                r = np.broadcast_to(exact_r, sq.shape)[i, j]
                inside[i, j] = exact < r if strict else exact <= r
                self.uncertain += int(i.size)
            results.append(inside)
        le_x, lt_x, le_y = results
        self.y_within[start:stop] = le_x.any(axis=0)
        self.y_count[start:stop] = lt_x.sum(axis=0)
        self.x_within |= le_y.any(axis=1)
        self.x_covered |= lt_x.any(axis=1)

    def result(self) -> RadiusDecisions:
        return RadiusDecisions(
            np.asarray(self.y_within),
            self.y_count,
            np.asarray(self.x_within),
            np.asarray(self.x_covered),
            self.uncertain,
        )


def radius_decisions_reference(
    x: np.ndarray,
    y: np.ndarray,
    x_radius: np.ndarray,
    x_radius_strict: np.ndarray,
    y_radius: np.ndarray,
) -> RadiusDecisions:
    """Float64 reference of :func:`shardeval.kernels.pairs.radius_decisions`."""
    sq = exact_sq_distances(x, y)
    le_x = sq <= x_radius[:, None]
    lt_x = sq < x_radius_strict[:, None]
    le_y = sq <= y_radius[None, :]
    return RadiusDecisions(
        np.asarray(le_x.any(0)), lt_x.sum(0), np.asarray(le_y.any(1)), np.asarray(lt_x.any(1)), 0
    )
