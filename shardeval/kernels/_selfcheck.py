"""The first-use check of every Triton kernel, and the torch fallback when one fails.

A kernel that compiled and agreed on the machines of this project's tests can still fail on a
user's GPU: another architecture, driver or Triton release, too little shared memory for a
tile. One such kernel must not end a job, and must never give a plausible wrong number. So, in
each process (a Dask worker, a training script), the first time a Triton kernel is about to run
on a device it is checked once against its torch path on a small input
(the :class:`~shardeval.kernels._checking.KernelSpec` its launcher module declares beside it
holds the inputs, the comparison and the tolerances). A compile
error, a launch error or a disagreement beyond the kernel's tolerance gives one
:class:`KernelCheckWarning` naming the kernel and the GPU, and every later call of that kernel
on that device in this process takes the torch path: slower, and right. A kernel that passed
but fails to compile later, for a new specialisation (another dtype or block shape), is handled
the same way at that launch.

Where the check applies: CUDA devices (:data:`CHECKED_DEVICE_TYPES`). CPU tensors never reach a
Triton kernel outside the interpreter, so CPU-only paths pay nothing, not even an import; the
interpreter tests add ``"cpu"`` to exercise the check itself.

``SHARDEVAL_KERNEL_CHECK`` (read at each first use) chooses what a failure does:
``fallback`` (default) warns and uses the torch path; ``strict`` raises
:class:`KernelCheckError` (for acceptance runs such as ``make gpu-check``, where a fallback
would hide the failure); ``off`` runs no check and no fallback.

Verdicts are kept per (kernel, device) for the life of the process; concurrent first uses from
several threads wait for one check.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from shardeval.kernels._checking import Verdict, describe, first_use_check

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: Device types whose Triton launches are checked on first use. CUDA only: the Triton
#: interpreter on CPU tensors is the test suite's, which adds "cpu" to test the check itself.
CHECKED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)

#: The environment variable choosing what a failed check does, and its values.
POLICY_VARIABLE = "SHARDEVAL_KERNEL_CHECK"
POLICIES = ("fallback", "strict", "off")


class KernelCheckWarning(UserWarning):
    """A Triton kernel failed on this device (compile error, launch error or wrong values);
    this process uses the torch path for it from now on. A UserWarning, so that a report's
    ``warnings`` record that its numbers came from the torch path.

    Attributes:
        kernel: the kernel's name (:data:`shardeval.kernels.checks.KERNELS` lists them).
        device: the torch device, e.g. ``cuda:0``.
        gpu: the device's name, e.g. ``NVIDIA H100 80GB HBM3``.
        reason: what failed.
    """

    def __init__(
        self, kernel: str, device: str, gpu: str, reason: str, workers: tuple[str, ...] = ()
    ) -> None:
        where, who = "", "this process uses"
        if workers:  # relayed to the client of a cluster, whose workers ran the check
            label = "worker" if len(workers) == 1 else "workers"
            where, who = (
                f" of {label} {', '.join(workers)}",
                f"that {label} {'uses' if len(workers) == 1 else 'use'}",
            )
        super().__init__(
            f"Triton kernel {kernel!r} failed its check on {gpu} ({device}){where}: {reason}; "
            f"{who} the torch path for {kernel!r} on {device} from now on (results stay "
            f"right, more slowly; {POLICY_VARIABLE}=strict makes this an error)"
        )
        self.kernel, self.device, self.gpu, self.reason = kernel, device, gpu, reason
        self.workers = workers


class KernelCheckError(RuntimeError):
    """A Triton kernel failed on this device under ``SHARDEVAL_KERNEL_CHECK=strict``."""

    def __init__(self, kernel: str, device: str, gpu: str, reason: str) -> None:
        super().__init__(
            f"Triton kernel {kernel!r} failed its check on {gpu} ({device}): {reason} "
            f"({POLICY_VARIABLE}=strict)"
        )
        self.kernel, self.device, self.gpu, self.reason = kernel, device, gpu, reason


_VERDICTS: dict[tuple[str, str], Verdict] = {}
_GPUS: dict[tuple[str, str], str] = {}  # the device's name, where a check failed
_KEY_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCK = threading.Lock()
_LAUNCHES: Counter[str] = Counter()


def policy() -> str:
    """The failure policy in force (``SHARDEVAL_KERNEL_CHECK``; ``fallback`` when unset).

    Raises:
        ValueError: the variable holds something else.
    """
    value = os.environ.get(POLICY_VARIABLE, "").strip().lower() or "fallback"
    if value not in POLICIES:
        raise ValueError(f"{POLICY_VARIABLE}={value!r}: expected one of {', '.join(POLICIES)}")
    return value


def device_key(device: torch.device) -> str:
    """``cuda:0`` for a CUDA device (the current one when no index is given), ``cpu``."""
    if device.type == "cuda" and device.index is None:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def device_name(device: torch.device) -> str:
    """The GPU's name for a message, or what runs the kernels on a CPU."""
    if device.type == "cuda":
        import torch

        return str(torch.cuda.get_device_name(device))
    return "CPU (Triton interpreter)"


