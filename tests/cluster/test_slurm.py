"""The SLURM spec on a real one-node SLURM: ``fid``, ``kid`` and ``run`` with ``--cluster`` start
``sbatch`` worker jobs and give the threaded scheduler's numbers; a worker job cancelled with
``scancel`` mid-run changes nothing; the ``scrontab`` example's entry runs as a batch job and its
run lands in the history.

The spec is ``cluster/slurm-cpu.yaml`` with a site's options laid over it
(:func:`tests.cluster.slurm_fixture.site_spec`), as a user adapts it.
"""

import json
import math
import os
import shlex
import sys
import time

import pytest
from distributed import Client

from shardeval.pipeline import Engine
from shardeval.pipeline.core.clusters import running_cluster
from shardeval.pipeline.io.synthetic import gaussian_features, write_features
from shardeval.workflows.cli import main
from shardeval.workflows.history import History
from tests.cluster.slurm_fixture import PARTITION, site_spec
from tests.cluster.test_distributed import _fid, _sources

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

CLUSTER = os.path.join(os.path.dirname(__file__), "..", "..", "cluster")
#: Report keys that say how and when a result was computed, not what it is.
_HOW = {"engine", "seconds", "created", "versions", "settings"}


def _leaves(report, prefix=""):
    """A JSON report's values by path, without the keys that describe the run."""
    out = {}
    items = report.items() if isinstance(report, dict) else enumerate(report)
    for key, value in items:
        if prefix == "" and key in _HOW:
            continue
        path = f"{prefix}/{key}"
        if isinstance(value, dict | list):
            out.update(_leaves(value, path))
        else:
            out[path] = value
    return out


def assert_same_numbers(got, want):
    """Equal reports: integers, strings and flags exactly, floats to 1e-9 (a merge tree on the
    cluster, a chain of merges on threads)."""
    got, want = _leaves(got), _leaves(want)
    assert got.keys() == want.keys()
    floats = [k for k, v in want.items() if isinstance(v, float)]
    assert {k: got[k] for k in floats} == pytest.approx(
        {k: want[k] for k in floats}, rel=1e-9, abs=1e-12
    )
    assert {k: got[k] for k in got if k not in floats} == {
        k: want[k] for k in want if k not in floats
    }


