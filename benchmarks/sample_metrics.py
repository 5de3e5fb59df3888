"""KID and PRDC exact over all pairs, against the peers' in-memory methods.

Each method runs in its own child process (see :mod:`benchmarks._harness`): wall time from the
first read of the data to the value, imports excluded; peak resident memory of the child.

Methods, on the float32 (N, d) pairs of :mod:`benchmarks.fid_vs_peers`:

* ``shardeval-kid``    KID, unbiased over ALL pairs: Zarr → block pairs → kernel sums
* ``shardeval-prdc``   precision/recall (k = 3) and density/coverage (k = 5), exact
* ``shardeval-prdc5``  PRDC with k = 5 for all four, the ``prdc`` package's convention
* ``subset-kid``       the peers' KID protocol (100 subsets of 1,000, torch-fidelity's unbiased
                       estimator), float64 numpy on rows loaded into memory
* ``prdc-package``     ``prdc.compute_prdc(real, fake, nearest_k=5)``: three dense distance
                       matrices (real-real, fake-fake, real-fake)

The peers build N × N matrices: the ``prdc`` package three of them, a full-set in-memory KID
one per kernel block. ``--peers-max-n`` bounds where they are run; the sizes where they cannot
run here are computed from the matrices they allocate (quoted beside the measured peaks).

Usage:
    python -m benchmarks.sample_metrics [--sizes 10000 50000] [--peers-max-n 10000]
    python -m benchmarks.sample_metrics --accuracy 5000     # errors against float64 brute force

GPU (not measured: no GPU was available): per 4,096 × 4,096 block pair at d = 2,048, the
product is 2·m·n·d = 68.7 GFLOP; with 64 × 64 output tiles each tile streams (64 + 64)·d·4 bytes,
4.3 GB per pair from L2/HBM at an arithmetic intensity of 16 FLOP/byte, so on an H100 (67 TFLOP/s
fp32 without tensor cores, 3.35 TB/s) a pair is bounded by about 1.0 ms of fp32 arithmetic and
1.3 ms of HBM traffic if no tile is served from L2; exact KID at 50,000 × 2,048 (2·N² pairs of
rows, 20.5 TFLOP) is then about 0.3–0.4 s, PRDC (two kNN passes and one radius pass, the same
products) about the same plus the float64 re-decisions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child
from benchmarks.fid_vs_peers import _paths, make_data


def _load(paths: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    return np.load(paths["real.npy"]), np.load(paths["gen.npy"])


def _shardeval(paths: dict[str, str], **params: Any) -> Any:
    from shardeval.pipeline import open_features
    from shardeval.pipeline.pairwise.passes import sample_metrics

    real, gen = open_features(paths["real.zarr"]), open_features(paths["gen.zarr"])
    return sample_metrics(real, gen, **params)


def _run_kid(paths: dict[str, str]) -> float:
    from shardeval.pipeline.pairwise.passes import KIDParams

    return _shardeval(paths, kid=KIDParams())["kid"].kid


def _run_prdc(paths: dict[str, str], k: int = 5, pr_k: int = 3) -> list[float]:
    from shardeval.pipeline.pairwise.passes import PRDCParams

    r = _shardeval(paths, prdc=PRDCParams(k=k, pr_k=pr_k))["prdc"]
    return [r.precision, r.recall, r.density, r.coverage]


def _run_prdc5(paths: dict[str, str]) -> list[float]:
    return _run_prdc(paths, 5, 5)


def _run_prdc_realism(paths: dict[str, str]) -> list[float]:
    """PRDC with each generated row's realism score (Kynkäänniemi et al. 2019, Sec. 5) in the
    same pass: its cost beside ``shardeval-prdc``'s; the value adds the scores' median."""
    from shardeval.pipeline.pairwise.passes import PRDCParams

    r = _shardeval(paths, prdc=PRDCParams(realism=True))["prdc"]
    return [r.precision, r.recall, r.density, r.coverage, float(np.median(r.realism))]


def _run_subset_kid(paths: dict[str, str], subsets: int = 100, size: int = 1000) -> float:
    """torch-fidelity's protocol: subsets drawn with one RandomState(2020), the unbiased MMD²
    (within-set sums without their diagonals over m(m−1), the cross mean over m²)."""
    real, gen = _load(paths)
    real, gen = real.astype(np.float64), gen.astype(np.float64)
    rng = np.random.RandomState(2020)
    d, values = real.shape[1], []
    for _ in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = gen[rng.choice(len(gen), size, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        m = size
        values.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return float(np.mean(values))


def _run_prdc_package(paths: dict[str, str]) -> list[float]:
    from prdc import compute_prdc

    real, gen = _load(paths)
    r = compute_prdc(real_features=real, fake_features=gen, nearest_k=5)
    return [float(r[k]) for k in ("precision", "recall", "density", "coverage")]


METHODS: dict[str, Callable[[dict[str, str]], Any]] = {
    "shardeval-kid": _run_kid,
    "shardeval-prdc": _run_prdc,
    "shardeval-prdc5": _run_prdc5,
    "shardeval-realism": _run_prdc_realism,
    "subset-kid": _run_subset_kid,
    "prdc-package": _run_prdc_package,
}
#: Peers whose memory grows as N² (run up to --peers-max-n; beyond, what they would need).
QUADRATIC = ("prdc-package",)


def _timed_method(method: str) -> Callable[[str, str], Any]:
    def run(n: str, d: str) -> Any:
        return METHODS[method](_paths(int(n), int(d)))

    return run


def _peer_bytes(method: str, n: int, d: int) -> int:
    """What the prdc package holds at once: the two (N, d) float32 sets, an N × N float32
    distance matrix and the int64 N × N of its ``np.argpartition`` (12 N² bytes; sklearn
    keeps float32 inputs in float32)."""
    return 2 * n * d * 4 + 12 * n * n


def accuracy(n: int, d: int) -> None:
    """Relative error of KID and CMMD (both estimators) against float64 brute force on the
    first ``n`` rows of each set, for fp32 and fp64 products."""
    from shardeval.pipeline import open_features
    from shardeval.pipeline.pairwise.passes import CMMDParams, KIDParams, sample_metrics

    paths = _paths(n, d)
    x, y = (np.load(paths[f"{s}.npy"]).astype(np.float64) for s in ("real", "gen"))

    def kid(a: np.ndarray, b: np.ndarray) -> float:
        m, k = len(a), len(b)
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
        within = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        return float(within + (kyy.sum() - np.trace(kyy)) / (k * (k - 1)) - 2 * kxy.mean())

    def cmmd(a: np.ndarray, b: np.ndarray, unbiased: bool) -> float:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)

        def k(p: np.ndarray, q: np.ndarray) -> np.ndarray:
            sq = np.maximum((p * p).sum(1)[:, None] + (q * q).sum(1)[None] - 2 * p @ q.T, 0)
            return np.exp(-sq / 200.0)

        kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
        m, j = len(a), len(b)
        if unbiased:
            within = (kxx.sum() - m) / (m * (m - 1)) + (kyy.sum() - j) / (j * (j - 1))
        else:
            within = kxx.mean() + kyy.mean()
        return float(1000 * (within - 2 * kxy.mean()))

    real, gen = open_features(paths["real.zarr"]), open_features(paths["gen.zarr"])
    print(f"# accuracy at {n} x {d} against float64 brute force (relative error)")
    references = {
        "kid": kid(x, y),
        "cmmd (V)": cmmd(x, y, False),
        "cmmd (U)": cmmd(x, y, True),
    }
    for precision in ("fp32", "fp64"):
        got = {}
        for unbiased in (False, True):
            r = sample_metrics(
                real,
                gen,
                kid=KIDParams(),
                cmmd=CMMDParams(unbiased=unbiased),
                precision=precision,
            )
            got["kid"] = r["kid"].kid
            got["cmmd (U)" if unbiased else "cmmd (V)"] = r["cmmd"].cmmd
        for name, ref in references.items():
            error = abs(got[name] - ref) / abs(ref)
            print(f"{precision}  {name:<9} {ref:.12g}  rel error {error:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; medians quoted")
    parser.add_argument(
        "--repeats-above",
        type=int,
        default=20_000,
        help="sizes above this run once (minutes per run on 2 cores)",
    )
    parser.add_argument(
        "--peers-max-n",
        type=int,
        default=10_000,
        help="largest N the peers with N x N matrices are run at",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="what to run"
    )
    parser.add_argument(
        "--accuracy",
        type=int,
        metavar="N",
        help="instead: errors of KID and CMMD against float64 brute force at N rows",
    )
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.accuracy:
        make_data(args.accuracy, args.d)
        accuracy(args.accuracy, args.d)
        return
    if args.child:
        if args.child[0] == "prdc-package":
            import prdc  # noqa: F401
        child({m: _timed_method(m) for m in METHODS}, args.child[0], args.child[1:])
        return
    print(f"# {cpu_name()}; d={args.d}")
    print(f"{'N':>7} {'method':<16} {'runs':>4} {'seconds':>9} {'peak MiB':>9}  value")
    for n in args.sizes:
        make_data(n, args.d)
        methods = [m for m in args.methods if m not in QUADRATIC or n <= args.peers_max_n]
        repeats = args.repeats if n <= args.repeats_above else 1
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits all
            for m in methods:
                runs[m].append(run_child("benchmarks.sample_metrics", m, n, args.d))
        for m, rs in runs.items():
            r = medians(rs)
            value = r["value"]
            shown = (
                " ".join(f"{v:.6f}" for v in value) if isinstance(value, list) else f"{value:.6g}"
            )
            print(
                f"{n:>7} {m:<16} {repeats:>4} {r['seconds']:>9.2f} "
                f"{r['peak_rss_mib']:>9.0f}  {shown}"
            )
        for m in QUADRATIC:
            if m in args.methods and m not in methods:
                need = _peer_bytes(m, n, args.d) / 2**30
                print(f"{n:>7} {m:<16} {'-':>4} {'-':>9} {'-':>9}  needs {need:.1f} GiB at once")


if __name__ == "__main__":
    main()