def _applies(device: torch.device) -> bool:
    return device.type in CHECKED_DEVICE_TYPES and policy() != "off"


def _fail(kernel: str, device: torch.device, verdict: Verdict) -> None:
    """Record a failed verdict; warn once, or raise under the strict policy."""
    key = (kernel, device_key(device))
    gpu = device_name(device)
    with _LOCK:
        known = _VERDICTS.get(key)
        _VERDICTS[key] = verdict
        _GPUS[key] = gpu
    if policy() == "strict":
        raise KernelCheckError(kernel, key[1], gpu, verdict.reason)
    if known is None or known.ok:  # one warning per kernel and device
        warnings.warn(KernelCheckWarning(kernel, key[1], gpu, verdict.reason), stacklevel=4)


def _check(kernel: str, device: torch.device) -> Verdict:
    """Run the kernel's first-use check, as the launcher module that names it declared it."""
    return first_use_check(kernel, device)


def verdict(kernel: str, device: torch.device) -> Verdict:
    """The kernel's verdict on ``device``, checking it on first use (once per process).

    Where the check does not apply (CPU tensors, ``SHARDEVAL_KERNEL_CHECK=off``) the kernel is
    taken as it is, with no check and no cost beyond this call.

    Raises:
        KernelCheckError: the check failed under ``SHARDEVAL_KERNEL_CHECK=strict``.
    """
    if not _applies(device):
        return Verdict(True)
    key = (kernel, device_key(device))
    known = _VERDICTS.get(key)  # the fast path: a dict read, no lock
    if known is not None:
        if not known.ok and policy() == "strict":
            raise KernelCheckError(kernel, key[1], device_name(device), known.reason)
        return known
    with _LOCK:
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:  # a second thread's first use waits for this check, then reads its verdict
        known = _VERDICTS.get(key)
        if known is None:
            found = _check(kernel, device)
            if found.ok:
                with _LOCK:
                    _VERDICTS[key] = found
            else:
                _fail(kernel, device, found)
            known = found
    return known


def launch(
    kernel: str,
    device: torch.device,
    triton_call: Callable[[], T],
    torch_call: Callable[[], T],
) -> T:
    """``triton_call()`` where the kernel passed its check on ``device``, else ``torch_call()``.

    A Triton compile or launch error here (a specialisation the check did not compile) marks
    the kernel failed on this device, warns once, and returns ``torch_call()``; an error of
    the torch path, or running out of memory, propagates.

    Raises:
        KernelCheckError: the kernel failed under ``SHARDEVAL_KERNEL_CHECK=strict``.
    """
    if not verdict(kernel, device).ok:
        return torch_call()
    if not _applies(device):
        result = triton_call()
        _count(kernel)
        return result
    import torch

    try:
        result = triton_call()
    except torch.OutOfMemoryError:
        raise  # the torch path needs the memory too: not the kernel's failure
    except Exception as err:  # any failure of a kernel on this GPU: compile, PTX, launch
        _fail(kernel, device, Verdict(False, f"failed at launch: {describe(err)}"))
        return torch_call()
    _count(kernel)
    return result


def _count(kernel: str) -> None:
    with _LOCK:
        _LAUNCHES[kernel] += 1


def launches() -> dict[str, int]:
    """How many times each kernel ran as Triton through the dispatcher in this process (so an
    acceptance run can tell that a backend really used the kernels it names)."""
    with _LOCK:
        return dict(_LAUNCHES)


def verdicts() -> dict[tuple[str, str], Verdict]:
    """Every verdict reached in this process, by (kernel, device)."""
    with _LOCK:
        return dict(_VERDICTS)


def failed_checks() -> list[tuple[str, str, str, str]]:
    """(kernel, device, GPU name, reason) of every kernel whose check failed in this process:
    what its :class:`KernelCheckWarning` said. A cluster's client asks its workers for them
    (the warning itself goes to a worker's log, which the user of a report does not read)."""
    with _LOCK:
        return [
            (kernel, device, _GPUS.get((kernel, device), device), verdict.reason)
            for (kernel, device), verdict in sorted(_VERDICTS.items())
            if not verdict.ok
        ]


def forget() -> None:
    """Drop every verdict and count (tests; a process that wants its kernels checked again)."""
    with _LOCK:
        _VERDICTS.clear()
        _GPUS.clear()
        _KEY_LOCKS.clear()
        _LAUNCHES.clear()
