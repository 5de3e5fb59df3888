"""Training-loop FID: ``shardeval.FID.update`` against torchmetrics' ``FrechetInceptionDistance``
fed the same feature batches (an identity feature module), side by side in one run.

Each method runs in its own child process on the same float32 (N, d) pair, read from ``.npy``
files batch by batch as a training loop would produce them (plain reads, not a memory map, so
that the rows already seen leave memory). The child reports the mean and the longest time of
one ``update`` call (shardeval gathers a few thousand rows before its kernel runs, so most
calls are copies and some reduce the buffer), the time of all of them, the time of
``compute``, and its peak resident memory above what it held before the first update (the
metric's state and temporaries; the batch being read is the same for every method).

Accuracy: a common offset (``--offsets``) is added to every feature in float32 before any
method sees it, so every method sees the same values, and each FID is compared with a float64
reference (two-pass mean and co-moment of those float32 values in float64, FID through
Σ_r^½ Σ_g Σ_r^½ and a symmetric eigenvalue routine). torchmetrics keeps raw float64 Σx and
Σxxᵀ and subtracts n·μμᵀ at the end: with a mean of 10^k against a spread of 1, its covariance
loses about 2k of float64's sixteen digits. shardeval merges centred moments (Chan et al.),
whose error does not grow with the offset: 1e-7 relative or less with fp32 products inside a
buffer of rows (the kernels' contract), 1e-13 or less with ``precision='fp64'``.

* ``shardeval``           per batch: shard_moments (BLAS syrk, fp32 products of centred rows),
                          Chan merge in place into float64 (mean, m2); compute: Cholesky +
                          eigvalsh
* ``shardeval-fp64``      the same with float64 products (``precision='fp64'``)
* ``torchmetrics``        per batch: float64 Σx and Σxᵀx (a full GEMM); compute:
                          cov = (Σxxᵀ − n μμᵀ)/(n−1), complex eigvals(Σ_r Σ_g); the value is
                          returned in the features' dtype (float32)
* ``torchmetrics-f64in``  torchmetrics fed the same values as float64 tensors (accuracy only):
                          its value is then not cast to float32, which isolates what its raw
                          sums cost

Usage:
    pip install -e '.[bench]'
    python -m benchmarks.streaming_fid [--n 50000] [--d 2048] [--batch 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, peak_mib, run_child

#: Methods timed (at offset 0, interleaved, ``--repeats`` runs each), and those whose accuracy
#: is measured at every offset (one run each: the values are deterministic).
TIMED = ("shardeval", "shardeval-fp64", "torchmetrics")
ACCURACY = ("shardeval", "shardeval-fp64", "torchmetrics", "torchmetrics-f64in")


def _paths(n: int, d: int) -> dict[str, str]:
    """The pair of :mod:`benchmarks.fid_vs_peers` (written once, as Zarr and ``.npy``)."""
    from benchmarks.fid_vs_peers import make_data

    paths = make_data(n, d)
    return {side: paths[f"{side}.npy"] for side in ("real", "gen")}


def _batches(path: str, batch: int, offset: float, dtype: Any = np.float32) -> Iterator[np.ndarray]:
    """The rows in batches, offset in float32 (what every method sees), read with plain file
    reads: a batch leaves memory once the next is read."""
    header = np.load(path, mmap_mode="r")
    n, d = header.shape
    shift = np.float32(offset)
    with open(path, "rb") as fh:
        fh.seek(header.offset)
        for start in range(0, n, batch):
            rows = np.fromfile(fh, dtype=np.float32, count=min(batch, n - start) * d)
            yield (rows.reshape(-1, d) + shift).astype(dtype, copy=False)


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed(
    metric: Any, paths: dict[str, str], batch: int, offset: float, dtype: Any = np.float32
) -> dict[str, float]:
    """Feed both sides to ``metric`` batch by batch (``update(tensor, real=…)``, as both
    libraries take them), timing each update; then ``compute()``."""
    import torch

    base = _rss_mib()
    times = []
    for side in ("real", "gen"):
        for rows in _batches(paths[side], batch, offset, dtype):
            start = time.perf_counter()
            metric.update(torch.from_numpy(rows), real=side == "real")
            times.append(time.perf_counter() - start)
    start = time.perf_counter()
    value = float(metric.compute())
    return {
        "fid": value,
        "update_ms": 1e3 * statistics.fmean(times),
        "update_max_ms": 1e3 * max(times),
        "update_s": sum(times),
        "compute_s": time.perf_counter() - start,
        "peak_mib": peak_mib() - base,
    }


def _shardeval(paths: dict[str, str], batch: int, offset: float, precision: str) -> Any:
    import shardeval as se

    return _timed(se.FID(precision=precision), paths, batch, offset)


def _torchmetrics(paths: dict[str, str], batch: int, offset: float, dtype: Any) -> Any:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        """The features are the 'images': torchmetrics' state sees them unchanged."""

        def __init__(self, d: int) -> None:
            super().__init__()
            self.num_features = d

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    d = np.load(paths["real"], mmap_mode="r").shape[1]
    metric = FrechetInceptionDistance(feature=Identity(d), reset_real_features=False)
    return _timed(metric, paths, batch, offset, dtype)


