"""Start a Dask cluster from a spec file in ``cluster/``: local processes, GPU workers, SLURM or
Kubernetes. A spec is YAML:

.. code-block:: yaml

    backend: local          # local | cuda | slurm | kubernetes
    options:                # keyword arguments of the backend's cluster class
      n_workers: 2
      threads_per_worker: 1
    scale: 4                # optional: workers (jobs) to ask for after start
    join_timeout: 600       # optional: seconds the first worker has to join (default 600)

Optional back-ends live in extras (``shardeval[cuda]``, ``[slurm]``, ``[kubernetes]``); a
missing one is a one-line error naming the extra.

A back-end that starts its scheduler on this machine (``local``, ``cuda``) serves it and its
dashboard on 127.0.0.1 unless the spec names another address: ``distributed`` binds its
dashboard to every interface by default, which shows the cluster, and what it reads, to the
network.

No run waits forever on a queue. Before a SLURM spec submits anything, the job script it
renders is checked against what ``scontrol`` says of the site (the partition exists and is up,
cores and memory fit one of its nodes, the walltime fits its limit, a requested GRES exists),
where the site lets us ask. After submitting, the run waits at most ``join_timeout`` seconds
for its first worker; it stops sooner when every job has ended, ``sbatch`` refused the job, or
SLURM says the jobs can never start (e.g. ``PartitionTimeLimit``). Either way the error is one
line naming the job IDs, their state and SLURM's reason, and the jobs are cancelled.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from shardeval.pipeline.errors import ClusterError

#: backend → (module, class, extra that installs it).
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "local": ("distributed", "LocalCluster", None),
    "cuda": ("dask_cuda", "LocalCUDACluster", "cuda"),
    "slurm": ("dask_jobqueue", "SLURMCluster", "slurm"),
    "kubernetes": ("dask_kubernetes.operator", "KubeCluster", "kubernetes"),
}
_KEYS = {"backend", "options", "scale", "join_timeout"}

#: Back-ends whose scheduler runs in this process, on this machine.
LOCAL_BACKENDS = ("local", "cuda")

#: Where a local scheduler serves its dashboard unless the spec says otherwise (Dask's default,
#: ":8787", is every interface). A taken port falls back to a free one on the same host.
LOOPBACK_DASHBOARD = "127.0.0.1:8787"

#: Seconds a cluster's first worker has to join when the spec sets no ``join_timeout``: long
#: enough for a batch queue with free nodes to start a job and a worker to import its
#: libraries, short enough that a scheduled run whose jobs cannot start says so the same night.
DEFAULT_JOIN_TIMEOUT = 600.0

#: Seconds between two looks at the SLURM queue while waiting for workers (squeue is one RPC
#: to slurmctld; sites ask users not to poll it in tight loops).
QUEUE_POLL_SECONDS = 2.0

#: Seconds any one SLURM command may take (a controller that does not answer must not hang
#: the run that asks it).
SLURM_COMMAND_TIMEOUT = 30.0

#: SLURM pending reasons that waiting cannot clear: the job asks for something the partition,
#: account or QOS never gives. Any reason with "PerJob" in its name is a per-job limit too.
PERMANENT_REASONS = frozenset(
    {
        "PartitionTimeLimit",
        "PartitionNodeLimit",
        "PartitionConfig",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "DependencyNeverSatisfied",
    }
)

#: What the common SLURM pending reasons mean, for the one-line error.
REASON_MEANING = {
    "Resources": "waiting for free cores, memory or GPUs",
    "Priority": "other jobs come first",
    "PartitionTimeLimit": "the walltime is above the partition's limit",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionConfig": "more cores, memory or GRES than the partition's nodes have",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "BadConstraints": "no node has the features or GRES it asks for",
    "InvalidAccount": "the account does not exist or is not yours",
    "InvalidQOS": "the QOS does not exist or is not yours",
    "JobHeldUser": "held by its user",
    "JobHeldAdmin": "held by an administrator",
    "BeginTime": "its start time is later",
    "Dependency": "waiting for another job",
}

#: Job states in which a SLURM job may still start a worker.
_LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "RESIZING"})


class _SpecLoader(yaml.SafeLoader):
    """YAML as a spec's writer means its numbers: ``1e3`` is a float. PyYAML reads YAML 1.1,
    whose floats need a dot (``1.0e3``), and took ``1e3`` for the string '1e3'."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _whole(value: Any) -> Any:
    """A float that is a whole number (``1e1`` in a spec) as an int; anything else as it is."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


class WorkersDidNotJoinError(ClusterError):
    """No worker joined the cluster within the spec's ``join_timeout`` (a busy queue, a node
    that cannot reach the scheduler). An operating failure: the CLI exits 1, not 2."""

    operating_failure = True


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster spec as read from its file.

    Attributes:
        backend: one of :data:`BACKENDS`.
        options: keyword arguments of the backend's cluster class.
        scale: workers (jobs) to ask for after start; ``None`` leaves it to ``options``.
        path: the file it was read from (named in errors).
        join_timeout: seconds the first worker has to join before the run stops.
    """

    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: int | None = None
    path: str = ""
    join_timeout: float = DEFAULT_JOIN_TIMEOUT


