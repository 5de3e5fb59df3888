"""Inception Score over 50,000 × 1,008 logits: shardeval's exact estimator (streamed from Zarr,
mergeable sums, a second pass for the standard error) against the split protocol, ours and the
peers' (torch-fidelity's ``isc_features_to_metric``, in memory), side by side, each in its own
process (time, and peak memory as VmHWM).

Methods:
* ``shardeval exact``: IS over all samples and its standard error (two passes).
* ``shardeval exact+splits``: the same and the peers' 10-split protocol (the splits' sums come
  from the first pass).
* ``shardeval splits 1 pass``: the split protocol alone (``standard_error=False``), one pass.
* ``torch-fidelity``: ``isc_features_to_metric`` on the array loaded from ``.npy`` (float64,
  softmax and log-softmax of the whole array in memory) when torch-fidelity imports (it needs
  torchvision: run this in the encoder environment); else ``numpy (tf formula)``, a float64
  numpy transcription of the same formula.

Usage:
    python -m benchmarks.inception_score [--n 50000] [--classes 1008] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import cpu_name, medians, peak_mib, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")


def _paths(tag: str) -> dict[str, str]:
    base = os.path.join(DATA_DIR, tag)
    return {"zarr": f"{base}-logits.zarr", "npy": f"{base}-logits.npy"}


def make_data(n: int, classes: int) -> str:
    """Logits of a confident, diverse classifier: each row near one of 1,000 class centres."""
    import zarr

    tag = f"is-{n}x{classes}"
    paths = _paths(tag)
    if all(os.path.exists(p) for p in paths.values()):
        return tag
    os.makedirs(DATA_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, classes)).astype(np.float32) * 4
    x = centres[rng.integers(0, 1000, n)] + rng.standard_normal((n, classes), dtype=np.float32)
    np.save(paths["npy"], x)
    z = zarr.create_array(
        paths["zarr"],
        shape=x.shape,
        dtype=x.dtype,
        chunks=(8192, classes),
        dimension_names=("sample", "class"),
        overwrite=True,
    )
    z[...] = x
    return tag


def _exact(tag: str) -> list[float]:
    import shardeval as se

    r = se.inception_score(_paths(tag)["zarr"]).results["is"]
    return [r.inception_score, r.standard_error]


def _exact_and_splits(tag: str) -> list[float]:
    import shardeval as se

    r = se.inception_score(_paths(tag)["zarr"], splits=10).results["is"]
    return [r.inception_score, r.standard_error, r.split_mean, r.split_std]


def _splits_one_pass(tag: str) -> list[float]:
    from shardeval.pipeline.inception_score.score import inception_score
    from shardeval.pipeline.io.stores import open_features

    source = open_features(_paths(tag)["zarr"])
    r = inception_score(source, splits=10, standard_error=False)
    return [r.split_mean or 0.0, r.split_std or 0.0]


def _torch_fidelity(tag: str) -> list[float]:
    import torch
    from torch_fidelity.metric_isc import isc_features_to_metric

    out = isc_features_to_metric(torch.from_numpy(np.load(_paths(tag)["npy"])), splits=10)
    return [out["inception_score_mean"], out["inception_score_std"]]


def _numpy_formula(tag: str) -> list[float]:
    """torch-fidelity's formula in float64 numpy (shuffle by RandomState(2020), splits
    [i·N//10, (i+1)·N//10), mean and std of exp(mean KL))."""
    x = np.load(_paths(tag)["npy"])
    n = len(x)
    x = x[np.random.RandomState(2020).permutation(n)].astype(np.float64)
    z = x - x.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(10):
        part = slice(i * n // 10, (i + 1) * n // 10)
        q = p[part].mean(axis=0, keepdims=True)
        scores.append(float(np.exp((p[part] * (log_p[part] - np.log(q))).sum(axis=1).mean())))
    return [float(np.mean(scores)), float(np.std(scores))]


def _child(name: str, tag: str) -> None:
    """In the child: run one method, print one JSON line (as benchmarks._harness.child)."""
    import json
    import time

    start = time.perf_counter()
    value = METHODS[name](tag)
    seconds = time.perf_counter() - start
    print(
        json.dumps({"method": name, "value": value, "seconds": seconds, "peak_rss_mib": peak_mib()})
    )


def _has_torch_fidelity() -> bool:
    try:
        import torch_fidelity.metric_isc  # noqa: F401
    except ImportError:
        return False
    return True


METHODS: dict[str, Callable[[str], Any]] = {
    "shardeval exact": _exact,
    "shardeval exact+splits": _exact_and_splits,
    "shardeval splits 1 pass": _splits_one_pass,
    "torch-fidelity": _torch_fidelity,
    "numpy (tf formula)": _numpy_formula,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows of logits")
    parser.add_argument("--classes", type=int, default=1008)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        # Imports outside the timed region (shardeval loads names lazily).
        import dask.array  # noqa: F401

        import shardeval.api.verbs
        import shardeval.pipeline.inception_score.score  # noqa: F401

        if args.child[0] == "torch-fidelity":
            import torch_fidelity.metric_isc  # noqa: F401
        _child(*args.child)
        return
    tag = make_data(args.n, args.classes)
    peer = "torch-fidelity" if _has_torch_fidelity() else "numpy (tf formula)"
    methods = [m for m in METHODS if m.startswith("shardeval")] + [peer]
    print(f"# {args.n:,} x {args.classes:,} float32 logits; {cpu_name()};")
    print(f"# medians of {args.repeats} runs, each method in its own process; ratios to {peer}")
    head = f"{'method':<24} {'IS':>9} {'± / std':>9} {'seconds':>8} {'peak MiB':>9}"
    print(f"{head} {'time':>6} {'mem':>6}")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for m in methods:
            runs[m].append(run_child("benchmarks.inception_score", m, tag))
    med = {m: medians(rs) for m, rs in runs.items()}
    ref = med[peer]
    for m, r in med.items():
        value = r["value"]
        headline, spread = (value[2], value[3]) if len(value) == 4 else (value[0], value[1])
        print(
            f"{m:<24} {headline:>9.4f} {spread:>9.4f} {r['seconds']:>8.2f} "
            f"{r['peak_rss_mib']:>9.0f} {r['seconds'] / ref['seconds']:>6.2f} "
            f"{r['peak_rss_mib'] / ref['peak_rss_mib']:>6.2f}"
        )
    exact = med["shardeval exact"]["value"]
    print(f"# IS over all samples {exact[0]:.6f} ± {exact[1]:.6f} (delta method)")


if __name__ == "__main__":
    main()
