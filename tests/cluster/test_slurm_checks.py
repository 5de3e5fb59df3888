"""The SLURM checks before submitting, and the spec's deadline, without a SLURM: the site is
what ``scontrol`` would print (lines in SLURM 22.05's ``-o`` format)."""

import pytest

from shardeval.pipeline.core import clusters
from shardeval.pipeline.core.clusters import (
    ClusterSpec,
    check_slurm_fit,
    load_spec,
    sbatch_directives,
    slurm,
    slurm_mebibytes,
    slurm_seconds,
)
from shardeval.pipeline.errors import ClusterError

PARTITIONS = (
    "PartitionName=cpu AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=1-00:00:00 "
    "MinNodes=0 MaxCPUsPerNode=UNLIMITED Nodes=c[01-02] State=UP TotalCPUs=64 "
    "DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED\n"
    "PartitionName=gpu AllowGroups=ALL Default=NO MaxTime=02:00:00 Nodes=g01 State=UP "
    "MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED\n"
    "PartitionName=old AllowGroups=ALL Default=NO MaxTime=UNLIMITED Nodes=c01 State=DOWN\n"
)
NODES = (
    "NodeName=c01 Arch=x86_64 CoresPerSocket=16 CPUAlloc=0 CPUEfctv=32 CPUTot=32 Gres=(null) "
    "OS=Linux 6.1.0 #1 SMP RealMemory=128000 AllocMem=0 Partitions=cpu,old State=IDLE\n"
    "NodeName=c02 Arch=x86_64 CoresPerSocket=16 CPUAlloc=0 CPUEfctv=30 CPUTot=32 Gres=(null) "
    "RealMemory=256000 MemSpecLimit=16000 Partitions=cpu State=IDLE\n"
    "NodeName=g01 Arch=x86_64 CPUEfctv=16 CPUTot=16 Gres=gpu:a100:4(S:0-1) RealMemory=64000 "
    "Partitions=gpu State=MIXED\n"
)


@pytest.fixture
def site(monkeypatch):
    """scontrol answers with PARTITIONS and NODES; returns the commands it was asked."""
    asked = []

    def run(command):
        asked.append(command)
        if command[:3] == ["scontrol", "-o", "show"]:
            return {"partition": PARTITIONS, "node": NODES}[command[3]]
        return None

    monkeypatch.setattr(slurm, "run_slurm", run)
    return asked


def _script(*directives):
    return "#!/usr/bin/env bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + "python\n"


def _spec(**options):
    return ClusterSpec("slurm", options, 2, "site.yaml")


@pytest.mark.parametrize(
    "directives",
    [
        ("-n 1", "--cpus-per-task=32", "--mem=120G", "-t 1-00:00:00"),  # c02: 240000M usable
        ("-p gpu", "--cpus-per-task=16", "--mem=60G", "-t 02:00:00", "--gres=gpu:a100:4"),
        ("--partition=gpu,cpu", "-c 8", "-t 10:00:00"),  # too long for gpu, fits cpu
        ("-pgpu", "--mem=0", "--gres=gpu:2"),  # --mem=0: a whole node, whatever it has
    ],
)
def test_jobs_that_fit(site, directives):
    check_slurm_fit(_script(*directives), _spec())


@pytest.mark.parametrize(
    ("directives", "options", "message"),
    [
        (("-p nosuch",), {}, "partition 'nosuch' (option 'queue') does not exist here; "),
        (("-p old",), {}, "partition 'old' is DOWN: its jobs would wait"),
        (
            ("--cpus-per-task=33",),
            {},
            "33 cores per job (option 'cores') is more than any node of SLURM partition 'cpu' "
            "has (largest: 32)",
        ),
        (
            ("--mem=300G",),
            {},
            "--mem=300G per job (option 'memory') is more memory than any node of SLURM "
            "partition 'cpu' has (largest: 240000M)",
        ),
        (
            ("--cpus-per-task=32", "--mem=200G"),  # c01: 32 cores, c02: 200G, none both
            {},
            "no node of SLURM partition 'cpu' has both 32 cores and --mem=200G",
        ),
        (
            ("-c 2", "--mem-per-cpu=150G"),
            {},
            "--mem-per-cpu=150G x 2 cores per job",
        ),
        (
            ("-p gpu", "-t 04:00:00"),
            {},
            "walltime 04:00:00 (option 'walltime') is above the time limit 02:00:00 of SLURM "
            "partition 'gpu'",
        ),
        (
            ("-p gpu", "-t 01:00:00", "--time=3:00:00"),
            {"job_extra_directives": ["--time=3:00:00"]},
            "walltime 3:00:00 (option 'job_extra_directives')",
        ),
        (
            ("-p gpu", "--gres=gpu:a100:8"),
            {},
            "--gres=gpu:a100:8 asks for 8 gpu:a100 per node but no node has more than 4",
        ),
        (("--gres=gpu:1",), {}, "no node has any in SLURM partition 'cpu'"),
    ],
)
def test_jobs_that_do_not_fit_are_one_line(site, directives, options, message):
    with pytest.raises(ClusterError) as caught:
        check_slurm_fit(_script(*directives), _spec(**options))
    text = str(caught.value)
    assert text.startswith("cluster spec 'site.yaml': ")
    assert message in text
    assert "\n" not in text