def load_spec(path: str | os.PathLike[str]) -> ClusterSpec:
    """Read and check a cluster spec.

    Args:
        path: the YAML file.

    Returns:
        The spec.

    Raises:
        ClusterError: missing file, not YAML, unknown key or backend, wrong types.
    """
    path = os.fspath(path)
    try:
        with open(path) as fh:
            raw = yaml.load(fh, Loader=_SpecLoader)  # a SafeLoader: no object tags
    except OSError as exc:
        raise ClusterError(f"cluster spec {path!r} cannot be read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ClusterError(f"cluster spec {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ClusterError(f"cluster spec {path!r} must be a mapping with key 'backend'")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ClusterError(
            f"cluster spec {path!r} has unknown key(s) {sorted(unknown)}; expected {sorted(_KEYS)}"
        )
    backend = raw.get("backend")
    if backend not in BACKENDS:
        raise ClusterError(
            f"cluster spec {path!r}: backend {backend!r} is not one of {sorted(BACKENDS)}"
        )
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise ClusterError(f"cluster spec {path!r}: 'options' must be a mapping")
    scale = _whole(raw.get("scale"))
    if scale is not None and (not isinstance(scale, int) or isinstance(scale, bool) or scale < 1):
        raise ClusterError(f"cluster spec {path!r}: 'scale' must be a positive integer")
    join_timeout = raw.get("join_timeout", DEFAULT_JOIN_TIMEOUT)
    if (
        isinstance(join_timeout, bool)
        or not isinstance(join_timeout, int | float)
        or not math.isfinite(join_timeout)
        or join_timeout <= 0
    ):
        raise ClusterError(
            f"cluster spec {path!r}: 'join_timeout' must be a positive number of seconds, "
            f"got {join_timeout!r}"
        )
    return ClusterSpec(backend, options, scale, path, float(join_timeout))


def cluster_class(backend: str) -> Any:
    """The cluster class of a back-end.

    Raises:
        ClusterError: its module is not installed (naming the extra that installs it).
    """
    module, name, extra = BACKENDS[backend]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ClusterError(
            f"backend {backend!r} needs {module}: pip install 'shardeval[{extra}]'"
        ) from exc


def cluster_options(spec: ClusterSpec) -> dict[str, Any]:
    """The keyword arguments the spec's cluster class is called with: the spec's options, and
    for a local scheduler a dashboard on 127.0.0.1 when the spec names none. (The scheduler
    itself already listens on 127.0.0.1 unless ``host`` or ``interface`` says otherwise.)"""
    options = dict(spec.options)
    if spec.backend in LOCAL_BACKENDS:
        options.setdefault("dashboard_address", LOOPBACK_DASHBOARD)
    return options


def _parameters(*callables: Any) -> set[str]:
    """The keyword parameters of callables (``**kwargs`` and ``self`` left out)."""
    import inspect

    names: set[str] = set()
    for fn in callables:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        names |= {
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        }
    return names


def check_options(spec: ClusterSpec, cls: Any) -> None:
    """Refuse, before anything starts, an option that neither a local back-end's cluster class
    nor its workers take. (``LocalCluster`` hands the options it does not know to its workers,
    which then fail to start, each logging a traceback before the cluster gives up.) Batch
    back-ends check their options in their constructors, before they submit anything.

    Args:
        spec: the spec.
        cls: its back-end's cluster class.

    Raises:
        ClusterError: one line naming the option and the nearest options there are.
    """
    if spec.backend not in LOCAL_BACKENDS:
        return
    import difflib

    from distributed import Nanny, Worker
    from distributed.core import Server

    classes = [c for c in getattr(cls, "__mro__", (cls,)) if c is not object]
    known = _parameters(*(c.__init__ for c in classes), Nanny.__init__, Worker.__init__)
    known |= _parameters(Server.__init__)
    unknown = sorted(set(spec.options) - known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ClusterError(
            f"cluster spec {spec.path!r}: {cls.__name__} and its workers take no option "
            f"{', '.join(repr(n) for n in unknown)}{hint}"
        )


def make_cluster(spec: ClusterSpec) -> Any:
    """Construct (and so start) the cluster a spec describes; the caller closes it.

    A SLURM spec's job script is checked against the site before any job is submitted
    (:func:`check_slurm_fit`), and its jobs are recorded as they are submitted so that
    :func:`wait_for_workers` can name and cancel them.

    Raises:
        ClusterError: a bad option (:func:`check_options`), or a SLURM job that does not fit
            the site.
    """
    cls = cluster_class(spec.backend)
    check_options(spec, cls)
    options = cluster_options(spec)
    scale = spec.scale
    if spec.backend == "slurm":
        if "job_cls" not in options:
            options["job_cls"] = _recording_job_class(cls.job_cls)
        # SLURMCluster submits n_workers jobs from its constructor: ask for them after the
        # checks instead, so that nothing is submitted that does not fit.
        n_workers = options.pop("n_workers", None)
        scale = scale or n_workers
    try:
        cluster = cls(**options)
    except (TypeError, ValueError, RuntimeError) as exc:
        # LocalCluster hands unknown options to its workers, which then fail to start.
        cause = exc.__cause__ or exc.__context__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ClusterError(
            f"cluster spec {spec.path!r}: bad option for {cls.__name__}: {first}"
        ) from exc
    if spec.backend == "slurm":
        try:
            check_slurm_fit(cluster.job_script(), spec)
        except BaseException:
            cluster.close()
            raise
    if scale:
        cluster.scale(scale)
    return cluster


@contextlib.contextmanager
def running_cluster(
    path: str | os.PathLike[str], *, join_timeout: float | None = None
) -> Iterator[str]:
    """Start the cluster of a spec file, wait for its first worker, yield its scheduler
    address, close it afterwards.

    Args:
        path: the spec file.
        join_timeout: seconds the first worker has to join; ``None`` takes the spec's.

    Yields:
        The scheduler's address.

    Raises:
        ClusterError: the spec is wrong, or its workers cannot start (see
            :func:`wait_for_workers`).
    """
    spec = load_spec(path)
    cluster = make_cluster(spec)
    try:
        wait_for_workers(cluster, spec, join_timeout)
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _worker_count(cluster: Any) -> int:
    info = getattr(cluster, "scheduler_info", None) or {}
    return len(info.get("workers", {}))


def wait_for_workers(cluster: Any, spec: ClusterSpec, timeout: float | None = None) -> None:
    """Return once a worker has joined ``cluster``; stop with one line, and cancel the jobs
    submitted, when none can.

    For a SLURM cluster it stops as soon as ``sbatch`` refused the job, every job has ended, or
    every job left pends for a reason waiting cannot clear (:data:`PERMANENT_REASONS`);
    otherwise at the deadline, naming each job, its state and SLURM's reason.

    Args:
        cluster: a cluster from :func:`make_cluster`.
        spec: its spec (for the deadline and the file named in errors).
        timeout: seconds to wait; ``None`` takes ``spec.join_timeout``.

    Raises:
        ClusterError: sbatch refused the job, or the jobs can never start or all ended.
        WorkersDidNotJoinError: no worker joined before the deadline.
    """
    timeout = spec.join_timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    jobs = getattr(cluster, "job_cls", None)
    recorded = jobs if hasattr(jobs, "submitted") else None
    where = f"cluster spec {spec.path!r}"
    if getattr(cluster, "worker_spec", None) == {}:
        # A SpecCluster (local, cuda, slurm) asked for nothing: no worker will ever come.
        raise ClusterError(f"{where} asks for no workers: set 'scale' (number of workers or jobs)")
    next_look = time.monotonic() + 1.0
    while _worker_count(cluster) == 0:
        now = time.monotonic()
        # Decide on the jobs only once every sbatch has returned: a job submitted after the
        # decision would be left in the queue, cancelled by no one.
        if recorded is not None and _submitted_all(cluster, recorded):
            ids = _sorted_ids(recorded.submitted)
            if recorded.failures:
                cancel_slurm_jobs(ids)
                raise ClusterError(
                    f"{where}: sbatch refused the worker job: {recorded.failures[0]}"
                    + (f"; cancelled job(s) {', '.join(ids)}" if ids else "")
                )
            if ids and now >= next_look:
                next_look = now + QUEUE_POLL_SECONDS
                _stop_if_hopeless(ids, _contact_address(cluster), where)
        if now > deadline:
            if recorded is not None:
                _wait_for_submissions(cluster, recorded)
            raise _deadline_error(cluster, recorded, timeout, where)
        time.sleep(0.2)


def _submitted_all(cluster: Any, recorded: Any) -> bool:
    """Every job the cluster asked for has been submitted or refused."""
    asked = len(getattr(cluster, "worker_spec", {}) or {})
    return len(recorded.submitted) + len(recorded.failures) >= asked


def _wait_for_submissions(cluster: Any, recorded: Any) -> None:
    """Give sbatch calls still under way the time one SLURM command may take."""
    until = time.monotonic() + SLURM_COMMAND_TIMEOUT
    while not _submitted_all(cluster, recorded) and time.monotonic() < until:
        time.sleep(0.1)


def _contact_address(cluster: Any) -> str:
    """The address workers are told to connect to (a spec may advertise another one than the
    scheduler listens on)."""
    scheduler = getattr(cluster, "scheduler", None)
    return str(getattr(scheduler, "contact_address", None) or cluster.scheduler_address)


def _stop_if_hopeless(ids: Sequence[str], address: str, where: str) -> None:
    """Raise when no submitted job can still start a worker."""
    states = slurm_job_states(ids)
    if states is None:
        return  # the site does not let us look: wait for the deadline
    live = [i for i in ids if i in states and states[i][0] in _LIVE_STATES]
    blocked = [i for i in live if states[i][0] == "PENDING" and _permanent(states[i][1])]
    if live and len(blocked) < len(live):
        return
    described = describe_slurm_jobs(ids, states, address)
    if blocked:
        cancel_slurm_jobs(ids)
        raise ClusterError(
            f"{where}: the SLURM worker jobs can never start: {described}; "
            f"cancelled job(s) {', '.join(ids)}"
        )
    raise ClusterError(
        f"{where}: every SLURM worker job ended before a worker joined the scheduler at "
        f"{address}: {described}"
    )


def _sorted_ids(ids: Sequence[str]) -> list[str]:
    return sorted(ids, key=lambda i: (len(i), i))


def _permanent(reason: str) -> bool:
    return reason in PERMANENT_REASONS or "PerJob" in reason


def _deadline_error(
    cluster: Any, recorded: Any, timeout: float, where: str
) -> WorkersDidNotJoinError:
    """The error at the deadline, after cancelling what was submitted."""
    address = _contact_address(cluster)
    head = f"{where}: no Dask worker joined the scheduler at {address} within {timeout:g} s"
    hint = "raise 'join_timeout' in the spec if the queue is only busy"
    if recorded is None:
        return WorkersDidNotJoinError(f"{head}; {hint}")
    ids = _sorted_ids(recorded.submitted)
    if not ids:
        return WorkersDidNotJoinError(
            f"{head}: no SLURM job was submitted (sbatch has not returned)"
        )
    states = slurm_job_states(ids) or {}
    described = describe_slurm_jobs(ids, states, address)
    cancel_slurm_jobs(ids)
    return WorkersDidNotJoinError(
        f"{head} (join_timeout): {described}; cancelled job(s) {', '.join(ids)}; {hint}"
    )


# -- SLURM: jobs -------------------------------------------------------------------------------


def _run_slurm(command: Sequence[str]) -> str | None:
    """stdout of a SLURM command, or ``None`` when it is missing, fails or does not answer."""
    try:
        done = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=SLURM_COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def slurm_job_states(ids: Sequence[str]) -> dict[str, tuple[str, str, str]] | None:
    """State, pending reason and node list of SLURM jobs, as ``squeue`` reports them.

    Args:
        ids: job IDs.

    Returns:
        job ID → (state, reason, nodes) for the jobs the controller still knows (it forgets
        ended jobs after ``MinJobAge``); ``{}`` when it knows none of them; ``None`` when
        ``squeue`` cannot be run or fails otherwise.
    """
    if not ids:
        return {}
    command = ["squeue", "-h", "--states=all", f"--jobs={','.join(ids)}", "-o", "%i|%T|%r|%N"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=SLURM_COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # squeue fails when every job named is unknown to the controller: all long gone.
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            states[parts[0]] = (parts[1], parts[2], parts[3])
    return states


def _job_record(job_id: str) -> dict[str, str]:
    out = _run_slurm(["scontrol", "-o", "show", "job", job_id])
    return _records(out)[0] if out else {}


def _last_error_line(path: str) -> str:
    """The last line of a job's stderr file that reads like an error (the file is on a shared
    filesystem at most sites; ``""`` where it is not readable here)."""
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh.read()[-65536:].splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if re.search(r"error|timed out|refused|exception", ln, re.I)]
    # Dask's log lines start "2026-01-01 02:00:00,123 - distributed.nanny - INFO - ".
    line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,.]+ - [\w.]+ - \w+ - ", "", (errors or lines or [""])[-1])
    return line if len(line) <= 300 else line[:297] + "..."


def describe_slurm_jobs(
    ids: Sequence[str], states: dict[str, tuple[str, str, str]], address: str
) -> str:
    """One clause per group of jobs alike: ``jobs 12, 13 PENDING (Resources: …)``.

    Args:
        ids: the job IDs submitted.
        states: what :func:`slurm_job_states` returned for them.
        address: the scheduler address the workers were told.

    Returns:
        The clauses joined by ``"; "``.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for job_id in ids:
        text, log = _describe_job(job_id, states.get(job_id), address)
        groups.setdefault(text, []).append((job_id, log))
    clauses = []
    for text, members in groups.items():
        label = "job" if len(members) == 1 else "jobs"
        clause = f"{label} {', '.join(i for i, _ in members)} {text}"
        first_log = next(((i, log) for i, log in members if log), None)
        if first_log:
            clause += f" (log of job {first_log[0]}: {first_log[1]})"
        clauses.append(clause)
    return "; ".join(clauses)


def _describe_job(job_id: str, state: tuple[str, str, str] | None, address: str) -> tuple[str, str]:
    """What one job is doing, and its stderr file when it ended (``""`` otherwise)."""
    if state is None:
        return "ended and no longer known to SLURM", ""
    status, reason, nodes = state
    if status == "PENDING":
        meaning = REASON_MEANING.get(reason)
        return (f"PENDING ({reason}: {meaning})" if meaning else f"PENDING ({reason})"), ""
    if status in ("RUNNING", "CONFIGURING"):
        return (
            f"{status} on {nodes} with no worker connected to {address} (the compute nodes "
            "must reach that address: set 'interface' or 'scheduler_options' in the spec)"
        ), ""
    record = _job_record(job_id)
    text = status
    if record.get("ExitCode", "0:0") != "0:0":
        text += f" (exit {record['ExitCode']})"
    log = _expand_log_path(record.get("StdErr", ""), record)
    last = _last_error_line(log) if log else ""
    if last:
        text += f": {last}"
    if re.search(r"timed out", last, re.I):
        text += " (can the compute nodes reach the scheduler's address?)"
    return text, log


def _expand_log_path(path: str, record: dict[str, str]) -> str:
    """A job's ``StdErr`` path with the sbatch patterns SLURM may leave in it expanded."""
    values = {
        "j": record.get("JobId", ""),
        "J": record.get("JobId", ""),
        "x": record.get("JobName", ""),
        "u": record.get("UserId", "").split("(")[0],
        "N": record.get("BatchHost", ""),
        "%": "%",
    }
    return re.sub(r"%([jJxuN%])", lambda m: values[m.group(1)], path)


def cancel_slurm_jobs(ids: Sequence[str]) -> None:
    """``scancel`` the jobs (already ended ones are no error)."""
    if ids:
        _run_slurm(["scancel", *ids])


def _recording_job_class(base: Any) -> Any:
    """A subclass of dask-jobqueue's job class that records the ID of every job it submits and
    the first error line of every ``sbatch`` that refuses one.

    dask-jobqueue submits from a callback on its event loop: an ``sbatch`` error there is only
    logged, and the run would wait for a worker that was never asked for. Recording it lets
    :func:`wait_for_workers` stop at once with SLURM's own words.
    """
    from distributed.core import Status

    class RecordingJob(base):
        submitted: list[str] = []  # noqa: RUF012 (replaced per class below)
        failures: list[str] = []  # noqa: RUF012

        async def start(self) -> None:
            try:
                await super().start()
            except (RuntimeError, ValueError) as exc:
                type(self).failures.append(_submit_error(exc))
                # Marked running with no job: the cluster keeps it (closing it cancels
                # nothing) and Dask logs no unretrieved exception behind the one-line error.
                self.status = Status.running
                return
            type(self).submitted.append(str(self.job_id))

    # Fresh lists for this cluster: two clusters in one process never mix their jobs.
    RecordingJob.submitted = []
    RecordingJob.failures = []
    RecordingJob.__name__ = RecordingJob.__qualname__ = base.__name__
    return RecordingJob


def _submit_error(exc: BaseException) -> str:
    """SLURM's own words from dask-jobqueue's multi-line ``RuntimeError`` around sbatch."""
    text = str(exc)
    if "stderr:" in text:
        text = text.split("stderr:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [type(exc).__name__])[-1]


# -- SLURM: checks before submitting ------------------------------------------------------------


def _records(text: str | None) -> list[dict[str, str]]:
    """``scontrol -o show …`` output: one record a line, ``Key=Value`` words (values in which
    SLURM puts spaces, such as ``OS=``, are cut at the first space; none is used here)."""
    if not text:
        return []
    return [
        dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", line)) for line in text.splitlines() if line
    ]


#: sbatch short options that take a value (so ``-p gpu`` and ``-pgpu`` both parse).
_SHORT = {"p": "partition", "c": "cpus-per-task", "t": "time", "n": "ntasks", "N": "nodes"}
#: Long options read here; any other is skipped with its value when it has one.
_LONG = {"partition", "mem", "mem-per-cpu", "cpus-per-task", "time", "gres", "ntasks", "nodes"}


def sbatch_directives(script: str) -> dict[str, str]:
    """The ``#SBATCH`` options of a job script that decide whether it fits the site; a later
    line wins, as with sbatch.

    Args:
        script: the job script.

    Returns:
        long option name → value (``partition``, ``mem``, ``mem-per-cpu``, ``cpus-per-task``,
        ``time``, ``gres``, ``ntasks``, ``nodes``).
    """
    found: dict[str, str] = {}
    for line in script.splitlines():
        if not line.startswith("#SBATCH"):
            continue
        try:
            words = shlex.split(line[len("#SBATCH") :])
        except ValueError:
            continue
        i = 0
        while i < len(words):
            word = words[i]
            name, value = None, None
            if word.startswith("--"):
                name, equals, value = word[2:].partition("=")
                if not equals and name in _LONG and i + 1 < len(words):
                    value = words[i + 1]
                    i += 1
            elif word.startswith("-") and len(word) > 1 and word[1] in _SHORT:
                name = _SHORT[word[1]]
                value = word[2:]
                if not value and i + 1 < len(words):
                    value = words[i + 1]
                    i += 1
            if name in _LONG and value:
                found[name] = value
            i += 1
    return found


def slurm_seconds(text: str) -> float | None:
    """A SLURM time (``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``,
    ``days-hours[:minutes[:seconds]]``, ``UNLIMITED``) in seconds; ``None`` if unreadable."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return math.inf
    try:
        if "-" in text:
            days, _, rest = text.partition("-")
            parts = [int(p) for p in rest.split(":")] if rest else [0]
            parts += [0] * (3 - len(parts))
            return float(int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2])
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        return None
    if len(parts) == 1:
        return float(parts[0] * 60)
    if len(parts) == 2:
        return float(parts[0] * 60 + parts[1])
    if len(parts) == 3:
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    return None


def slurm_mebibytes(text: str) -> float | None:
    """A SLURM memory size (``2G``, ``1954M``, ``100`` = MiB) in MiB; ``None`` if unreadable."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text, re.I)
    if not match:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2).upper()]
    return float(match.group(1)) * scale


def _option_named(spec: ClusterSpec, flags: Sequence[str], standard: str) -> str:
    """The spec option a directive came from: a ``job_extra_directives`` line naming one of
    ``flags`` (it overrides), else the standard option."""
    extra = spec.options.get("job_extra_directives") or []
    if any(str(line).strip().startswith(tuple(flags)) for line in extra):
        return "job_extra_directives"
    return standard


def check_slurm_fit(script: str, spec: ClusterSpec) -> None:
    """Check a SLURM job script against the site before submitting it: its partition exists
    and is up, its cores and memory fit one node of the partition, its walltime fits the
    partition's limit, and a GRES it asks for exists there. Skipped (silently) where
    ``scontrol`` cannot be run or answers nothing: the deadline still applies.

    Args:
        script: the job script dask-jobqueue renders (``cluster.job_script()``).
        spec: its spec (named in errors, with the option to change).

    Raises:
        ClusterError: one line naming the value that does not fit and the site's limit.
    """
    partitions = _records(_run_slurm(["scontrol", "-o", "show", "partition"]))
    nodes = _records(_run_slurm(["scontrol", "-o", "show", "node"]))
    if not partitions or not nodes:
        return
    where = f"cluster spec {spec.path!r}"
    want = sbatch_directives(script)
    by_name = {p.get("PartitionName", ""): p for p in partitions}
    if "partition" in want:
        names = want["partition"].split(",")
        option = _option_named(spec, ("-p", "--partition"), "queue")
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ClusterError(
                f"{where}: SLURM partition {missing[0]!r} (option '{option}') does not exist "
                f"here; partitions: {', '.join(sorted(by_name))}"
            )
    else:
        names = [n for n, p in by_name.items() if p.get("Default") == "YES"]
        if not names:
            raise ClusterError(
                f"{where}: the job names no partition and this site has no default one: set "
                f"option 'queue' to one of {', '.join(sorted(by_name))}"
            )
    # With several partitions, sbatch runs the job in whichever can start it first: it fits
    # when it fits one of them.
    problems = [_partition_problem(by_name[n], nodes, want, spec) for n in names]
    if all(problems):
        raise ClusterError(f"{where}: {problems[0]}")


def _partition_problem(
    partition: dict[str, str], nodes: list[dict[str, str]], want: dict[str, str], spec: ClusterSpec
) -> str | None:
    """Why a job does not fit a partition (``None`` when it fits)."""
    name = partition.get("PartitionName", "")
    state = partition.get("State", "UP")
    if state != "UP":
        return (
            f"SLURM partition {name!r} is {state}: its jobs would wait until an administrator "
            "brings it up; choose another 'queue'"
        )
    members = [n for n in nodes if name in n.get("Partitions", "").split(",")]
    if not members:
        return f"SLURM partition {name!r} has no nodes"
    limit = partition.get("MaxTime", "UNLIMITED")
    wall = slurm_seconds(want.get("time", ""))
    allowed = slurm_seconds(limit)
    if wall is not None and allowed is not None and wall > allowed:
        option = _option_named(spec, ("-t", "--time"), "walltime")
        return (
            f"walltime {want['time']} (option '{option}') is above the time limit "
            f"{limit} of SLURM partition {name!r}; lower it or choose another 'queue'"
        )
    cpus = _int(want.get("cpus-per-task", "1")) or 1
    if "mem" in want:
        mem = slurm_mebibytes(want["mem"])
        mem_text = f"--mem={want['mem']}"
    elif "mem-per-cpu" in want:
        per_cpu = slurm_mebibytes(want["mem-per-cpu"])
        mem = None if per_cpu is None else per_cpu * cpus
        mem_text = f"--mem-per-cpu={want['mem-per-cpu']} x {cpus} cores"
    else:
        mem, mem_text = None, ""
    if mem == 0:
        mem = None  # --mem=0: all of a node's memory, whatever it is
    cap_cpus = _int(partition.get("MaxCPUsPerNode", ""))
    cap_mem = _int(partition.get("MaxMemPerNode", ""))

    def node_cpus(node: dict[str, str]) -> int:
        have = _int(node.get("CPUEfctv", "")) or _int(node.get("CPUTot", "")) or 0
        return min(have, cap_cpus) if cap_cpus else have

    def node_mem(node: dict[str, str]) -> int:
        have = (_int(node.get("RealMemory", "")) or 0) - (_int(node.get("MemSpecLimit", "")) or 0)
        return min(have, cap_mem) if cap_mem else have

    most_cpus = max(node_cpus(n) for n in members)
    if cpus > most_cpus:
        option = _option_named(spec, ("-c", "--cpus-per-task"), "cores")
        return (
            f"{cpus} cores per job (option '{option}') is more than any node of SLURM partition "
            f"{name!r} has (largest: {most_cpus}); lower it or choose another 'queue'"
        )
    if mem is not None:
        most_mem = max(node_mem(n) for n in members)
        option = _option_named(spec, ("--mem",), "memory")
        if mem > most_mem:
            return (
                f"{mem_text} per job (option '{option}') is more memory than any node of SLURM "
                f"partition {name!r} has (largest: {most_mem}M); lower it or choose another "
                "'queue'"
            )
        if not any(node_cpus(n) >= cpus and node_mem(n) >= mem for n in members):
            return (
                f"no node of SLURM partition {name!r} has both {cpus} cores and {mem_text}; "
                f"lower 'cores' or '{option}'"
            )
    gres = want.get("gres")
    if gres:
        problem = _gres_problem(gres, members)
        if problem:
            return f"{problem} in SLURM partition {name!r} (option 'job_extra_directives')"
    return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _gres_problem(gres: str, nodes: list[dict[str, str]]) -> str | None:
    """Why no node gives ``--gres`` (``gpu:1``, ``gpu:a100:2``, comma-separated); ``None`` if
    one does or the request is not one read here."""
    for item in gres.split(","):
        parts = item.split(":")
        kind = parts[0]
        count = _int(parts[-1]) if len(parts) > 1 else 1
        if count is None:  # gpu:a100 (a type, count 1)
            count = 1
        kind_type = parts[1] if len(parts) == 3 else None
        best = 0
        for node in nodes:
            for have in node.get("Gres", "").split(","):
                have = have.split("(")[0]  # gpu:a100:4(S:0-1)
                fields = have.split(":")
                if fields[0] != kind or (kind_type and (len(fields) < 3 or fields[1] != kind_type)):
                    continue
                best = max(best, _int(fields[-1]) or 0)
        if best < count:
            wanted = f"{kind}:{kind_type}" if kind_type else kind
            return f"--gres={item} asks for {count} {wanted} per node but no node has " + (
                f"more than {best}" if best else "any"
            )
    return None
