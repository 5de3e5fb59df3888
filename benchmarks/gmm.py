"""Gaussian mixture NLL: shardeval's EM over Zarr shards against scikit-learn's
``GaussianMixture`` in memory, side by side (each in its own process: time and peak memory).

Data: N rows (default 100,000) × d = 64 float32 from 10 Gaussians with their own covariances,
in chunks of 10,000 rows, and 10,000 test rows. Methods, each fitting K = 10 components with
full covariances at tolerance 1e-3 and scoring the test rows:

* ``shardeval``: ``nll_gmm`` from the stores (k-means on 10,000 sampled rows, one
  hard-assignment pass, then one pass per EM iteration), timed whole, initialisation included;
* ``sklearn-same-start``: ``GaussianMixture`` from the parameters shardeval's initialisation
  gives (saved beforehand; ``init_params='random_from_data'``, since scikit-learn still runs
  its ``init_params`` when all three are given, and this one costs nothing), on the rows in
  memory: the same EM from the same start, so the ratio compares the iterations themselves;
* ``sklearn-kmeans``: ``GaussianMixture`` with its default start (k-means on every row, one
  initialisation), the usual way of calling it.

Usage:
    python -m benchmarks.gmm [--n 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")
K, D = 10, 64


def _paths(tag: str) -> dict[str, str]:
    base = os.path.join(DATA_DIR, tag)
    return {k: f"{base}-{k}" for k in ("x.zarr", "x.npy", "t.zarr", "t.npy", "init.npz")}


def make_data(n: int) -> str:
    import zarr

    tag = f"gmm-{n}"
    paths = _paths(tag)
    if all(os.path.exists(p) for p in paths.values()):
        return tag
    os.makedirs(DATA_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(K, D)) * 1.5
    shapes = rng.normal(size=(K, D, D)) / np.sqrt(D) * rng.uniform(0.3, 1.0, (K, 1, 1))

    def draw(m: int) -> np.ndarray:
        owner = rng.integers(K, size=m)
        z = rng.normal(size=(m, D))
        return (np.einsum("nd,nde->ne", z, shapes[owner]) + centres[owner]).astype(np.float32)

    for name, a in (("x", draw(n)), ("t", draw(10_000))):
        np.save(paths[f"{name}.npy"], a)
        z = zarr.create_array(
            paths[f"{name}.zarr"], shape=a.shape, dtype=a.dtype, chunks=(10_000, D),
            overwrite=True, compressors=None,
        )  # fmt: skip
        z[...] = a
    from shardeval.pipeline import open_features
    from shardeval.pipeline.likelihood.gmm import fit_gmm

    start = fit_gmm(open_features(paths["x.zarr"]), K, max_iter=1).initial
    np.savez(
        paths["init.npz"], weights=start.weights, means=start.means,
        precisions=np.linalg.inv(start.covariances),
    )  # fmt: skip
    return tag


def _shardeval(tag: str) -> dict[str, Any]:
    from shardeval.pipeline import open_features
    from shardeval.pipeline.likelihood.gmm import nll_gmm

    p = _paths(tag)
    result, fit = nll_gmm(open_features(p["x.zarr"]), open_features(p["t.zarr"]), K)
    return {"nll": result.nll, "iterations": fit.iterations}


def _sklearn(tag: str, same_start: bool) -> dict[str, Any]:
    from sklearn.mixture import GaussianMixture

    p = _paths(tag)
    x, t = np.load(p["x.npy"]).astype(np.float64), np.load(p["t.npy"]).astype(np.float64)
    start: dict[str, Any] = {}
    if same_start:  # the cheapest init_params: the given parameters replace what it makes
        with np.load(p["init.npz"]) as f:
            start = {
                "weights_init": f["weights"],
                "means_init": f["means"],
                "precisions_init": f["precisions"],
                "init_params": "random_from_data",
            }
    gm = GaussianMixture(K, covariance_type="full", random_state=0, **start).fit(x)
    return {"nll": float(-gm.score(t)), "iterations": int(gm.n_iter_)}


METHODS: dict[str, Callable[[str], Any]] = {
    "shardeval": _shardeval,
    "sklearn-same-start": lambda tag: _sklearn(tag, True),
    "sklearn-kmeans": lambda tag: _sklearn(tag, False),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="fitting rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import sklearn.mixture  # noqa: F401  # imports outside the timed region
        import torch  # noqa: F401

        import shardeval.pipeline.likelihood.gmm  # noqa: F401

        child(METHODS, args.child[0], args.child[1:])
        return
    tag = make_data(args.n)
    print(f"# {cpu_name()}; {args.n:,} x {D} rows, K = {K} full; medians of {args.repeats} runs")
    print(
        f"{'method':<19} {'test NLL':>12} {'iters':>6} {'seconds':>9} {'peak MiB':>9} {'ratio':>7}"
    )
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for m in METHODS:
            runs[m].append(run_child("benchmarks.gmm", m, tag))
    med = {m: medians(rs) for m, rs in runs.items()}
    ref = med["sklearn-same-start"]["seconds"]
    for m, r in med.items():
        v = r["value"]
        print(
            f"{m:<19} {v['nll']:>12.6f} {v['iterations']:>6} {r['seconds']:>9.2f} "
            f"{r['peak_rss_mib']:>9.0f} {r['seconds'] / ref:>7.3f}"
        )


if __name__ == "__main__":
    main()
