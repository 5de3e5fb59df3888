"""A Dask worker preload that makes the worker's fp32 GPU products IEEE, not TF32.

PyTorch lets cuDNN convolutions round fp32 inputs to TF32 by default on GPUs of compute
capability 8.0 and later (10 mantissa bits, up to 4.9e-4 relative error per input); the flag
is process-wide, so it is set once when the worker starts, before any task runs, never from a
task. The cluster specs in ``cluster/`` that start GPU workers load it:

.. code-block:: console

    dask worker tcp://scheduler:8786 --preload shardeval.pipeline.core.ieee_fp32

``shardeval extract`` and ``shardeval run`` set the same flags in their own process; an
extraction task on a worker that would still round to TF32 stops with one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine


def dask_setup(worker: Any = None) -> None:
    """Called by Dask when the worker starts."""
    from shardeval.kernels import use_ieee_fp32

    use_ieee_fp32()


def set_in_this_process(engine: Engine, device: str) -> None:
    """For a command's entry point, before it computes: when encoders will run in this process
    (a local scheduler) and may use a GPU, make its fp32 products IEEE."""
    from shardeval.pipeline.core.chunks import uses_gpu

    if not engine.is_distributed and uses_gpu(device):
        dask_setup()
