"""A one-node SLURM in a temporary folder, for the SLURM tests (Debian's ``slurmctld``,
``slurmd``, ``slurm-client`` and ``munge``, run as root).

Everything it starts is its own: a ``munged`` on a socket and key in the folder (never the
machine's ``/run/munge``), a ``slurmctld`` and a ``slurmd`` on free ports with their state,
spool and logs in the folder, one node with this machine's CPUs and memory (``slurmd -C``) and
one partition, :data:`PARTITION`. Clients reach it through ``SLURM_CONF``
(:attr:`OneNodeSlurm.env`). :meth:`OneNodeSlurm.stop` cancels every job, stops the daemons it
started (by their process IDs) and removes the folder.

By hand (prints the ``export SLURM_CONF=…`` line; Ctrl-C stops it)::

    sudo .venv/bin/python -m tests.cluster.slurm_fixture
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The partition of the one node (the default partition).
PARTITION = "debug"
#: Its time limit: walltimes above it pend forever (reason ``PartitionTimeLimit``).
PARTITION_MAX_TIME = "02:00:00"

_DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


class SlurmStartError(RuntimeError):
    """The daemons were started but SLURM did not come up; the message ends with the logs."""


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-login shell's PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def unavailable() -> str | None:
    """Why a one-node SLURM cannot run on this machine (``None`` when it can).

    Returns:
        A one-line reason, or ``None``.
    """
    if not sys.platform.startswith("linux"):
        return f"a one-node SLURM runs on Linux only, not {sys.platform}"
    if os.geteuid() != 0:
        return "a one-node SLURM needs root (slurmd launches jobs as their user)"
    missing = [name for name in (*_DAEMONS, *_CLIENTS) if _which(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurmctld "
            "slurmd slurm-client munge"
        )
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the 'munge' user does not exist (the munge package creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OneNodeSlurm:
    """One controller, one node, one partition, in ``root`` (a fresh temporary folder when
    ``None``).

    Attributes:
        root: the folder holding the configuration, state, spool and logs.
        conf: the ``slurm.conf``.
        env: ``os.environ`` with ``SLURM_CONF`` pointing at :attr:`conf`.
        node: the node's name (this machine's host name).
        cpus: the node's CPUs.
        memory_mb: the node's memory (MiB, as ``slurmd -C`` reports it).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="shardeval-slurm-", dir="/tmp"))
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.node = socket.gethostname().split(".")[0]
        self.cpus = 1
        self.memory_mb = 0
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- start ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> OneNodeSlurm:
        """Start munged, slurmctld and slurmd; return once the node is idle.

        Args:
            timeout: seconds for the node to come up.

        Returns:
            ``self``.

        Raises:
            SlurmStartError: a daemon exited or the node did not come up in time.
        """
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged (run as 'munge') must traverse to its socket; jobs run as root read the rest.
        os.chmod(self.root, 0o755)
        self._start_munge()
        self._write_conf()
        self._spawn(
            "slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(self.conf)]
        )
        self._spawn(
            "slurmd",
            [_which("slurmd") or "slurmd", "-D", "-N", self.node, "-f", str(self.conf)],
        )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).strip()
            if state.rstrip("*") == "idle":
                return self
            time.sleep(0.3)
        raise SlurmStartError(f"node {self.node} is {state or 'unknown'} after {timeout:g} s")

    def _start_munge(self) -> None:
        """A munged of our own: its key, socket, seed and log in the folder, run as 'munge'."""
        munge = self.root / "munge"
        key = munge / "munge.key"
        subprocess.run(
            [_which("mungekey") or "mungekey", "--create", f"--keyfile={key}"],
            check=True,
            capture_output=True,
        )
        user = pwd.getpwnam("munge")
        for path in (munge, key):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(key, 0o600)
        os.chmod(munge, 0o755)  # munged refuses a socket folder others cannot traverse
        self.munge_socket = munge / "munge.socket"
        self._spawn(
            "munged",
            [
                _which("munged") or "munged",
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            user=user.pw_uid,
            group=user.pw_gid,
        )
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmStartError(f"munged made no socket {self.munge_socket}")
            time.sleep(0.1)

    def _node_line(self) -> str:
        """This machine as a NodeName line (CPUs, sockets, cores, threads, RealMemory)."""
        out = subprocess.run(
            [_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True
        ).stdout
        words = out.splitlines()[0].split()
        fields = dict(w.split("=", 1) for w in words if "=" in w)
        self.cpus = int(fields["CPUs"])
        self.memory_mb = int(fields["RealMemory"])
        keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        sizes = " ".join(f"{k}={fields[k]}" for k in keep if k in fields)
        return (
            f"NodeName={self.node} NodeAddr=127.0.0.1 {sizes} RealMemory={self.memory_mb} "
            "State=UNKNOWN"
        )

    def _write_conf(self) -> None:
        root = self.root
        node = self._node_line()
        ports = {_free_port()}
        while len(ports) < 2:
            ports.add(_free_port())
        controller_port, node_port = sorted(ports)
        self.conf.write_text(
            f"""\
# A one-node SLURM for shardeval's tests: everything in {root}.
ClusterName=shardeval-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# No cgroups in a container: track job processes by parent ID, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that names no memory takes 1 GiB a core, not the whole node.
DefMemPerCPU=1024
ReturnToService=2
InactiveLimit=0
KillWait=2
MinJobAge=300
ScronParameters=enable
{node}
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime={PARTITION_MAX_TIME} State=UP
"""
        )

    def _spawn(
        self, name: str, command: list[str], user: int | None = None, group: int | None = None
    ) -> None:
        """Start a daemon in the foreground, as our child (so that we reap it), in a session of
        its own (so that stopping it stops what it forked)."""
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (the daemon's)
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
        log.close()
        proc.name = name  # type: ignore[attr-defined]
        self._procs.append(proc)

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                name = proc.name  # type: ignore[attr-defined]
                raise SlurmStartError(
                    f"{name} exited with code {proc.returncode}: {self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 5) -> str:
        """The last lines a daemon wrote (its stdout and its own log file), for messages."""
        text = []
        for path in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(text)

    # -- use -----------------------------------------------------------------------------------

    def run(self, *command: str, check: bool = True) -> str:
        """Run a SLURM client command against this controller; its stdout.

        Raises:
            subprocess.CalledProcessError: it failed and ``check`` is true.
        """
        done = subprocess.run(
            list(command), env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
        return done.stdout

    def jobs(self) -> dict[str, str]:
        """Job ID → state of every job the controller has in its queue (ended ones left out)."""
        out = self.run("squeue", "-h", "-o", "%i %T", check=False)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def all_jobs(self) -> dict[str, tuple[str, str]]:
        """Job ID → (name, state) of every job the controller remembers, ended ones too
        (for ``MinJobAge`` seconds after they end)."""
        out = self.run("squeue", "-h", "--states=all", "-o", "%i|%j|%T", check=False)
        jobs = {}
        for line in out.splitlines():
            job_id, name, state = line.strip().split("|")
            jobs[job_id] = (name, state)
        return jobs

    def wait_for_state(self, job_id: str, state: str, timeout: float = 30.0) -> str:
        """Wait until a job is in ``state`` (a cancelled job passes through COMPLETING).

        Returns:
            The job's state at the end (``state``, or what it was at the deadline).
        """
        deadline = time.monotonic() + timeout
        while (now := self.all_jobs().get(job_id, ("", "gone"))[1]) != state:
            if time.monotonic() > deadline:
                break
            time.sleep(0.3)
        return now

    def wait_for_empty_queue(self, timeout: float = 30.0) -> dict[str, str]:
        """Wait until no job is in the queue (cancelled jobs pass through COMPLETING).

        Returns:
            The jobs still there at the deadline (``{}`` when the queue emptied).
        """
        deadline = time.monotonic() + timeout
        while (left := self.jobs()) and time.monotonic() < deadline:
            time.sleep(0.3)
        return left

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started, remove the folder."""
        if any(p.poll() is None for p in self._procs if p.name == "slurmctld"):  # type: ignore[attr-defined]
            ids = list(self.jobs())
            if ids:
                self.run("scancel", *ids, check=False)
                self.wait_for_empty_queue(20)
        for proc in reversed(self._procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def site_spec(
    folder: Path,
    *,
    name: str = "site.yaml",
    scale: int = 2,
    join_timeout: float = 120,
    **options: object,
) -> str:
    """``cluster/slurm-cpu.yaml`` with a site's options laid over it, as a user adapts it: one
    core and 2 GiB a job (the test machine has 2 cores, shared with others), worker logs and
    scratch in ``folder``, the dashboard on a free loopback port; then ``options``.

    Args:
        folder: where the spec, the worker logs (``logs/``) and scratch go.
        name: the spec's file name.
        scale: worker jobs to submit.
        join_timeout: the spec's deadline for the first worker.
        options: more SLURMCluster options (they win).

    Returns:
        The spec's path.
    """
    import yaml

    shipped = Path(__file__).resolve().parents[2] / "cluster" / "slurm-cpu.yaml"
    spec = yaml.safe_load(shipped.read_text())
    spec["options"].update(
        cores=1,
        memory="2GiB",
        log_directory=str(folder / "logs"),
        local_directory=str(folder / "scratch"),
        scheduler_options={"dashboard_address": "127.0.0.1:0"},
    )
    spec["options"].update(options)
    spec["scale"] = scale
    spec["join_timeout"] = join_timeout
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def main() -> int:
    """Start a one-node SLURM and keep it until Ctrl-C or SIGTERM (either stops it cleanly)."""
    reason = unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 1

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # A background job's SIGINT is ignored by non-interactive shells: SIGTERM stops it too.
    signal.signal(signal.SIGTERM, interrupt)
    slurm = OneNodeSlurm()
    try:
        slurm.start()
        print(f"export SLURM_CONF={slurm.conf}   # partition {PARTITION}; Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        slurm.stop()


if __name__ == "__main__":
    raise SystemExit(main())
