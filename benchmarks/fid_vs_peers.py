"""FID end to end: shardeval from Zarr against the peers' in-memory path from ``.npy``.

Each method runs in its own child process, so its peak resident memory (``VmHWM``, see
:mod:`benchmarks._harness`) is its own; wall time is measured inside the child from the first
read of the data to the FID value (imports excluded, the same for everyone), and the child's
whole life is reported too.

Methods, on the same float32 (N, d) pair:

* ``shardeval``       Zarr → Dask (threaded) → per-shard syrk moments → Chan merge → eigvalsh trace
* ``pytorch-fid``     np.load → np.mean + np.cov (float64) → scipy.linalg.sqrtm(Σ_r Σ_g), real part
* ``torchmetrics``    float64 torch sums Σx, Σxxᵀ → cov → eigvals(Σ_r Σ_g) (complex) → √ → real

The peers' formulas are written here from their published descriptions.

Usage:
    python -m benchmarks.fid_vs_peers [--sizes 50000 200000] [--d 2048] [--peers-max-n 50000]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")


def _paths(n: int, d: int) -> dict[str, str]:
    base = os.path.join(DATA_DIR, f"{n}x{d}")
    return {k: f"{base}-{k}" for k in ("real.zarr", "gen.zarr", "real.npy", "gen.npy")}


def make_data(n: int, d: int) -> dict[str, str]:
    """Write the pair once as Zarr (what shardeval reads) and .npy (what the peers load)."""
    from shardeval.pipeline.io.synthetic import gaussian_features, write_features

    paths = _paths(n, d)
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(DATA_DIR, exist_ok=True)
    for side, seed, mean, scale in (("real", 1, 0.5, 1.0), ("gen", 2, 0.55, 1.1)):
        x = gaussian_features(n, d, seed=seed, mean=mean, scale=scale)
        write_features(paths[f"{side}.zarr"], x, attrs={"feature_extractor": "synthetic"})
        out = np.lib.format.open_memmap(paths[f"{side}.npy"], "w+", np.float32, (n, d))
        x.store(out, lock=False)
        out.flush()
        del out
    return paths


def _run_shardeval(paths: dict[str, str]) -> float:
    from shardeval.pipeline import Gaussian, feature_moments, frechet_distance, open_features

    sources = [open_features(paths["real.zarr"]), open_features(paths["gen.zarr"])]
    (real, _), (gen, _) = feature_moments(sources)
    return frechet_distance(Gaussian.from_moments(real), Gaussian.from_moments(gen)).fid


def _run_pytorch_fid(paths: dict[str, str]) -> float:
    from scipy import linalg

    stats = []
    for side in ("real", "gen"):
        act = np.load(paths[f"{side}.npy"])
        stats.append((np.mean(act, axis=0), np.cov(act, rowvar=False)))
        del act
    (mu1, s1), (mu2, s2) = stats
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _run_torchmetrics(paths: dict[str, str]) -> float:
    import torch

    stats = []
    for side in ("real", "gen"):
        x = torch.from_numpy(np.load(paths[f"{side}.npy"])).double()
        n = x.shape[0]
        total, outer = x.sum(dim=0), x.T @ x
        mean = total / n
        stats.append((mean, (outer - n * torch.outer(mean, mean)) / (n - 1)))
        del x
    (mu1, s1), (mu2, s2) = stats
    a = (mu1 - mu2).square().sum()
    b = s1.trace() + s2.trace()
    c = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    return float(a + b - 2 * c)


METHODS = {
    "shardeval": _run_shardeval,
    "pytorch-fid": _run_pytorch_fid,
    "torchmetrics": _run_torchmetrics,
}


def _timed_method(method: str) -> Callable[[str, str], float]:
    def run(n: str, d: str) -> float:
        return METHODS[method](_paths(int(n), int(d)))

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; medians quoted")
    parser.add_argument(
        "--peers-max-n", type=int, default=50_000, help="largest N the in-memory peers are run at"
    )
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import scipy.linalg  # noqa: F401

        # Imports outside the timed region, for every method (pipeline loads names lazily).
        import shardeval.pipeline.fid.frechet
        import shardeval.pipeline.fid.moments
        import shardeval.pipeline.io.stores  # noqa: F401

        child({m: _timed_method(m) for m in METHODS}, args.child[0], args.child[1:])
        return
    print(f"# {cpu_name()}; d={args.d}; medians of {args.repeats} runs")
    print(
        f"{'N':>8} {'method':<13} {'fid':>14} {'seconds':>9} {'process s':>10} "
        f"{'peak MiB':>9} {'time ratio':>10}"
    )
    for n in args.sizes:
        make_data(n, args.d)
        methods = [m for m in METHODS if m == "shardeval" or n <= args.peers_max_n]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all
            for m in methods:
                runs[m].append(run_child("benchmarks.fid_vs_peers", m, n, args.d))
        med = {m: medians(rs) for m, rs in runs.items()}
        ref = med.get("pytorch-fid", {}).get("seconds")
        for m, r in med.items():
            ratio = f"{r['seconds'] / ref:.3f}" if ref else "-"
            print(
                f"{n:>8} {m:<13} {r['value']:>14.6f} {r['seconds']:>9.2f} "
                f"{r['process_seconds']:>10.2f} {r['peak_rss_mib']:>9.0f} {ratio:>10}"
            )


if __name__ == "__main__":
    main()
