"""No run waits forever on a SLURM queue (real one-node SLURM): a job that does not fit the site
is refused before submitting; one the site's checks cannot see (or that cannot start for
another reason) ends the run at once or at the spec's ``join_timeout``; each is one line naming
the jobs and SLURM's reason, and no job of ours is left in the queue."""

import os
import re
import socket
import time

import pytest

from shardeval.pipeline.core.clusters import WorkersDidNotJoinError, running_cluster
from shardeval.pipeline.errors import ClusterError
from shardeval.workflows.cli import main
from tests.cluster.slurm_fixture import PARTITION, PARTITION_MAX_TIME, site_spec

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


@pytest.fixture
def store(tmp_path):
    """A tiny feature store (the runs below never reach it)."""
    from shardeval.pipeline.io.synthetic import gaussian_features, write_features

    path = str(tmp_path / "f.zarr")
    write_features(path, gaussian_features(200, 4, shard_rows=100, seed=1), chunk_rows=100)
    return path


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("shards:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("shardeval: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _worker_jobs(slurm):
    return {i for i, (name, _) in slurm.all_jobs().items() if name == "dask-worker"}


def _closed_port():
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        pytest.param(
            {"queue": "nosuch"},
            [
                f"SLURM partition 'nosuch' (option 'queue') does not exist here; partitions: "
                f"{PARTITION}"
            ],
            id="partition",
        ),
        pytest.param(
            {"memory": "{twice_the_node}"},
            ["(option 'memory') is more memory than any node of SLURM partition", "largest: "],
            id="memory",
        ),
        pytest.param(
            {"cores": "{one_more_core}"},
            ["(option 'cores') is more than any node of SLURM partition", "largest: "],
            id="cores",
        ),
        pytest.param(
            {"walltime": "04:00:00", "n_workers": 2},  # n_workers: submitted after the checks
            [
                f"walltime 04:00:00 (option 'walltime') is above the time limit "
                f"{PARTITION_MAX_TIME} of SLURM partition '{PARTITION}'"
            ],
            id="walltime",
        ),
        pytest.param(
            {"job_extra_directives": ["--gres=gpu:1"]},
            ["--gres=gpu:1 asks for 1 gpu per node but no node has any", "job_extra_directives"],
            id="gres",
        ),
    ],
)
def test_a_job_that_does_not_fit_the_site_is_refused_before_submitting(
    slurm, tmp_path, store, capsys, options, words
):
    sizes = {
        "{twice_the_node}": f"{2 * slurm.memory_mb}MiB",
        "{one_more_core}": slurm.cpus + 1,
    }
    options = {k: sizes.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    spec = site_spec(tmp_path, **options)
    before = _worker_jobs(slurm)
    start = time.monotonic()
    code = main(["fid", store, store, "--cluster", spec, "-q"])
    line = _one_error_line(capsys)
    assert code == 2
    assert f"cluster spec {spec!r}: " in line
    for word in words:
        assert word in line
    if "memory" in options:
        assert f"largest: {slurm.memory_mb}M" in line
    if "cores" in options:
        assert f"largest: {slurm.cpus}" in line
    assert time.monotonic() - start < 30
    assert _worker_jobs(slurm) == before  # nothing was submitted


@pytest.fixture
def scontrol_denied(tmp_path, monkeypatch):
    """A site whose scontrol answers nothing (some sites deny it to users): the checks before
    submitting are skipped, and only what SLURM does with the job tells."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "scontrol").write_text("#!/bin/sh\necho 'scontrol: error: access denied' >&2\nexit 1\n")
    os.chmod(shim / "scontrol", 0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        pytest.param(
            {"walltime": "04:00:00"},
            # Reason PartitionConfig until the controller has looked at the job's time limit.
            ["the SLURM worker jobs can never start: jobs ", "PENDING (Partition"],
            id="walltime-pends",
        ),
        pytest.param(
            {"memory": "{twice_the_node}"},
            ["sbatch refused the worker job: sbatch: error: Batch job submission failed"],
            id="memory-refused",
        ),
    ],
)
def test_unchecked_jobs_that_cannot_start_end_the_run_at_once(
    slurm, tmp_path, scontrol_denied, options, words
):
    options = {
        k: f"{2 * slurm.memory_mb}MiB" if v == "{twice_the_node}" else v for k, v in options.items()
    }
    spec = site_spec(tmp_path, join_timeout=120, **options)
    before = _worker_jobs(slurm)
    start = time.monotonic()
    with pytest.raises(ClusterError) as caught, running_cluster(spec):
        pass
    assert not isinstance(caught.value, WorkersDidNotJoinError)  # not the deadline: at once
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    ours = sorted(_worker_jobs(slurm) - before, key=int)
    states = {slurm.all_jobs()[i][1] for i in ours}
    if "refused" in message:
        assert states <= {"FAILED"}  # slurmctld keeps a record of the refused submissions
    else:
        assert len(ours) == 2
        assert f"cancelled job(s) {', '.join(ours)}" in message
        assert states == {"CANCELLED"}
    assert slurm.wait_for_empty_queue() == {}


def test_jobs_pending_on_resources_stop_at_the_deadline(slurm, tmp_path, store, capsys):
    # Another job holds every core of the node: ours pend (Resources) until the deadline.
    blocker = slurm.run(
        "sbatch",
        "--parsable",
        f"-c{slurm.cpus}",
        "--mem=100M",
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 300",
    ).strip()
    try:
        assert slurm.wait_for_state(blocker, "RUNNING", timeout=60) == "RUNNING"
        spec = site_spec(tmp_path, join_timeout=6)
        before = _worker_jobs(slurm)
        start = time.monotonic()
        code = main(["fid", store, store, "--cluster", spec, "-q"])
        elapsed = time.monotonic() - start
        line = _one_error_line(capsys)
        ours = sorted(_worker_jobs(slurm) - before, key=int)
    finally:
        slurm.run("scancel", blocker, check=False)
    assert code == 1  # an operating failure (a busy queue), not a wrong input
    assert 6 <= elapsed < 40
    assert len(ours) == 2
    assert "no Dask worker joined the scheduler at tcp://" in line
    assert "within 6 s (join_timeout)" in line
    # The first pends for the node's cores; the next for them too, or behind the first.
    assert (
        f"job {ours[0]} PENDING (Resources: " in line
        or f"jobs {', '.join(ours)} PENDING (Resources: " in line
    )
    assert re.search(rf"\b{ours[1]} PENDING \((Resources|Priority): ", line), line
    assert f"cancelled job(s) {', '.join(ours)}" in line
    assert "raise 'join_timeout' in the spec" in line
    assert slurm.wait_for_empty_queue() == {}


def test_a_worker_that_cannot_reach_the_scheduler_stops_at_the_deadline(slurm, tmp_path):
    # The scheduler tells workers an address nothing listens on (as a login node's address
    # the compute nodes cannot route to): the jobs run, no worker ever joins.
    address = f"tcp://127.0.0.1:{_closed_port()}"
    spec = site_spec(
        tmp_path,
        join_timeout=8,
        scheduler_options={"dashboard_address": "127.0.0.1:0", "contact_address": address},
    )
    before = _worker_jobs(slurm)
    with pytest.raises(WorkersDidNotJoinError) as caught, running_cluster(spec):
        pass
    message = str(caught.value)
    ours = sorted(_worker_jobs(slurm) - before, key=int)
    assert f"no Dask worker joined the scheduler at {address} within 8 s" in message
    assert f"jobs {', '.join(ours)} RUNNING on {slurm.node} with no worker connected to " in message
    assert "set 'interface' or 'scheduler_options' in the spec" in message
    assert f"cancelled job(s) {', '.join(ours)}" in message
    assert slurm.wait_for_empty_queue() == {}


def test_workers_that_give_up_end_the_run_before_the_deadline(slurm, tmp_path):
    # Same, with the workers' own --death-timeout shorter than the deadline: every job ends,
    # and the run says so then, with the last error line of a worker's log.
    address = f"tcp://127.0.0.1:{_closed_port()}"
    spec = site_spec(
        tmp_path,
        scale=1,
        join_timeout=120,
        death_timeout=2,
        scheduler_options={"dashboard_address": "127.0.0.1:0", "contact_address": address},
    )
    start = time.monotonic()
    with pytest.raises(ClusterError) as caught, running_cluster(spec):
        pass
    assert time.monotonic() - start < 60
    message = str(caught.value)
    assert f"every SLURM worker job ended before a worker joined the scheduler at {address}" in (
        message
    )
    assert "FAILED (exit 1:0): Timed out starting worker" in message
    assert "(log of job " in message
    assert str(tmp_path / "logs") in message
    assert slurm.wait_for_empty_queue() == {}