def test_no_default_partition(site, monkeypatch):
    monkeypatch.setattr(
        slurm,
        "run_slurm",
        lambda c: {"partition": PARTITIONS.replace("Default=YES", "Default=NO"), "node": NODES}[
            c[3]
        ],
    )
    with pytest.raises(ClusterError, match="names no partition and this site has no default"):
        check_slurm_fit(_script("-c 1"), _spec())


def test_a_site_that_hides_its_limits_is_not_checked(monkeypatch):
    monkeypatch.setattr(slurm, "run_slurm", lambda command: None)
    check_slurm_fit(_script("-p nosuch", "--mem=100T"), _spec())  # sbatch and the deadline tell


def test_directives_as_sbatch_reads_them():
    script = _script(
        "-J dask-worker",
        "-e /logs/dask-worker-%J.err",
        "-p cpu",
        "--cpus-per-task=4",
        "--mem=8G",
        "-t 01:00:00",
        "--partition gpu",
        "-t02:00:00",
        "--gres=gpu:1 --exclusive",
    )
    assert sbatch_directives(script) == {
        "partition": "gpu",
        "cpus-per-task": "4",
        "mem": "8G",
        "time": "02:00:00",
        "gres": "gpu:1",
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("02:00:00", 7200),
        ("1-00:00:00", 86400),
        ("2-12", 2 * 86400 + 12 * 3600),
        ("1-01:30", 86400 + 5400),
        ("UNLIMITED", float("inf")),
        ("soon", None),
    ],
)
def test_slurm_times(text, seconds):
    assert slurm_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "mib"), [("2G", 2048), ("1954M", 1954), ("100", 100), ("1T", 1024**2), ("x", None)]
)
def test_slurm_sizes(text, mib):
    assert slurm_mebibytes(text) == mib


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("join_timeout: 0\n", "'join_timeout' must be a positive number of seconds, got 0"),
        ("join_timeout: -5\n", "got -5"),
        ("join_timeout: soon\n", "got 'soon'"),
        ("join_timeout: true\n", "got True"),
        ("join_timeout: .inf\n", "got inf"),
    ],
)
def test_bad_join_timeout(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text("backend: slurm\n" + text)
    with pytest.raises(ClusterError, match=message):
        load_spec(path)


def test_join_timeout_default_and_given(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("backend: local\n")
    assert load_spec(path).join_timeout == clusters.DEFAULT_JOIN_TIMEOUT
    path.write_text("backend: local\njoin_timeout: 90\n")
    assert load_spec(path).join_timeout == 90.0


def test_a_spec_that_asks_for_no_workers_says_so_at_once(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "backend: local\noptions:\n  n_workers: 0\n  dashboard_address: '127.0.0.1:0'\n"
    )
    with (
        pytest.raises(ClusterError, match=r"asks for no workers: set 'scale'"),
        clusters.running_cluster(path),
    ):
        pass


def test_the_one_node_slurm_says_why_it_cannot_run(monkeypatch):
    from tests.cluster import slurm_fixture

    monkeypatch.setattr(slurm_fixture.os, "geteuid", lambda: 1000)
    assert "needs root" in slurm_fixture.unavailable()
    monkeypatch.setattr(slurm_fixture.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_fixture, "_which", lambda name: None if name == "slurmd" else name)
    reason = slurm_fixture.unavailable()
    assert "slurmd missing" in reason
    assert "apt-get install slurmctld slurmd slurm-client munge" in reason
