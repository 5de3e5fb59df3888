"""NLL/ESS and Parzen NLL: shardeval streamed from Zarr against the obvious in-memory
numpy/scipy computation, side by side (each in its own process: time and peak memory).

Cases:
* ``ess``: 10M float64 log-weights; shardeval ``ess_of`` (LSE pairs + top-M tail, k̂) against
  np.load + exp/sum in numpy + ArviZ's ``psislw`` for k̂ (if installed).
* ``parzen``: 5,000 test rows under a KDE of 20,000 samples, d = 64; shardeval ``nll_parzen``
  (tiled, online LSE) against scipy ``cdist`` of the full matrix + ``logsumexp``.

Usage:
    python -m benchmarks.nll_ess [--n 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")


def _paths(tag: str) -> dict[str, str]:
    base = os.path.join(DATA_DIR, tag)
    return {
        k: f"{base}-{k}"
        for k in ("lw.zarr", "lw.npy", "samples.zarr", "samples.npy", "test.zarr", "test.npy")
    }


def make_data(n: int) -> str:
    import zarr

    tag = f"nll-{n}"
    paths = _paths(tag)
    if all(os.path.exists(p) for p in paths.values()):
        return tag
    os.makedirs(DATA_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.5, n)
    lw = -0.5 * (x - 0.5) ** 2 + 0.5 * (x / 1.5) ** 2 + math.log(1.5)
    arrays = {
        "lw": lw,
        "samples": rng.normal(size=(20_000, 64)).astype(np.float32),
        "test": rng.normal(size=(5_000, 64)).astype(np.float32),
    }
    for name, a in arrays.items():
        np.save(paths[f"{name}.npy"], a)
        z = zarr.create_array(
            paths[f"{name}.zarr"],
            shape=a.shape,
            dtype=a.dtype,
            chunks=(min(len(a), 1 << 20), *a.shape[1:]),
            overwrite=True,
            compressors=None,
        )
        z[...] = a
    return tag


def _ess_shardeval(tag: str) -> float:
    from shardeval.pipeline import open_features
    from shardeval.pipeline.likelihood.ess import ess_of

    return ess_of(open_features(_paths(tag)["lw.zarr"], ndims=(1,))).ess_fraction


def _ess_numpy(tag: str) -> float:
    lw = np.load(_paths(tag)["lw.npy"])
    w = np.exp(lw - lw.max())
    fraction = float(w.sum() ** 2 / np.square(w).sum() / lw.size)
    try:
        import arviz

        arviz.psislw(lw.copy(), reff=1.0)
    except ImportError:
        pass
    return fraction


def _parzen_shardeval(tag: str) -> float:
    from shardeval.pipeline import open_features
    from shardeval.pipeline.likelihood.parzen import nll_parzen

    p = _paths(tag)
    return nll_parzen(open_features(p["samples.zarr"]), open_features(p["test.zarr"]), 4.0).nll


def _parzen_scipy(tag: str) -> float:
    from scipy.spatial.distance import cdist
    from scipy.special import logsumexp

    p = _paths(tag)
    y, x = np.load(p["samples.npy"]).astype(np.float64), np.load(p["test.npy"]).astype(np.float64)
    h = 4.0
    lp = (
        logsumexp(-cdist(x, y, "sqeuclidean") / (2 * h * h), axis=1)
        - math.log(len(y))
        - 0.5 * x.shape[1] * math.log(2 * math.pi * h * h)
    )
    return float(-lp.mean())


CASES: dict[str, dict[str, Callable[[str], Any]]] = {
    "ess": {"shardeval": _ess_shardeval, "numpy+arviz": _ess_numpy},
    "parzen": {"shardeval": _parzen_shardeval, "scipy": _parzen_scipy},
}
METHODS = {f"{case}:{m}": fn for case, ms in CASES.items() for m, fn in ms.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="log-weights (ESS case)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import scipy.special  # noqa: F401

        # Imports outside the timed region (pipeline loads names lazily).

        child(METHODS, args.child[0], args.child[1:])
        return
    tag = make_data(args.n)
    print(f"# {cpu_name()}; medians of {args.repeats} runs")
    print(f"{'case':<8} {'method':<13} {'value':>14} {'seconds':>9} {'peak MiB':>9} {'ratio':>7}")
    for case, methods in CASES.items():
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for m in methods:
                runs[m].append(run_child("benchmarks.nll_ess", f"{case}:{m}", tag))
        med = {m: medians(rs) for m, rs in runs.items()}
        ref = med[next(m for m in methods if m != "shardeval")]["seconds"]
        for m, r in med.items():
            print(
                f"{case:<8} {m:<13} {r['value']:>14.6f} {r['seconds']:>9.2f} "
                f"{r['peak_rss_mib']:>9.0f} {r['seconds'] / ref:>7.3f}"
            )


if __name__ == "__main__":
    main()
