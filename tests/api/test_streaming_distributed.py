"""Training-loop metrics under ``torch.distributed`` (gloo on CPU), 2 and 3 processes.

Every rank feeds its own batches (unequal counts; a rank of exactly one real or generated row,
a rank without real rows, one without generated rows, one without any row), then syncs. On
every rank FID must hold the same bits, and equal one process fed every rank's batches in rank
order: to 1e-9 relative with float64 products (in fact ~1e-15), to 1e-6 with fp32 products,
whose rounding depends on which rows reach the kernel together; the pair metrics must equal
that one process bit for bit. ``compute()`` without ``sync()`` is the same collective: every
rank gets the value over every rank's rows, never its own by accident (``compute(sync=False)``
gives that, labelled local); ranks with other references or settings are refused on every
rank; a rank that calls ``compute()`` alone gets an error at its deadline, and the job goes on.
The ranks are forked from a server that has imported torch and shardeval once (forkserver with
preloaded modules), so that five processes do not each pay the imports; each process has a
deadline, so a hang fails the test instead of stalling the suite.
"""

import multiprocessing
import os
import pickle
import time

import numpy as np
import pytest

import shardeval as se
import shardeval.api.streaming as streaming
from shardeval.api.streaming import spill
from tests.gloo import join_gloo
from tests.reference import exact_fid, np_stats

