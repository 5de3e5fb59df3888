"""The Vendi score, the Gaussian KLs and AuthPct: shardeval from Zarr stores against the
reference computation in memory, side by side (each in its own process: time and peak memory).

Data: two sets of N × 2,048 float32 rows (default N = 50,000) in chunks of 10,000 rows, each
N(μ, A Aᵀ) with its own mean and a covariance of decaying spectrum, written once as Zarr stores
and as ``.npy`` files. Methods:

* ``vendi``: ``se.metrics(None, GEN, "vendi")`` (cosine kernel, from the d × d second moment
  of the unit rows merged over the shards) against the authors' ``vendi-score``
  (``vendi.score_dual``, its X̂ᵀX̂ form, on the rows in memory, float64);
* ``kl``: ``se.metrics(REAL, GEN, "kl_gaussian")`` (both KLs from one pass over each store)
  against the textbook formula on the rows in memory, float64 numpy (``np.cov``, ``inv``,
  ``slogdet``): no package publishes these KLs between feature sets;
* ``authpct``: ``se.metrics(TRAIN, GEN, "authpct")`` on the first ``--authpct-n`` rows of each
  set (default 20,000: dgm-eval's computation holds N × N distances) against dgm-eval's
  computation transcribed from its definition (torch ``cdist`` of the whole sets, float32,
  the nearest training row's distance against that row's own nearest-other distance).

Usage:
    python -m benchmarks.next_metrics [--n 50000] [--authpct-n 20000] [--repeats 3]
        [--only vendi|kl|authpct]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")
D = 2048
CHUNK = 10_000


def _path(tag: str, name: str) -> str:
    return os.path.join(DATA_DIR, f"{tag}-{name}")


def make_data(n: int, authpct_n: int) -> str:
    import zarr

    tag = f"next-{n}-{authpct_n}"
    names = [f"{s}.{ext}" for s in ("real", "gen", "real-a", "gen-a") for ext in ("zarr", "npy")]
    if all(os.path.exists(_path(tag, p)) for p in names):
        return tag
    os.makedirs(DATA_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    scales = 1.0 / np.sqrt(1.0 + np.arange(D))  # a decaying spectrum, as features have
    for side, shift in (("real", 0.0), ("gen", 0.05)):
        basis = np.linalg.qr(rng.normal(size=(D, D)))[0] * scales
        mean = shift + 0.1 * rng.normal(size=D)
        rows = np.empty((n, D), np.float32)
        for lo in range(0, n, CHUNK):
            m = min(CHUNK, n - lo)
            rows[lo : lo + m] = rng.normal(size=(m, D)) @ basis.T + mean
        for name, a in ((side, rows), (f"{side}-a", rows[:authpct_n])):
            np.save(_path(tag, f"{name}.npy"), a)
            z = zarr.create_array(
                _path(tag, f"{name}.zarr"), shape=a.shape, dtype=a.dtype,
                chunks=(CHUNK, D), overwrite=True, compressors=None,
            )  # fmt: skip
            z[...] = a
    return tag


def _shardeval(tag: str, metric: str) -> dict[str, Any]:
    import shardeval as se

    if metric == "vendi":
        out = se.metrics(None, _path(tag, "gen.zarr"), "vendi").to_dict()["vendi"]
        return {"value": out["vendi"]}
    if metric == "kl":
        out = se.metrics(_path(tag, "real.zarr"), _path(tag, "gen.zarr"), "kl_gaussian")
        kl = out.to_dict()["kl_gaussian"]
        return {"value": kl["kl_gaussian"], "reverse": kl["kl_gaussian_reverse"]}
    out = se.metrics(_path(tag, "real-a.zarr"), _path(tag, "gen-a.zarr"), "authpct")
    return {"value": out.to_dict()["authpct"]["authpct"]}


def _vendi_package(tag: str) -> dict[str, Any]:
    from vendi_score import vendi

    x = np.load(_path(tag, "gen.npy")).astype(np.float64)
    return {"value": float(vendi.score_dual(x, q=1, normalize=True))}


def _kl_textbook(tag: str) -> dict[str, Any]:
    p, q = (np.load(_path(tag, f"{s}.npy")).astype(np.float64) for s in ("real", "gen"))
    mp, mq = p.mean(0), q.mean(0)
    sp, sq = np.cov(p, rowvar=False), np.cov(q, rowvar=False)

    def kl(m0: np.ndarray, s0: np.ndarray, m1: np.ndarray, s1: np.ndarray) -> float:
        inv1, delta = np.linalg.inv(s1), m1 - m0
        logdet = np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1]
        return 0.5 * float(np.trace(inv1 @ s0) + delta @ inv1 @ delta - D + logdet)

    return {"value": kl(mp, sp, mq, sq), "reverse": kl(mq, sq, mp, sp)}


def _authpct_dgm_eval(tag: str) -> dict[str, Any]:
    import torch

    train = torch.from_numpy(np.load(_path(tag, "real-a.npy")))
    gen = torch.from_numpy(np.load(_path(tag, "gen-a.npy")))
    within = torch.cdist(train, train)
    within.fill_diagonal_(float("inf"))
    own = within.min(dim=1).values
    del within
    to_train = torch.cdist(gen, train)
    nearest, index = to_train.min(dim=1)
    authentic = own[index] < nearest
    return {"value": 100.0 * float(authentic.float().mean())}


METHODS: dict[str, Callable[[str], Any]] = {
    "vendi/shardeval": lambda tag: _shardeval(tag, "vendi"),
    "vendi/vendi-score": _vendi_package,
    "kl/shardeval": lambda tag: _shardeval(tag, "kl"),
    "kl/numpy-textbook": _kl_textbook,
    "authpct/shardeval": lambda tag: _shardeval(tag, "authpct"),
    "authpct/dgm-eval-def": _authpct_dgm_eval,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows of each set")
    parser.add_argument("--authpct-n", type=int, default=20_000, help="rows of each, AuthPct")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", choices=("vendi", "kl", "authpct"), help="run one metric's methods only"
    )
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch  # noqa: F401  # imports outside the timed region
        import vendi_score.vendi  # noqa: F401

        import shardeval
        import shardeval.pipeline.fid.kl_metrics
        import shardeval.pipeline.memorization.metrics
        import shardeval.pipeline.vendi.metrics  # noqa: F401

        child(METHODS, args.child[0], args.child[1:])
        return
    tag = make_data(args.n, args.authpct_n)
    print(
        f"# {cpu_name()}; {args.n:,} x {D} rows a set (AuthPct: {args.authpct_n:,}); "
        f"medians of {args.repeats} runs"
    )
    print(f"{'method':<22} {'value':>16} {'seconds':>9} {'peak MiB':>9} {'ratio':>7}")
    methods = [m for m in METHODS if args.only is None or m.startswith(args.only + "/")]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for m in methods:
            runs[m].append(run_child("benchmarks.next_metrics", m, tag))
    med = {m: medians(rs) for m, rs in runs.items()}
    for m, r in med.items():
        metric = m.split("/")[0]
        reference = next(v for k, v in med.items() if k.startswith(metric) and k != m)
        ratio = r["seconds"] / reference["seconds"] if m.endswith("shardeval") else 1.0
        print(
            f"{m:<22} {r['value']['value']:>16.10g} {r['seconds']:>9.2f} "
            f"{r['peak_rss_mib']:>9.0f} {ratio:>7.3f}"
        )


if __name__ == "__main__":
    main()
