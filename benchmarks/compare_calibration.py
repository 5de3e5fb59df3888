"""Calibration of ``se.compare``'s standard error of a difference, through the public function.

Each replicate draws a reference N(0, I) and two generated sets, A ~ 1.3·N(0, I) + 0.5 and
B ~ 1.2·N(0, I) + 0.5 (fixed distributions near each other, so that the reference moves both
values alike), all of ``--n`` rows at ``--d`` features, and calls
``se.compare(ref, a, b, "fid,kid")``. Over the replicates it prints, per metric and size, the
mean reported standard error of the difference over the differences' standard deviation (1 is
calibrated), the share of 95 % intervals that cover the differences' mean, and the same two
numbers for the two values taken as independent (√(SE_a² + SE_b²), with the metric's own
interval: t with G − 1 degrees of freedom for FID, normal for KID).

Usage:
    python -m benchmarks.compare_calibration [--n 200 500] [--d 4] [--replicates 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _replicates(n: int, d: int, count: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    import shardeval as se

    rng = np.random.default_rng(seed)
    fields = ("difference", "standard_error", "low", "high", "a_standard_error", "b_standard_error")
    out: dict[str, dict[str, list[float]]] = {m: {f: [] for f in fields} for m in ("fid", "kid")}
    for _ in range(count):
        ref = rng.normal(size=(n, d))
        a = 1.3 * rng.normal(size=(n, d)) + 0.5
        b = 1.2 * rng.normal(size=(n, d)) + 0.5
        report = se.compare(ref, a, b, "fid,kid", scheduler="sync")
        for metric, values in out.items():
            result = report[metric]
            for name in fields:
                values[name].append(getattr(result, name))
    return {m: {k: np.asarray(v) for k, v in values.items()} for m, values in out.items()}


def main() -> None:
    from scipy import stats

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--d", type=int, default=4)
    parser.add_argument("--replicates", type=int, default=1000)
    args = parser.parse_args()
    print("metric      n  replicates  SE ratio  coverage  | as independent: SE ratio  coverage")
    for n in args.n:
        start = time.perf_counter()
        runs = _replicates(n, args.d, args.replicates, seed=n)
        for metric, r in runs.items():
            differences = r["difference"]
            sd, mean = differences.std(ddof=1), differences.mean()
            covered = np.mean((r["low"] <= mean) & (mean <= r["high"]))
            independent = np.hypot(r["a_standard_error"], r["b_standard_error"])
            q = stats.t.ppf(0.975, 9) if metric == "fid" else stats.norm.ppf(0.975)
            independent_covered = np.mean(np.abs(differences - mean) <= q * independent)
            print(
                f"{metric:<6} {n:>6}  {args.replicates:>10}  {r['standard_error'].mean() / sd:8.3f}"
                f"  {covered:8.3f}  |                 {independent.mean() / sd:8.3f}"
                f"  {independent_covered:8.3f}"
            )
        print(f"  ({time.perf_counter() - start:.0f} s for n = {n})")


if __name__ == "__main__":
    main()
