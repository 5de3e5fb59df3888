"""Training-loop metrics under ``torch.distributed`` (gloo on CPU), 2 and 3 processes.

Every rank feeds its own batches (unequal counts; a rank without real rows, one without
generated rows, one without any row), then syncs. On every rank FID must hold the same bits, and
equal one process fed every rank's batches in rank order: to 1e-9 relative with float64
products (in fact ~1e-15), to 1e-6 with fp32 products, whose rounding depends on which rows
reach the kernel together; the pair metrics must equal that one process bit for bit. The
ranks are forked from a server that has imported torch and shardeval once (forkserver with
preloaded modules), so that five processes do not each pay the imports; each process has a
deadline, so a hang fails the test instead of stalling the suite.
"""

import multiprocessing
import os
import pickle
import time
from datetime import timedelta

import numpy as np
import pytest

import shardeval as se
import shardeval.api.streaming as streaming

D = 8
#: Per world size, per rank: (real rows, generated rows), fed in batches of BATCH.
SPLITS = {
    2: [(200, 40), (0, 160)],
    3: [(90, 0), (0, 0), (110, 200)],
}
BATCH = 37
#: Blocks and shards of 48 rows, over the rows of several ranks.
PAIR_OPTIONS = {"k": 3, "pr_k": 2, "shard_rows": 48, "scheduler": "sync"}
#: Spill chunks of 16 rows (at d = 8, float32): rows travel to rank 0 in several messages.
SPILL_CHUNK_BYTES = 16 * D * 4
DEADLINE_SECONDS = 80
PRELOAD = [
    "torch",
    "torch.distributed",
    "dask.array",
    "zarr",
    "scipy.linalg",
    "shardeval.api.streaming",
    "shardeval.api.samples",
    "shardeval.pipeline.pairwise.passes",
    "shardeval.pipeline.fid.frechet",
    "shardeval.kernels.moments",
    "tests.api.test_streaming_distributed",
]


def _data():
    rng = np.random.default_rng(2024)
    a = rng.standard_normal((D, D)) / np.sqrt(D)
    real = (rng.standard_normal((200, D)) @ a + 2.0).astype(np.float32)
    gen = (rng.standard_normal((200, D)) @ (1.2 * a) + 2.3).astype(np.float32)
    return real, gen


def _rank_rows(world, rank):
    """This rank's (real, generated) rows: consecutive slices, in rank order."""
    real, gen = _data()
    r0 = sum(n for n, _ in SPLITS[world][:rank])
    g0 = sum(n for _, n in SPLITS[world][:rank])
    nr, ng = SPLITS[world][rank]
    return real[r0 : r0 + nr], gen[g0 : g0 + ng]


def _feed(metric, real, gen):
    for lo in range(0, len(real), BATCH):
        metric.update(real[lo : lo + BATCH], real=True)
    for lo in range(0, len(gen), BATCH):
        metric.update(gen[lo : lo + BATCH])


def worker(rank, world, init_file, out_dir):
    """One rank of the job."""
    import torch.distributed as dist

    streaming.SPILL_CHUNK_BYTES = SPILL_CHUNK_BYTES
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=DEADLINE_SECONDS - 10),
    )
    real, gen = _rank_rows(world, rank)
    out = {}
    for precision in ("fp64", "fp32"):
        fid = se.FID(precision=precision)
        _feed(fid, real, gen)
        own = fid.state_dict()
        fid.sync()
        fid.sync()  # a second sync counts nothing twice
        out[precision] = fid.compute()
        out[f"{precision} state is own"] = fid.state_dict()["gen.n"] == own["gen.n"]
    with se.PairMetrics(**PAIR_OPTIONS) as pairs:
        _feed(pairs, real, gen)
        pairs.sync()
        out["pairs"] = pairs.compute()
        out["folder_after_sync"] = sorted(os.listdir(pairs.folder))
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank-{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Both jobs (2 and 3 processes) at once, their ranks forked from one server that has
    imported what they need."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    started = {}
    for world in SPLITS:
        folder = tmp_path_factory.mktemp(f"world{world}")
        procs = [
            ctx.Process(target=worker, args=(r, world, str(folder / "init"), str(folder)))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        started[world] = (procs, folder)
    deadline = time.monotonic() + DEADLINE_SECONDS
    done = {}

    def results(world):
        if world not in done:
            procs, folder = started[world]
            for p in procs:
                p.join(max(1.0, deadline - time.monotonic()))
            codes = [p.exitcode for p in procs]
            assert codes == [0] * world, f"exit codes {codes} (None: still running at the deadline)"
            done[world] = [
                pickle.loads((folder / f"rank-{r}.pkl").read_bytes()) for r in range(world)
            ]
        return done[world]

    yield results
    for procs, _ in started.values():
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def _single_process(world, monkeypatch):
    """One process fed every rank's batches, in rank order."""
    monkeypatch.setattr(streaming, "SPILL_CHUNK_BYTES", SPILL_CHUNK_BYTES)
    fids = {precision: se.FID(precision=precision) for precision in ("fp64", "fp32")}
    with se.PairMetrics(**PAIR_OPTIONS) as pairs:
        for rank in range(world):
            for metric in (*fids.values(), pairs):
                _feed(metric, *_rank_rows(world, rank))
        return {p: fid.compute() for p, fid in fids.items()}, pairs.compute()


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
@pytest.mark.parametrize("world", [2, 3])
def test_sync_equals_one_process_over_the_concatenation(world, jobs, monkeypatch):
    results = jobs(world)
    fids, pairs = _single_process(world, monkeypatch)
    for precision, tolerance in (("fp64", 1e-9), ("fp32", 1e-6)):
        first, one = results[0][precision], fids[precision]
        assert first.to_dict()["processes"] == world
        assert (first.to_dict()["n_real"], first.to_dict()["n_gen"]) == (200, 200)
        assert abs(float(first) - float(one)) <= tolerance * float(one), precision
        for out in results:
            assert out[precision]["fid"] == first["fid"]  # the same bits on every rank
            assert out[f"{precision} state is own"]
    for out in results:
        got = out["pairs"]
        assert got.to_dict()["processes"] == world
        for name in ("kid", "cmmd", "prdc"):
            assert got[name] == pairs[name], name  # bit for bit
        # Rank 0 removed the rows it received once it had computed: only each rank's own.
        assert set(out["folder_after_sync"]) <= {"gen.zarr", "real.zarr"}