def _float64(paths: dict[str, str], batch: int, offset: float) -> Any:
    """The reference: float64 mean and covariance (ddof 1) by two passes over the batches,
    then FID through Σ_r^½ Σ_g Σ_r^½ and eigvalsh."""

    def moments(path: str) -> tuple[np.ndarray, np.ndarray]:
        total, n = None, 0
        for rows in _batches(path, batch, offset):
            s = rows.sum(axis=0, dtype=np.float64)
            total, n = (s if total is None else total + s), n + len(rows)
        mean = total / n
        m2 = np.zeros((mean.size, mean.size))
        for rows in _batches(path, batch, offset):
            c = rows.astype(np.float64) - mean
            m2 += c.T @ c
        return mean, m2 / (n - 1)

    (mu_r, s_r), (mu_g, s_g) = moments(paths["real"]), moments(paths["gen"])
    w, v = np.linalg.eigh(s_r)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s_g @ root), 0, None)).sum()
    diff = mu_r - mu_g
    return {"fid": float(diff @ diff + np.trace(s_r) + np.trace(s_g) - 2 * trace_sqrt)}


METHODS: dict[str, Callable[[dict[str, str], int, float], Any]] = {
    "float64": _float64,
    "shardeval": lambda p, b, o: _shardeval(p, b, o, "fp32"),
    "shardeval-fp64": lambda p, b, o: _shardeval(p, b, o, "fp64"),
    "torchmetrics": lambda p, b, o: _torchmetrics(p, b, o, np.float32),
    "torchmetrics-f64in": lambda p, b, o: _torchmetrics(p, b, o, np.float64),
}


def _child_method(method: str) -> Callable[..., Any]:
    def run(n: str, d: str, batch: str, offset: str) -> Any:
        import torch  # noqa: F401  (imports outside the timed region, for every method)

        if method.startswith("torchmetrics"):
            import torchmetrics.image.fid  # noqa: F401
        if method.startswith("shardeval"):
            import shardeval.api.streaming
            import shardeval.kernels.moments
            import shardeval.pipeline.fid.frechet  # noqa: F401
        return METHODS[method](_paths(int(n), int(d)), int(batch), float(offset))

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows per side")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=500, help="rows per update() call")
    parser.add_argument(
        "--offsets", type=float, nargs="+", default=[1e3, 1e4, 1e5], help="offsets besides 0"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--child", nargs=5, metavar=("METHOD", "N", "D", "B", "O"), help="")
    args = parser.parse_args(argv)
    if args.child:
        child({m: _child_method(m) for m in METHODS}, args.child[0], args.child[1:])
        return
    _paths(args.n, args.d)  # the data, before any timing
    common = (args.n, args.d, args.batch)
    print(
        f"# {cpu_name()}; N = {args.n:,} rows per side, d = {args.d}, batches of {args.batch} "
        f"rows; timings at offset 0, medians of {args.repeats} interleaved runs"
    )
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in TIMED}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all
        for method in TIMED:
            runs[method].append(run_child("benchmarks.streaming_fid", method, *common, 0)["value"])
    median = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    base = median["torchmetrics"]
    print(
        f"\n{'method':<16} {'ms/update':>9} {'max ms':>7} {'update s':>9} {'compute s':>9} "
        f"{'peak MiB':>9} {'update ×':>9} {'total ×':>8}"
    )
    for method, m in median.items():
        total = (m["update_s"] + m["compute_s"]) / (base["update_s"] + base["compute_s"])
        print(
            f"{method:<16} {m['update_ms']:>9.1f} {m['update_max_ms']:>7.0f} {m['update_s']:>9.2f} "
            f"{m['compute_s']:>9.2f} {m['peak_mib']:>9.0f} "
            f"{m['update_ms'] / base['update_ms']:>9.3f} {total:>8.3f}"
        )
    print("\nrelative error of FID against the float64 reference (features + offset)")
    offsets = (0.0, *args.offsets)
    print(f"{'method':<19} " + " ".join(f"{f'+{o:g}':>10}" for o in offsets))
    errors: dict[str, list[str]] = {m: [] for m in ACCURACY}
    exact_values = []
    for offset in offsets:
        exact = run_child("benchmarks.streaming_fid", "float64", *common, offset)["value"]["fid"]
        exact_values.append(exact)
        for method in ACCURACY:
            if offset == 0 and method in runs:
                fid = runs[method][0]["fid"]
            else:
                fid = run_child("benchmarks.streaming_fid", method, *common, offset)["value"]["fid"]
            errors[method].append(f"{abs(fid - exact) / abs(exact):>10.1e}")
    for method, row in errors.items():
        print(f"{method:<19} " + " ".join(row))
    print(f"{'(float64 FID)':<19} " + " ".join(f"{v:>10.6g}" for v in exact_values))


if __name__ == "__main__":
    main()
