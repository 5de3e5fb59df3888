"""One place that decides where a kernel runs.

``auto`` picks the Triton kernel for CUDA tensors and the torch/BLAS path for CPU tensors.
``triton`` forces the Triton kernel; on a CPU tensor that only works under the Triton
interpreter (``TRITON_INTERPRET=1`` set before :mod:`kernels` is imported), which is how the
test-suite exercises every kernel on machines without a GPU.

Where Triton is chosen on a GPU, the launch goes through
:func:`shardeval.kernels._selfcheck.launch`: each kernel is checked once per process and device
on first use, and one that fails there (does not compile, or disagrees with its torch path) runs
as the torch path from then on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[Backend, ...] = ("auto", "triton", "torch")


def triton_interpreted() -> bool:
    """True when Triton kernels run in the interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_INTERPRETER_LOCK = threading.Lock()


@contextlib.contextmanager
def launch_guard() -> Iterator[None]:
    """Serialise kernel launches under the Triton interpreter, which patches ``triton.language``
    globally while a kernel runs and so breaks when two Dask threads interpret at once. Compiled
    launches need no lock."""
    if triton_interpreted():
        with _INTERPRETER_LOCK:
            yield
    else:
        yield


def _fp32_precision(*nodes: object) -> str | None:
    """The first explicit ``fp32_precision`` from a leaf up its parents (``none`` inherits);
    None on a PyTorch without this interface (before 2.9), whose legacy flags then apply."""
    for node in nodes:
        value = getattr(node, "fp32_precision", None)
        if value is None:
            return None
        if value != "none":
            return str(value)
    return "ieee"


def tf32_matmuls() -> bool:
    """Whether fp32 CUDA matmuls in this process may round their inputs to TF32 (PyTorch's
    default: no; a user's ``allow_tf32``, ``fp32_precision`` or
    ``set_float32_matmul_precision`` may say yes)."""
    import torch

    backends = torch.backends
    if torch.get_float32_matmul_precision() != "highest":
        return True
    precision = _fp32_precision(backends.cuda.matmul, backends)
    if precision is None:
        return bool(backends.cuda.matmul.allow_tf32)
    return precision == "tf32"


def tf32_convolutions() -> bool:
    """Whether fp32 cuDNN convolutions in this process may round their inputs to TF32
    (PyTorch's default: yes, on GPUs of compute capability 8.0 and later)."""
    import torch

    backends = torch.backends
    conv = getattr(backends.cudnn, "conv", None)
    precision = None if conv is None else _fp32_precision(conv, backends.cudnn, backends)
    if precision is None:
        return bool(backends.cudnn.allow_tf32)
    return precision == "tf32"


def use_ieee_fp32() -> None:
    """Make fp32 CUDA matmuls and cuDNN convolutions of this process use IEEE products.

    Process-wide flags: for a program's entry point or a worker's start, before any thread
    computes, never from a task (another thread may be computing under the old value).
    """
    import torch

    backends = torch.backends
    conv = getattr(backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # The new interface only: PyTorch refuses to read flags set through both.
        for node in (conv, getattr(backends.cudnn, "rnn"), backends.cuda.matmul):  # noqa: B009
            node.fp32_precision = "ieee"
    else:
        backends.cudnn.allow_tf32 = False
        backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(x: torch.Tensor, backend: str) -> Literal["triton", "torch"]:
    """Turn a requested backend into the one that will run for tensor ``x``.

    Raises:
        ValueError: for an unknown backend name, or ``triton`` on a CPU tensor without the
            interpreter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend 'triton' requested but triton is not installed")
        if not x.is_cuda and not triton_interpreted():
            raise ValueError(
                "backend 'triton' on a CPU tensor needs the Triton interpreter: "
                "set TRITON_INTERPRET=1 before importing kernels"
            )
        return "triton"
    return "torch"


def check_matrix(x: torch.Tensor, name: str = "x") -> None:
    """Shape/dtype check shared by the launchers: a 2-D real tensor."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x features), got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
