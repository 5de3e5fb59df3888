"""FID with its interval (``ci``) against FID alone, side by side in one run.

Both read the same float32 (N, d) pair of ``.npy`` files through :func:`shardeval.fid` on the
threaded scheduler, alternating, ``--repeats`` times each; the medians and their ratio are
printed, with the machine's CPU. With the interval, the one read of each side gives G groups'
moments per shard (their merge is the side's moments), and G leave-one-group-out Fréchet
distances (one d × d eigenvalue problem each) run as G tasks side by side. Memory: the group
states hold G × d² float64 per side per reducing thread; after the timed runs, one more run of
each measures its peak of traced allocations (``tracemalloc``: numpy's arrays included).

Usage:
    python -m benchmarks.fid_interval [--n 50000] [--d 2048] [--groups 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc

import numpy as np

from benchmarks._harness import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import shardeval as se

    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="fid-interval-")
    paths = []
    for name, shift in (("real", 0.0), ("gen", 0.1)):
        path = os.path.join(folder, f"{name}.npy")
        np.save(path, (rng.standard_normal((args.n, args.d), dtype=np.float32) + shift))
        paths.append(path)
    times: dict[str, list[float]] = {"fid": [], "fid+ci": []}
    for _ in range(args.repeats):
        for label, options in (("fid", {}), ("fid+ci", {"ci": 0.95, "ci_groups": args.groups})):
            start = time.perf_counter()
            report = se.fid(*paths, **options)
            times[label].append(time.perf_counter() - start)
            if options:
                section = report.to_dict()["fid"]
                interval = (section["fid_ci_low"], section["fid_ci_high"])
    peaks = {}
    for label, options in (("fid", {}), ("fid+ci", {"ci": 0.95, "ci_groups": args.groups})):
        tracemalloc.start()
        se.fid(*paths, **options)
        peaks[label] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    plain, with_ci = (statistics.median(times[k]) for k in ("fid", "fid+ci"))
    print(f"{args.n:,} x {args.d:,} per side, {args.groups} groups, {cpu_name()}")
    print(f"  fid      median {plain:.2f} s  {times['fid']}")
    print(f"  fid+ci   median {with_ci:.2f} s  {times['fid+ci']}  (interval {interval})")
    print(f"  ratio {with_ci / plain:.2f}")
    print(f"  peak traced memory: fid {peaks['fid']:,.0f} MiB, fid+ci {peaks['fid+ci']:,.0f} MiB")


if __name__ == "__main__":
    main()
