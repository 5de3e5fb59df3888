"""A real Dask cluster: separate scheduler/worker processes, a worker killed mid-graph, every
worker gone, and the CLI starting a cluster from a spec."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from distributed import Client

from shardeval.pipeline import Engine, FeatureSource, Gaussian, feature_moments, frechet_distance
from shardeval.pipeline.errors import ClusterError
from shardeval.pipeline.io.synthetic import gaussian_features
from shardeval.pipeline.likelihood.ess import ess_of
from shardeval.workflows.cli import main

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def _sources(shards=120, rows=500, d=64):
    """A pair generated on the fly by the workers: many small shards, no disk."""
    return [
        FeatureSource(
            f"synthetic-{seed}",
            gaussian_features(shards * rows, d, shard_rows=rows, seed=seed, mean=0.1 * seed),
        )
        for seed in (1, 2)
    ]


def _fid(sources, **kw):
    (a, _), (b, _) = feature_moments(sources, **kw)
    return frechet_distance(Gaussian.from_moments(a), Gaussian.from_moments(b)).fid


@pytest.fixture
def processes(tmp_path):
    """`dask scheduler` and `dask worker` started as separate processes on 127.0.0.1."""
    started = []

    def start(*args):
        proc = subprocess.Popen(
            [DASK, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    def cluster(workers=2, nanny=True):
        file = str(tmp_path / "scheduler.json")
        start(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            file,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(file):
            if time.monotonic() > deadline:
                raise TimeoutError("dask scheduler did not start")
            time.sleep(0.1)
        time.sleep(0.3)
        with open(file) as fh:
            address = json.load(fh)["address"]
        for _ in range(workers):
            start(
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--nanny" if nanny else "--no-nanny",
                "--host",
                "127.0.0.1",
            )
        with Client(address) as client:
            client.wait_for_workers(workers, timeout=60)
        return address

    yield cluster
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_separate_scheduler_and_worker_processes(processes):
    address = processes(workers=2)
    sources = _sources(shards=40)
    assert _fid(sources, engine=Engine(address)) == pytest.approx(_fid(sources), rel=1e-9)


def test_worker_killed_mid_graph_gives_the_same_result(processes):
    address = processes(workers=2, nanny=True)
    sources = _sources()
    with Client(address) as client:
        pids = list(client.run(os.getpid).values())
    killed = []

    def progress(done, total):
        if not killed and done >= total // 4:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(done)

    got = _fid(sources, engine=Engine(address), progress=progress)
    assert killed, "the kill never happened"
    assert killed[0] < sum(s.shards for s in sources)  # it landed mid-graph
    assert got == pytest.approx(_fid(sources), rel=1e-9)


def test_every_worker_gone_fails_with_one_clear_error(processes):
    address = processes(workers=2, nanny=False)
    with Client(address) as client:
        pids = list(client.run(os.getpid).values())

    def progress(done, total):
        if done >= 1:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"every worker .* is gone"):
        _fid(_sources(shards=400), engine=Engine(address, worker_timeout=3), progress=progress)
    assert time.monotonic() - start < 60


def test_unreachable_scheduler():
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        _fid(_sources(shards=2), engine=Engine("tcp://127.0.0.1:1", connect_timeout=2))


def test_nll_ess_on_a_cluster_match_threads(processes, tmp_path, rng):
    import numpy as np

    lw = rng.normal(size=20_000) * 3
    np.save(tmp_path / "lw.npy", lw)
    from shardeval.pipeline import open_features

    source = open_features(str(tmp_path / "lw.npy"), ndims=(1,), shard_rows=1000)
    address = processes(workers=2)
    local, remote = ess_of(source), ess_of(source, engine=Engine(address))
    assert remote.ess == pytest.approx(local.ess, rel=1e-9)
    assert remote.khat == pytest.approx(local.khat, rel=1e-9)


def test_pair_metrics_and_parzen_on_a_cluster_equal_threads(processes, tmp_path, rng):
    import numpy as np

    from shardeval.pipeline import open_features
    from shardeval.pipeline.likelihood.parzen import nll_parzen
    from shardeval.pipeline.pairwise.passes import CMMDParams, KIDParams, PRDCParams, sample_metrics

    x = rng.normal(size=(900, 16)).astype(np.float32)
    y = (1.1 * rng.normal(size=(700, 16)) + 0.2).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    sx, sy = (open_features(str(tmp_path / f), shard_rows=200) for f in ("x.npy", "y.npy"))
    address = processes(workers=2)

    def metrics(engine):
        params = dict(kid=KIDParams(), cmmd=CMMDParams(), prdc=PRDCParams())
        return sample_metrics(sx, sy, engine=engine, block_rows=250, **params)

    local, remote = metrics(Engine()), metrics(Engine(address))
    # A tree of merges on the cluster, a chain locally: sums agree to rounding, decisions exactly.
    assert remote["kid"].kid == pytest.approx(local["kid"].kid, rel=1e-9)
    assert remote["cmmd"].cmmd == pytest.approx(local["cmmd"].cmmd, rel=1e-9)
    assert remote["prdc"] == local["prdc"]
    here, there = nll_parzen(sx, sy, 1.5), nll_parzen(sx, sy, 1.5, engine=Engine(address))
    assert there.nll == pytest.approx(here.nll, rel=1e-12)


def test_cli_cluster_spec_dashboard_and_performance_report(tmp_path, capsys, feature_pair):
    real_path, _, gen_path, _ = feature_pair
    spec = tmp_path / "local.yaml"
    spec.write_text(
        "backend: local\noptions:\n  n_workers: 2\n  threads_per_worker: 1\n"
        "  processes: true\n  dashboard_address: ':0'\n"
    )
    report = tmp_path / "perf.html"
    code = main(
        [
            "fid",
            real_path,
            gen_path,
            "--cluster",
            str(spec),
            "--shard-rows",
            "100",
            "--performance-report",
            str(report),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["engine"]["scheduler"] == "distributed"
    assert "shardeval: dashboard: http://" in err
    assert report.exists()
    assert report.stat().st_size > 1000
    code = main(["fid", real_path, gen_path, "--performance-report", str(report), "-q"])
    assert code == 2
    assert "needs a distributed cluster" in capsys.readouterr().err


def _scheduler_pid(address):
    with Client(address) as client:
        return client.run_on_scheduler(os.getpid)


@pytest.mark.timeout(300)
def test_scheduler_killed_mid_run_is_one_clear_error(processes):
    # It was a FuturesCancelledError or CommClosedError traceback, or "error: in <TCP (closed)
    # ConnectionPool.ncores ...>" after Dask's own logged traceback.
    from shardeval.pipeline.core.engine import SchedulerLostError

    address = processes(workers=1)
    pid = _scheduler_pid(address)
    killed = []

    def progress(done, total):
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(done)

    with pytest.raises(SchedulerLostError, match=r"went away|was cancelled") as caught:
        _fid(_sources(shards=400), engine=Engine(address), progress=progress)
    assert killed
    assert address in str(caught.value)
    assert caught.value.operating_failure


@pytest.mark.timeout(300)
def test_cli_scheduler_killed_mid_run_is_one_line_and_exit_1(processes, tmp_path):
    import threading

    from shardeval.pipeline.io.synthetic import write_features

    stores = []
    for seed in (1, 2):
        stores.append(str(tmp_path / f"f{seed}.zarr"))
        x = gaussian_features(200 * 500, 64, shard_rows=500, seed=seed)
        write_features(stores[-1], x, chunk_rows=500)
    address = processes(workers=1)
    pid = _scheduler_pid(address)
    exe = os.path.join(os.path.dirname(sys.executable), "shardeval")
    proc = subprocess.Popen(
        [exe, "fid", *stores, "--scheduler", address, "--shard-rows", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines, connected = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("shardeval: dashboard:"):
                connected.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert connected.wait(120), "".join(lines)
        os.kill(pid, signal.SIGKILL)  # mid-run: 400 shards on one worker thread
        assert proc.wait(timeout=120) == 1, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    reader.join(30)
    err = "".join(lines)
    assert "Traceback" not in err
    assert all(line.startswith(("shardeval:", "shards:")) for line in lines), err
    errors = [line for line in lines if line.startswith("shardeval: error:")]
    assert len(errors) == 1, err
    assert f"the Dask scheduler at {address} went away" in errors[0], err


@pytest.mark.timeout(300)
def test_cli_extract_reports_a_lost_scheduler_as_the_measurements_do(
    processes, tmp_path, rng, weights, capfd, monkeypatch
):
    # extract asked the cluster about GPUs on a client of its own: a scheduler lost then gave
    # Dask's "Failed to reconnect" log line, a 30 s wait and "cannot reach" with exit 2.
    import dask
    import distributed
    import numpy as np

    images = tmp_path / "images.npy"
    np.save(images, rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8))
    address = processes(workers=1)
    pid = _scheduler_pid(address)
    capfd.readouterr()
    asked = distributed.Client.scheduler_info

    def scheduler_killed(self, *args, **kwargs):
        info = asked(self, *args, **kwargs)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        return info

    monkeypatch.setattr(distributed.Client, "scheduler_info", scheduler_killed)
    argv = ["extract", str(images), "-o", str(tmp_path / "f.zarr"), "--weights", weights]
    with dask.config.set({"distributed.comm.timeouts.connect": "5s"}):
        code = main([*argv, "--scheduler", address])
    err = capfd.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert all(line.startswith(("shardeval:", "images:")) for line in lines), err
    errors = [line for line in lines if line.startswith("shardeval: error:")]
    assert len(errors) == 1, err
    assert f"the Dask scheduler at {address} went away" in errors[0], err


def test_a_kernel_check_that_failed_on_a_worker_is_in_the_clients_report(
    processes, feature_pair, capsys
):
    # The warning went to the worker's log only; the report said nothing of the torch path.
    real_path, _, gen_path, _ = feature_pair
    address = processes(workers=2)

    def fail_a_kernel_check_here() -> None:
        """On a worker: what a failed first-use check leaves (its verdict, its warning in the
        worker's log). Defined here, so that it travels by value: workers cannot import the
        tests package."""
        import torch

        from shardeval.kernels import _selfcheck

        _selfcheck._fail("moments", torch.device("cpu"), _selfcheck.Verdict(False, "wrong values"))

    with Client(address) as client:
        (worker, *_) = client.scheduler_info()["workers"]
        client.run(fail_a_kernel_check_here, workers=[worker])
    code = main(["fid", real_path, gen_path, "--scheduler", address, "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (relayed,) = [w for w in json.loads(out)["warnings"] if "Triton kernel 'moments'" in w]
    assert worker in relayed
    assert "wrong values" in relayed
    assert "torch path" in relayed
    assert err.count("Triton kernel 'moments'") == 1  # and once on stderr
