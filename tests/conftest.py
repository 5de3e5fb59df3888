import os

# Triton kernels run in the interpreter on CPU-only machines; it is read when a kernel module is
# first imported, so set it before anything imports them.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import zarr


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def png_folder(root, n, seed, size=20, **save):
    """``n`` random RGB PNGs of ``size`` × ``size`` (from ``seed``) in a new folder ``root``;
    ``save``: PIL's save options (``compress_level=0``: a size set by the shape alone)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:02d}.png", **save)
    return str(root)


def write_zarr(path, x, chunk_rows=64, **attrs):
    arr = zarr.create_array(
        str(path),
        shape=x.shape,
        chunks=(chunk_rows, x.shape[1]),
        dtype=x.dtype,
        overwrite=True,
        dimension_names=("sample", "feature"),
    )
    arr[...] = x
    arr.attrs.update(attrs)
    return str(path)


@pytest.fixture
def feature_pair(tmp_path, rng):
    """Two small Zarr feature stores with different means and covariances."""
    d = 24
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    real = (rng.standard_normal((900, d)) @ a + 3.0).astype(np.float32)
    gen = (rng.standard_normal((700, d)) @ (1.2 * a) + 3.1).astype(np.float32)
    return (
        write_zarr(tmp_path / "real.zarr", real, feature_extractor="test-net"),
        real,
        write_zarr(tmp_path / "gen.zarr", gen),
        gen,
    )


@pytest.fixture
def fp32_flags():
    """Restore this process's fp32 product flags (PyTorch's, process-wide) after the test."""
    import torch

    backends = torch.backends
    saved = (
        torch.get_float32_matmul_precision(),
        backends.cudnn.conv.fp32_precision,
        backends.cudnn.rnn.fp32_precision,
        backends.cuda.matmul.fp32_precision,
    )
    yield
    torch.set_float32_matmul_precision(saved[0])
    backends.cudnn.conv.fp32_precision = saved[1]
    backends.cudnn.rnn.fp32_precision = saved[2]
    backends.cuda.matmul.fp32_precision = saved[3]


# The interpreter must exit once the session is over. A CI run on a fresh machine once printed
# its summary ("900 passed") and then never exited, until the CI's time limit killed it; the
# cause did not reproduce here. If exit takes longer than this after the session, the stacks of
# every thread and the live child processes go to stderr (so the log names what held it), and
# the process ends with the session's own status, which the tests had already decided.
_EXIT_GRACE_SECONDS = 120
_EXIT_STATUS = pytest.StashKey[int]()
#: Set to 0 by a runner that runs many sessions in one long-lived process (the mutation tool,
#: tools/mutation.py): there the process outlives each session by design, and the watchdog
#: would end it 120 s after the first.
_EXIT_WATCHDOG_VARIABLE = "SHARDEVAL_TEST_EXIT_WATCHDOG"


def pytest_unconfigure(config):
    import faulthandler
    import sys
    import threading
    import time

    if os.environ.get(_EXIT_WATCHDOG_VARIABLE) == "0":
        return
    status = config.stash.get(_EXIT_STATUS, 1)  # 1: the session never finished

    def watch():
        time.sleep(_EXIT_GRACE_SECONDS)
        err = sys.__stderr__
        print(
            f"\nconftest: the test process did not exit {_EXIT_GRACE_SECONDS} s after the "
            "session; thread stacks and child processes follow",
            file=err,
        )
        faulthandler.dump_traceback(file=err, all_threads=True)
        for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
                if parent == os.getpid():
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        command = fh.read().replace(b"\0", b" ")
                    print(f"child {pid}: {command!r}", file=err)
            except (OSError, ValueError, IndexError):
                continue
        err.flush()
        os._exit(status)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A file of random FID Inception weights (pytorch-fid's keys), written once for the whole
    session: the image tests need real files of the real layout, not the real weights."""
    import torch

    from shardeval.kernels.encoders.inception import random_state_dict

    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(random_state_dict(3), path)
    return str(path)