D = 8
#: Per world size, per rank: (real rows, generated rows), fed in batches of BATCH.
SPLITS = {
    2: [(199, 40), (1, 160)],
    3: [(90, 1), (0, 0), (110, 199)],
}
BATCH = 37
#: Blocks and shards of 48 rows, over the rows of several ranks.
PAIR_OPTIONS = {"k": 3, "pr_k": 2, "shard_rows": 48, "scheduler": "sync"}
KID_OPTIONS = {"shard_rows": 48, "scheduler": "sync"}
#: The deadline of the rank that calls compute() alone.
ALONE_SECONDS = 2
#: Spill chunks of 16 rows (at d = 8, float32): rows travel to rank 0 in several messages.
SPILL_CHUNK_BYTES = 16 * D * 4
DEADLINE_SECONDS = 120
#: The generated rows of the second of two FIDs are scaled by it: another value.
OTHER_SCALE = 1.5
PRELOAD = [
    "torch",
    "torch.distributed",
    "dask.array",
    "zarr",
    "scipy.linalg",
    "shardeval.api.streaming",
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


#: Per rank of the job of image batches: (real, generated) images.
IMAGES = [(0, 0), (3, 4)]
#: Its deadline: every rank builds and loads the (random) Inception, seconds of CPU each.
IMAGE_DEADLINE_SECONDS = 300


def _rank_images(rank):
    """This rank's (real, generated) uint8 images, (B, 3, H, W)."""
    rng = np.random.default_rng(100 + rank)
    return tuple(rng.integers(0, 256, (n, 3, 21, 19), dtype=np.uint8) for n in IMAGES[rank])


def _pooled(self, x):
    """The Inception's network replaced by pooling (in the ranks and in the test process
    alike): its weights are found and loaded, its preprocessing runs, in milliseconds."""
    import torch

    return torch.nn.functional.adaptive_avg_pool2d(x, (26, 27)).flatten(1)[:, :2048]


def _outcome(call):
    """What ``call()`` returned, or the type and message of what it raised."""
    try:
        return call()
    except Exception as exc:  # the test reads which error it was
        return (type(exc).__name__, str(exc))


def worker(rank, world, init_file, out_dir):
    """One rank of the job."""
    import torch.distributed as dist

    spill.SPILL_CHUNK_BYTES = SPILL_CHUNK_BYTES
    join_gloo(rank, world, init_file, DEADLINE_SECONDS)
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

    # compute() without sync(): the same collective.
    for precision in ("fp64", "fp32"):
        fid = se.FID(precision=precision)
        _feed(fid, real, gen)
        out[f"{precision} compute"] = fid.compute()
        out[f"{precision} local"] = _outcome(lambda fid=fid: fid.compute(sync=False))
    with se.KID(**KID_OPTIONS) as kid:
        _feed(kid, real, gen)
        out["kid compute"] = kid.compute()
        out["kid again"] = kid.compute()  # every rank unchanged: the result kept
        out["kid local"] = _outcome(lambda: kid.compute(sync=False))

    # What must not merge: other references of one shape, other settings.
    reference = _data()[0][:50]
    with se.KID(reference + rank, **KID_OPTIONS) as kid:
        kid.update(_data()[1][:20])
        out["other references"] = _outcome(kid.compute)
    fid = se.FID(precision="fp64" if rank == world - 1 else "fp32")
    _feed(fid, real, gen)
    out["other settings"] = _outcome(fid.compute)

    # The longest deadline the store takes.
    fid = se.FID(sync_timeout=streaming.MAX_SYNC_TIMEOUT_SECONDS)
    _feed(fid, real, gen)
    out["longest deadline"] = float(fid.compute())

    # A rank that calls compute() alone: an error at its deadline; the job goes on.
    fid = se.FID(sync_timeout=ALONE_SECONDS)
    _feed(fid, real, gen)
    if rank == world - 1:
        out["alone"] = _outcome(fid.compute)
    dist.barrier()
    out["after alone"] = fid.compute()

    # Two FIDs whose compute() the ranks call in other orders (rank 0's first meets the others'
    # second), and a FID that meets a KID: refused on every rank; the job goes on, and in one
    # order every rank has each metric's value.
    first, second = se.FID(precision="fp64"), se.FID(precision="fp64")
    _feed(first, real, gen)
    _feed(second, real, gen * OTHER_SCALE)
    order = (first, second) if rank == 0 else (second, first)
    out["other order"] = [_outcome(metric.compute) for metric in order]
    out["one order"] = [float(metric.compute()) for metric in (first, second)]
    fid = se.FID(precision="fp64")
    with se.KID(**KID_OPTIONS) as kid:
        _feed(fid, real, gen)
        _feed(kid, real, gen)
        order = (fid, kid) if rank == 0 else (kid, fid)
        out["other kind"] = [_outcome(metric.compute) for metric in order]
        out["one kind"] = [fid.compute(), kid.compute()]

    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank-{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)


def image_worker(rank, world, init_file, out_dir):
    """One rank of the job of image batches: rank 0 holds no image, so that the rank that
    computes the pair metrics learns how the rows were made from the others."""
    import torch.distributed as dist

    from shardeval.kernels.encoders.inception import FIDInception

    FIDInception.forward = _pooled
    join_gloo(rank, world, init_file, IMAGE_DEADLINE_SECONDS)
    real, gen = _rank_images(rank)
    with se.KID(weights="random", **KID_OPTIONS) as kid:
        fid = se.FID(weights="random")
        for metric in (fid, kid):
            if len(real):
                metric.update(real, real=True)
                metric.update(gen)
        out = {"fid": fid.compute(), "kid": kid.compute()}
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank-{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)


def _started(tmp_path_factory, target, worlds, seconds):
    """Jobs of ``worlds`` processes at once, their ranks forked from one server that has
    imported what they need; yields ``results(world)``, each rank's output once the job
    ended (within ``seconds``)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    started = {}
    for world in worlds:
        folder = tmp_path_factory.mktemp(f"{target.__name__}{world}")
        procs = [
            ctx.Process(target=target, args=(r, world, str(folder / "init"), str(folder)))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        started[world] = (procs, folder)
    deadline = time.monotonic() + seconds
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


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Both jobs (2 and 3 processes) at once."""
    yield from _started(tmp_path_factory, worker, SPLITS, DEADLINE_SECONDS)


@pytest.fixture(scope="module")
def image_job(tmp_path_factory):
    """The job of image batches (2 processes), alone: each rank loads the Inception."""
    yield from _started(tmp_path_factory, image_worker, [2], IMAGE_DEADLINE_SECONDS)


def _single_process(world, monkeypatch):
    """One process fed every rank's batches, in rank order."""
    monkeypatch.setattr(spill, "SPILL_CHUNK_BYTES", SPILL_CHUNK_BYTES)
    fids = {precision: se.FID(precision=precision) for precision in ("fp64", "fp32")}
    with se.PairMetrics(**PAIR_OPTIONS) as pairs, se.KID(**KID_OPTIONS) as kid:
        for rank in range(world):
            for metric in (*fids.values(), pairs, kid):
                _feed(metric, *_rank_rows(world, rank))
        return {p: fid.compute() for p, fid in fids.items()}, pairs.compute(), kid.compute()


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
@pytest.mark.parametrize("world", [2, 3])
def test_sync_equals_one_process_over_the_concatenation(world, jobs, monkeypatch):
    results = jobs(world)
    fids, pairs, _ = _single_process(world, monkeypatch)
    for precision, tolerance in (("fp64", 1e-9), ("fp32", 1e-6)):
        first, one = results[0][precision], fids[precision]
        assert first.to_dict()["processes"] == world
        assert (first.to_dict()["fid"]["fid_n_real"], first.to_dict()["fid"]["fid_n"]) == (200, 200)
        assert abs(float(first) - float(one)) <= tolerance * float(one), precision
        for out in results:
            assert out[precision].to_dict()["fid"] == first.to_dict()["fid"]  # the same bits
            assert out[f"{precision} state is own"]
    for out in results:
        got = out["pairs"]
        assert got.to_dict()["processes"] == world
        for name in ("kid", "cmmd", "prdc"):
            assert got[name] == pairs[name], name  # bit for bit
        # Rank 0 removed the rows it received once it had computed: only each rank's own.
        assert set(out["folder_after_sync"]) <= {"gen.zarr", "real.zarr"}


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
@pytest.mark.parametrize("world", [2, 3])
def test_compute_without_sync_is_the_global_value_on_every_rank(world, jobs, monkeypatch):
    """compute() before sync() returned each rank's own FID (1.3838 on rank 0, 1.3738 on rank
    1, for the same global data). It is a collective now: the value of one process over the
    concatenated rows, on every rank."""
    results = jobs(world)
    fids, _, kid = _single_process(world, monkeypatch)
    real, gen = (
        np.concatenate(rows)
        for rows in zip(*(_rank_rows(world, r) for r in range(world)), strict=True)
    )
    for precision, tolerance in (("fp64", 1e-9), ("fp32", 1e-6)):
        exact = exact_fid(*np_stats(real), *np_stats(gen))
        for rank, out in enumerate(results):
            got = out[f"{precision} compute"]
            assert got.to_dict()["processes"] == world
            assert (got.to_dict()["fid"]["fid_n_real"], got.to_dict()["fid"]["fid_n"]) == (200, 200)
            assert "local" not in got.to_dict()
            assert got.to_dict()["fid"] == results[0][f"{precision} compute"].to_dict()["fid"]
            assert abs(float(got) - float(fids[precision])) <= tolerance * float(fids[precision])
            assert abs(float(got) - exact) <= tolerance * exact
            if precision == "fp32":  # the longest deadline the store takes: the same value
                assert abs(out["longest deadline"] - exact) <= tolerance * exact
            # compute(sync=False): this rank's rows alone, and the report says so.
            local = out[f"{precision} local"]
            n_real, n_gen = SPLITS[world][rank]
            if min(n_real, n_gen) < 2:  # too few rows here alone: an error, not a number
                assert local[0] in ("ShapeError", "OptionError"), local
                continue
            assert local.to_dict()["local"] == {"rank": rank, "world_size": world}
            assert local.to_dict()["processes"] == 1
            assert (local.to_dict()["fid"]["fid_n_real"], local.to_dict()["fid"]["fid_n"]) == (
                n_real,
                n_gen,
            )
            assert "local" in local.summary().splitlines()[0].lower()
    for out in results:
        for key in ("kid compute", "kid again"):
            assert out[key]["kid"] == kid["kid"], key  # bit for bit
            assert out[key].to_dict()["processes"] == world
            assert "local" not in out[key].to_dict()
    # A rank of fewer than 2 rows on a side cannot compute KID alone; the others are
    # labelled local.
    for rank, out in enumerate(results):
        local = out["kid local"]
        if min(SPLITS[world][rank]) < 2:
            assert local[0] in ("ShapeError", "OptionError"), local
        else:
            assert local.to_dict()["local"] == {"rank": rank, "world_size": world}
            assert local.to_dict()["processes"] == 1


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
@pytest.mark.parametrize("world", [2, 3])
def test_other_references_and_settings_are_refused_on_every_rank(world, jobs):
    """Under 3 ranks each se.KID(reference=A + rank) gave KID against rank 0's reference on
    every rank: only the references' shapes were compared."""
    for out in jobs(world):
        kind, message = out["other references"]
        assert (kind, "reference" in message) == ("OptionError", True), message
        kind, message = out["other settings"]
        assert (kind, "precision" in message) == ("OptionError", True), message


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
@pytest.mark.parametrize("world", [2, 3])
def test_a_rank_that_computes_alone_fails_at_its_deadline(world, jobs):
    results = jobs(world)
    kind, message = results[-1]["alone"]
    assert kind == "EngineError", message
    assert "\n" not in message
    for words in ("sync", "every rank", f"{ALONE_SECONDS:g} s", "sync=False"):
        assert words in message, message
    # The job goes on: the next compute() on every rank is the global value.
    for out in results:
        assert out["after alone"].to_dict()["fid"] == results[0]["after alone"].to_dict()["fid"]
        assert out["after alone"].to_dict()["processes"] == world


@pytest.mark.timeout(2 * IMAGE_DEADLINE_SECONDS)
def test_image_rows_say_how_they_were_made_on_every_rank(image_job, monkeypatch, tmp_path):
    """Training-loop metrics fed images reported no provenance ('gen': None for FID; for KID
    the network alone, encoder, resize and weights None). Under sync every rank (a rank
    without rows too) reports what se.fid and se.kid report for every rank's images, and the
    values over them."""
    from shardeval.kernels.encoders.inception import FIDInception

    monkeypatch.setattr(FIDInception, "forward", _pooled)
    real, gen = (
        np.concatenate(side)
        for side in zip(*(_rank_images(r) for r in range(len(IMAGES))), strict=True)
    )
    options = {"weights": "random", "cache_root": str(tmp_path)}
    once = {"fid": se.fid(real, gen, **options), "kid": se.kid(real, gen, **options, **KID_OPTIONS)}
    for rank, out in enumerate(image_job(len(IMAGES))):
        for name, want in once.items():
            got = out[name]
            assert got.to_dict()["features_made_by"] == want.to_dict()["features_made_by"], rank
            assert want.to_dict()["features_made_by"]["gen"]["weights_status"] == "random"
            made = [line for line in want.summary().splitlines() if " made by " in line]
            assert made == [line for line in got.summary().splitlines() if " made by " in line]
            smoke = [w for w in want.to_dict()["warnings"] if "random weights" in w]
            assert smoke, want.to_dict()["warnings"]
            assert set(smoke) <= set(got.to_dict()["warnings"]), (rank, name)
            assert float(got) == pytest.approx(float(want), rel=1e-6, abs=1e-12), (rank, name)


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
@pytest.mark.parametrize("world", [2, 3])
def test_metrics_met_in_other_orders_are_refused_on_every_rank(world, jobs, monkeypatch):
    """Two FIDs whose compute() rank 0 called in one order and the other ranks in the other
    gathered rank 0's rows of one with the others' rows of the other, and every rank returned
    that FID (exit code 0). A metric is known across ranks by its kind and the order in which
    its process made it: a mismatch is refused on every rank, in one line; the metrics keep
    their rows, and in one order they give the value over every rank's rows."""
    results = jobs(world)
    _, _, kid = _single_process(world, monkeypatch)
    real, gen = (
        np.concatenate(rows)
        for rows in zip(*(_rank_rows(world, r) for r in range(world)), strict=True)
    )
    scaled = (gen * np.float32(OTHER_SCALE)).astype(np.float32)  # as the ranks scaled theirs
    exact = [exact_fid(*np_stats(real), *np_stats(g)) for g in (gen, scaled)]
    assert abs(exact[0] - exact[1]) > 0.1 * exact[0]  # two values, told apart below
    for out in results:
        for key in ("other order", "other kind"):
            for outcome in out[key]:
                assert isinstance(outcome, tuple), (key, outcome)  # an error, not a value
                kind, message = outcome
                assert kind == "OptionError", message
                assert "\n" not in message
                assert "same order" in message, message
        for got, want in zip(out["one order"], exact, strict=True):
            assert abs(got - want) <= 1e-9 * want
        fid, got_kid = out["one kind"]
        assert abs(float(fid) - exact[0]) <= 1e-9 * exact[0]
        assert got_kid["kid"] == kid["kid"]  # bit for bit


#: Per world size, per rank: (real rows, generated rows) of the job in which ranks hold one
#: row on a side: 101 rows a side in all, the one-row rank last, in the middle, or first.
ONE_ROW_SPLITS = {
    2: [(100, 100), (1, 1)],
    3: [(60, 1), (1, 0), (40, 100)],
}


def one_row_worker(rank, world, init_file, out_dir):
    """One rank of the job of one-row ranks: se.FID's public methods only (update, compute,
    the report), so that the check holds whatever the training-loop classes are made of."""
    import torch.distributed as dist

    join_gloo(rank, world, init_file, DEADLINE_SECONDS)
    real, gen = _data()
    r0 = sum(n for n, _ in ONE_ROW_SPLITS[world][:rank])
    g0 = sum(n for _, n in ONE_ROW_SPLITS[world][:rank])
    n_real, n_gen = ONE_ROW_SPLITS[world][rank]
    fid = se.FID(precision="fp64")
    _feed(fid, real[r0 : r0 + n_real], gen[g0 : g0 + n_gen])
    report = fid.compute()
    out = {"value": float(report), "report": report.to_dict()}
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank-{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)


@pytest.fixture(scope="module")
def one_row_jobs(tmp_path_factory):
    """Both jobs of one-row ranks (2 and 3 processes) at once."""
    yield from _started(tmp_path_factory, one_row_worker, ONE_ROW_SPLITS, DEADLINE_SECONDS)


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
@pytest.mark.parametrize("world", [2, 3])
def test_a_rank_of_one_row_counts_in_the_synced_fid(world, one_row_jobs):
    """A rank that holds exactly one real or generated row adds it to the gathered moments
    (a merge that left out ranks of fewer than two rows reported n = 100 of 101 and the FID of
    the other rows): every rank reports 101 rows a side and the float64 FID of the
    concatenated rows."""
    real, gen = _data()
    n_real, n_gen = (sum(split[i] for split in ONE_ROW_SPLITS[world]) for i in (0, 1))
    assert (n_real, n_gen) == (101, 101)
    exact = exact_fid(*np_stats(real[:n_real]), *np_stats(gen[:n_gen]))
    for rank, out in enumerate(one_row_jobs(world)):
        fields = out["report"]["fid"]
        assert (fields["fid_n_real"], fields["fid_n"]) == (101, 101), rank
        assert out["report"]["processes"] == world
        assert abs(out["value"] - exact) <= 1e-9 * exact, (rank, out["value"], exact)
