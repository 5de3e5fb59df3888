"""C_T: shardeval from Zarr stores against dgm-eval's computation transcribed from its
definition, side by side, each in its own process (time and peak memory).

Data: a training set, a held-out test set drawn like it and a generated set (half of its rows
jittered copies of training rows, half fresh), ``--d`` features (default 64: the width
dgm-eval computes C_T at, after its PCA of wider features), N(μ, A Aᵀ) with a decaying
spectrum, written once as Zarr stores and ``.npy`` files. Methods:

* ``ct/shardeval``: ``se.ct(TRAIN, TEST, GEN)``: k-means on a seeded sample of at most 10,000
  training rows, each row's nearest training row of its cell exact (block pairs);
* ``ct/dgm-eval-def``: dgm-eval's steps (``dgm_eval/metrics/ct.py``) written from their
  definition: scikit-learn's ``KMeans(n_clusters=3, n_init=10)`` on every training row, a
  ``NearestNeighbors`` search per cell, scipy's ``mannwhitneyu``, its Z-score and weights.

The two values differ by the k-means cells (another sample and seeding), not by the statistic.

Usage:
    python -m benchmarks.ct [--train 50000] [--test 10000] [--gen 10000] [--d 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")
CHUNK = 10_000


def _path(tag: str, name: str) -> str:
    return os.path.join(DATA_DIR, f"{tag}-{name}")


def make_data(train: int, test: int, gen: int, d: int) -> str:
    import zarr

    tag = f"ct-{train}-{test}-{gen}-{d}"
    names = ("train", "test", "gen")
    if all(os.path.exists(_path(tag, f"{s}.{e}")) for s in names for e in ("zarr", "npy")):
        return tag
    os.makedirs(DATA_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0] / np.sqrt(1.0 + np.arange(d))
    mean = 0.1 * rng.normal(size=d)

    def draw(n: int) -> np.ndarray:
        return rng.normal(size=(n, d)) @ basis.T + mean

    rows = {"train": draw(train), "test": draw(test)}
    copies = rows["train"][rng.choice(train, gen // 2, replace=False)]
    rows["gen"] = np.concatenate(
        [copies + 0.01 * rng.normal(size=copies.shape), draw(gen - gen // 2)]
    )
    for name, x in rows.items():
        x = x.astype(np.float32)
        np.save(_path(tag, f"{name}.npy"), x)
        z = zarr.create_array(
            _path(tag, f"{name}.zarr"), shape=x.shape, dtype=x.dtype,
            chunks=(CHUNK, d), overwrite=True, compressors=None,
        )  # fmt: skip
        z[...] = x
    return tag


def _shardeval(tag: str) -> dict[str, Any]:
    import shardeval as se

    report = se.ct(*(_path(tag, f"{s}.zarr") for s in ("train", "test", "gen")))
    return {"value": report.to_dict()["ct"]["ct"]}


def _dgm_eval_def(tag: str) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    train, test, gen = (np.load(_path(tag, f"{s}.npy")) for s in ("train", "test", "gen"))
    cells = KMeans(n_clusters=3, n_init=10).fit(train)
    labels = [cells.predict(x) for x in (train, test, gen)]
    weights, scores, kept = np.zeros(3), np.zeros(3), np.zeros(3, dtype=bool)
    for c in range(3):
        t, p, q = (x[lab == c] for x, lab in zip((train, test, gen), labels, strict=True))
        weights[c] = len(p) / len(test)
        kept[c] = len(q) / len(gen) > 20 / len(gen)
        if len(q) == 0:
            continue
        search = NearestNeighbors(n_neighbors=1).fit(t)
        lq, lp = search.kneighbors(q)[0], search.kneighbors(p)[0]
        u = mannwhitneyu(lq, lp, alternative="less")[0]
        n, m = len(p), len(q)
        scores[c] = (u[0] - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)
    return {"value": float(weights[kept] @ scores[kept] / weights[kept].sum())}


METHODS: dict[str, Callable[[str], Any]] = {
    "ct/shardeval": _shardeval,
    "ct/dgm-eval-def": _dgm_eval_def,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=50_000, help="training rows")
    parser.add_argument("--test", type=int, default=10_000, help="test rows")
    parser.add_argument("--gen", type=int, default=10_000, help="generated rows")
    parser.add_argument("--d", type=int, default=64, help="features per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import scipy.stats  # noqa: F401  # imports outside the timed region
        import sklearn.cluster
        import sklearn.neighbors  # noqa: F401

        import shardeval
        import shardeval.pipeline.memorization.copying
        import shardeval.pipeline.memorization.metrics  # noqa: F401

        child(METHODS, args.child[0], args.child[1:])
        return
    tag = make_data(args.train, args.test, args.gen, args.d)
    print(
        f"# {cpu_name()}; train {args.train:,}, test {args.test:,}, gen {args.gen:,} rows of "
        f"{args.d} features (half the generated rows jittered copies); medians of "
        f"{args.repeats} runs"
    )
    print(f"{'method':<18} {'value':>12} {'seconds':>9} {'peak MiB':>9} {'ratio':>7}")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for m in METHODS:
            runs[m].append(run_child("benchmarks.ct", m, tag))
    med = {m: medians(rs) for m, rs in runs.items()}
    base = med["ct/dgm-eval-def"]["seconds"]
    for m, r in med.items():
        print(
            f"{m:<18} {r['value']['value']:>12.6g} {r['seconds']:>9.2f} "
            f"{r['peak_rss_mib']:>9.0f} {r['seconds'] / base:>7.3f}"
        )


if __name__ == "__main__":
    main()
