"""Scale on a real cluster: a 400-shard graph on a 2-worker LocalCluster, data generated on the
fly by the workers (no disk), per-worker peak memory, the bytes the merge tree moves, and the
scheduler's overhead per shard.

Usage:
    python -m benchmarks.cluster_scale [--n 2000000] [--d 2048] [--shards 400] [--split-every 4]
"""

from __future__ import annotations

import argparse
import time

from distributed import Client, LocalCluster

from benchmarks._harness import cpu_name, peak_mib
from shardeval.pipeline import Engine, FeatureSource, feature_moments
from shardeval.pipeline.io.synthetic import gaussian_features


def _sent_bytes(dask_worker) -> int:  # type: ignore[no-untyped-def]
    return int(dask_worker.transfer_outgoing_bytes_total)


def run(n: int, d: int, shards: int, split_every: int, memory_limit: str) -> dict[str, float]:
    rows = n // shards
    source = FeatureSource("synthetic", gaussian_features(rows * shards, d, shard_rows=rows))
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        engine = Engine(cluster.scheduler_address)
        start = time.perf_counter()
        ((moments, _),) = feature_moments([source], engine=engine, split_every=split_every)
        seconds = time.perf_counter() - start
        peaks = client.run(peak_mib)  # each worker process's own VmHWM
        sent = sum(client.run(_sent_bytes).values())
    states_moved = sent / ((d * d + d) * 8)  # the metric counts in-memory bytes
    wire_mib = states_moved * (d * (d + 1) / 2 + d) * 8 / 2**20  # pickles hold half of m2
    return {
        "seconds": seconds,
        "per_shard_ms": 1e3 * seconds / shards,
        "worker_peak_mib": max(peaks.values()),
        "states_moved": states_moved,
        "wire_mib": wire_mib,
        "n": moments.n,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=400)
    parser.add_argument("--split-every", type=int, default=4)
    parser.add_argument("--memory-limit", default="3GiB")
    args = parser.parse_args(argv)

    print(f"# {cpu_name()}; a 2-worker LocalCluster, one thread each")
    # Scheduler overhead: the same 400-shard graph with almost no arithmetic per shard.
    tiny = run(args.shards * 10, 4, args.shards, args.split_every, args.memory_limit)
    print(
        f"scheduler overhead: {tiny['per_shard_ms']:.2f} ms per shard "
        f"({args.shards} shards of 10 x 4 on 2 worker processes)"
    )
    big = run(args.n, args.d, args.shards, args.split_every, args.memory_limit)
    block_mib = args.n // args.shards * args.d * 4 / 2**20
    print(
        f"{big['n']:,} x {args.d} in {args.shards} shards ({block_mib:.0f} MiB each), "
        f"fan-in {args.split_every}: {big['seconds']:.1f} s, "
        f"{big['per_shard_ms']:.0f} ms per shard"
    )
    print(
        f"worker peak RSS {big['worker_peak_mib']:.0f} MiB (limit {args.memory_limit}); "
        f"merge traffic between workers: {big['states_moved']:.0f} states, "
        f"{big['wire_mib']:.0f} MiB on the wire; the "
        f"{big['n'] * args.d * 4 / 2**30:.1f} GiB of features never move"
    )


if __name__ == "__main__":
    main()