def _report(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _worker_jobs(slurm):
    return {i for i, (name, _) in slurm.all_jobs().items() if name == "dask-worker"}


def _joined_logs(folder):
    """Worker logs (one per job) that say the worker registered with the scheduler."""
    logs = sorted((folder / "logs").glob("dask-worker-*.err"))
    return [p for p in logs if "Registered to" in p.read_text(errors="replace")]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm-stores")
    paths = []
    for seed, mean in ((1, 0.0), (2, 0.1)):
        paths.append(str(folder / f"f{seed}.zarr"))
        x = gaussian_features(6000, 32, shard_rows=500, seed=seed, mean=mean)
        write_features(paths[-1], x, chunk_rows=500)
    return paths


# One worker job where one shows the point: each worker imports torch on start, and the test
# machine's 2 cores are shared.
@pytest.mark.parametrize(
    ("argv", "scale"),
    [
        pytest.param(["fid", "--shard-rows", "500"], 2, id="fid"),
        pytest.param(["kid", "--shard-rows", "1000"], 1, id="kid"),
    ],
)
def test_cli_on_slurm_worker_jobs_equals_threads(slurm, tmp_path, stores, capsys, argv, scale):
    command, *options = argv
    threads = _report(capsys, [command, *stores, *options, "--json", "-q"])
    before = _worker_jobs(slurm)
    spec = site_spec(tmp_path, scale=scale)
    on_slurm = _report(capsys, [command, *stores, *options, "--json", "-q", "--cluster", spec])
    assert on_slurm["engine"]["scheduler"] == "distributed"
    assert len(_worker_jobs(slurm) - before) == scale  # sbatch jobs, one worker each
    assert _joined_logs(tmp_path)  # a worker in a SLURM job did join
    assert_same_numbers(on_slurm, threads)
    assert slurm.wait_for_empty_queue() == {}  # closing the cluster cancelled its jobs


JOB = """
[job]
name = "nightly"
history = "{history}"

[reference]
store = "{real}"

[[entries]]
glob = "ckpt/*/features.zarr"

[metrics.fid]
[metrics.nll_gaussian]
{engine}
"""


def _job_folder(folder, real):
    """Two checkpoints' features beside a job file's folder."""
    for step in (1000, 2000):
        path = folder / "ckpt" / f"step-{step}" / "features.zarr"
        path.parent.mkdir(parents=True)
        x = gaussian_features(3000, 32, shard_rows=500, seed=step, mean=step * 1e-4)
        write_features(str(path), x, chunk_rows=500)


def _rows(history):
    """History rows without the times they were written at (``created``, ``METRIC.created``)."""
    return [
        {k: v for k, v in row.items() if k != "created" and not k.endswith(".created")}
        for row in History(history).table()
    ]


def test_run_job_on_slurm_worker_jobs_equals_threads(slurm, tmp_path, stores, capsys):
    _job_folder(tmp_path, stores[0])
    spec = site_spec(tmp_path, scale=1)
    for name, engine in (("threads", ""), ("slurm", f'[engine]\ncluster = "{spec}"')):
        text = JOB.format(history=f"runs/{name}.zarr", real=stores[0], engine=engine)
        (tmp_path / f"{name}.toml").write_text(text)
    before = _worker_jobs(slurm)
    assert main(["run", str(tmp_path / "slurm.toml"), "--quiet"]) == 0, capsys.readouterr().err
    assert len(_worker_jobs(slurm) - before) == 1
    assert main(["run", str(tmp_path / "threads.toml"), "--quiet"]) == 0
    got, want = _rows(tmp_path / "runs/slurm.zarr"), _rows(tmp_path / "runs/threads.zarr")
    assert [r["name"] for r in got] == ["step-1000", "step-2000"]
    for a, b in zip(got, want, strict=True):
        assert_same_numbers(a, b)
    assert slurm.wait_for_empty_queue() == {}


def test_worker_job_cancelled_mid_run_gives_the_same_numbers(slurm, tmp_path):
    sources = _sources()
    total = sum(s.shards for s in sources)
    spec = site_spec(tmp_path, scale=2)
    cancelled = []
    with running_cluster(spec) as address:
        with Client(address) as client:
            client.wait_for_workers(2, timeout=120)
        running = sorted(i for i, state in slurm.jobs().items() if state == "RUNNING")
        assert len(running) == 2

        def progress(done, _total):
            if not cancelled and done >= total // 4:
                slurm.run("scancel", running[0])
                cancelled.append(done)

        got = _fid(sources, engine=Engine(address), progress=progress)
        with Client(address) as client:
            deadline = time.monotonic() + 30
            while len(left := client.scheduler_info()["workers"]) > 1:
                assert time.monotonic() < deadline, left
                time.sleep(0.2)
    assert cancelled, "the scancel never happened"
    assert cancelled[0] < total  # it landed mid-run
    assert len(left) == 1  # the cancelled job's worker is gone; the other finished the run
    assert slurm.wait_for_state(running[0], "CANCELLED") == "CANCELLED"
    assert got == pytest.approx(_fid(sources), rel=1e-9)
    assert slurm.wait_for_empty_queue() == {}


def _scrontab_entry():
    """The scrontab example: its ``#SCRON`` options and its one entry (five time fields and the
    command), read as scrontab reads them."""
    options, entries = [], []
    with open(os.path.join(CLUSTER, "schedule", "scrontab")) as fh:
        for line in fh:
            if line.startswith("#SCRON"):
                options += shlex.split(line[len("#SCRON") :])
            elif line.strip() and not line.startswith("#"):
                entries.append(line.split(None, 5))
    (entry,) = entries
    return options, entry[:5], entry[5].strip()


def _site_options(options):
    """The example's #SCRON options with this site's laid over: its partition, one core, no
    GPU (the test node has none); the walltime is kept (it fits the partition)."""
    site, words = [], iter(options)
    for word in words:
        if word == "-p":
            site += ["-p", PARTITION]
            next(words)
        elif word == "-c":
            site += ["-c", "1"]
            next(words)
        elif not word.startswith("--gres"):
            site.append(word)
    return site


def test_scrontab_example_runs_as_a_batch_job_and_lands_in_the_history(slurm, tmp_path, stores):
    # The real `scrontab` is not in Debian 12's slurm-client 22.05.8 (the package ships sacct …
    # strigger but not scrontab; slurmctld and libslurm have the crontab RPCs, and
    # `ScronParameters=enable` is set). So this runs the nearest thing: the example's entry as
    # the batch job scrontab would make of it (its #SCRON lines as #SBATCH lines, its command
    # as the script, begin now instead of at 02:00), in a folder laid out as /srv/eval is.
    options, when, command = _scrontab_entry()
    assert when == ["0", "2", "*", "*", "*"]
    assert command.startswith("cd /srv/eval && ")
    site = tmp_path / "srv-eval"
    (site / "jobs").mkdir(parents=True)
    (site / "reports").mkdir()
    (site / ".venv").symlink_to(os.path.dirname(os.path.dirname(sys.executable)))
    _job_folder(site / "jobs", stores[0])
    job = JOB.format(history="../runs/history.zarr", real=stores[0], engine="")
    (site / "jobs" / "nightly.toml").write_text(job)
    script = tmp_path / "scron.sh"
    script.write_text(
        "#!/bin/sh\n"
        + "".join(f"#SBATCH {shlex.quote(w)}\n" for w in _site_options(options))
        + f"#SBATCH -o {tmp_path}/scron-%j.out\n"
        + command.replace("/srv/eval", str(site), 1)
        + "\n"
    )
    job_id = slurm.run("sbatch", "--parsable", "--begin=now", str(script)).strip()
    deadline = time.monotonic() + 180
    while (state := slurm.all_jobs()[job_id][1]) in ("PENDING", "CONFIGURING", "RUNNING"):
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        time.sleep(0.5)
    output = (tmp_path / f"scron-{job_id}.out").read_text()
    assert state == "COMPLETED", output
    rows = _rows(site / "runs" / "history.zarr")
    assert [r["name"] for r in rows] == ["step-1000", "step-2000"]
    assert all(math.isfinite(r["fid"]) for r in rows)
    assert (site / "reports" / "latest.html").stat().st_size > 1000
