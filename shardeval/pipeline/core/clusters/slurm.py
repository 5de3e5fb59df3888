"""SLURM worker jobs: the commands that ask the controller about them, what each job is doing in
one line, cancelling them, and recording what dask-jobqueue submits (and what ``sbatch``
refuses) so that a run can name and cancel its jobs.

Every SLURM command but ``squeue`` (whose errors are read) goes through :func:`run_slurm`, which
bounds it by :data:`SLURM_COMMAND_TIMEOUT`: a controller that does not answer must not hang the
run that asks it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from typing import Any

from shardeval.pipeline.errors import ClusterError

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


def run_slurm(command: Sequence[str]) -> str | None:
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


def scontrol_records(text: str | None) -> list[dict[str, str]]:
    """``scontrol -o show …`` output: one record a line, ``Key=Value`` words (values in which
    SLURM puts spaces, such as ``OS=``, are cut at the first space; none is used here)."""
    if not text:
        return []
    return [
        dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", line)) for line in text.splitlines() if line
    ]


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
    out = run_slurm(["scontrol", "-o", "show", "job", job_id])
    return scontrol_records(out)[0] if out else {}


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
        run_slurm(["scancel", *ids])


def _permanent(reason: str) -> bool:
    return reason in PERMANENT_REASONS or "PerJob" in reason


def stop_if_hopeless(ids: Sequence[str], address: str, where: str) -> None:
    """Raise when no submitted job can still start a worker: every one has ended, or every one
    left pends for a reason waiting cannot clear (:data:`PERMANENT_REASONS`). Returns at once
    where the site does not let ``squeue`` look (the deadline still applies).

    Raises:
        ClusterError: naming each job, its state and SLURM's reason (the jobs are cancelled
            when they can never start).
    """
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


def recording_job_class(base: Any) -> Any:
    """A subclass of dask-jobqueue's job class that records the ID of every job it submits and
    the first error line of every ``sbatch`` that refuses one.

    dask-jobqueue submits from a callback on its event loop: an ``sbatch`` error there is only
    logged, and the run would wait for a worker that was never asked for. Recording it lets
    :func:`~.running.wait_for_workers` stop at once with SLURM's own words.
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
