"""The CPU paths of ESS and the importance-weighted NLL take numpy sums (no torch import);
they agree with the torch kernels' sums, and running them imports no torch."""

import subprocess
import sys

import numpy as np
import pytest

from shardeval.pipeline.likelihood.ess import summarize_weights
from shardeval.pipeline.likelihood.nll import summarize_importance


def _log_weights(rng, shape):
    lw = rng.standard_t(3, size=shape) * 4.0
    lw.reshape(-1)[::7] = -np.inf  # zero weights are legal
    return lw


@pytest.mark.parametrize("shape", [(1,), (2,), (1000,), (37, 1), (37, 64), (5, 1000)])
def test_weight_sums_agree_with_the_torch_path(shape):
    lw = _log_weights(np.random.default_rng(len(shape) * 31 + shape[0]), shape)
    numpy_path = summarize_weights(lw, 0, keep=20, reff=1.0, device="cpu", backend="auto")
    torch_path = summarize_weights(lw, 0, keep=20, reff=1.0, device="cpu", backend="torch")
    a, b = numpy_path.weights, torch_path.weights
    assert a.n == b.n
    assert a.max == b.max
    np.testing.assert_allclose([a.sum, a.sum_sq], [b.sum, b.sum_sq], rtol=1e-13)
    np.testing.assert_array_equal(a.top, b.top)


def test_importance_rows_agree_with_the_torch_path():
    lw = _log_weights(np.random.default_rng(3), (200, 48))
    lw[5] = -np.inf  # a row of zero weights: counted apart, not NaN
    lw[9, 3] = np.nan
    a = summarize_importance(lw, 0, 1.0, "cpu", "auto")
    b = summarize_importance(lw, 0, 1.0, "cpu", "torch")
    assert (a.values.n, a.nonfinite, a.all_zero) == (b.values.n, b.nonfinite, b.all_zero)
    np.testing.assert_allclose(a.values.mean, b.values.mean, rtol=1e-13)
    np.testing.assert_allclose(a.values.m2, b.values.m2, rtol=1e-11)
    np.testing.assert_array_equal(a.ess_fraction.counts, b.ess_fraction.counts)
    np.testing.assert_array_equal(a.khat.counts, b.khat.counts)


def test_cpu_paths_of_ess_and_nll_import_no_torch(tmp_path):
    np.save(tmp_path / "lw.npy", _log_weights(np.random.default_rng(1), (2000,)))
    np.save(tmp_path / "lw2.npy", _log_weights(np.random.default_rng(2), (50, 30)))
    np.save(tmp_path / "ll.npy", np.random.default_rng(3).normal(-30, 2, size=500))
    script = f"""
import sys
import shardeval as se
se.ess({str(tmp_path / "lw.npy")!r})
se.ess({str(tmp_path / "lw2.npy")!r})
se.nll({str(tmp_path / "ll.npy")!r})
se.nll(iw={str(tmp_path / "lw2.npy")!r})
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


@pytest.mark.parametrize("shape", [(2,), (1000,), (37, 64)])
def test_the_sums_of_cubes_and_fourth_powers_agree_with_the_torch_path(shape):
    lw = _log_weights(np.random.default_rng(shape[0] + 5), shape)
    a = summarize_weights(lw, 0, 20, 1.0, "cpu", "auto", True).weights
    b = summarize_weights(lw, 0, 20, 1.0, "cpu", "torch", True).weights
    finite = lw[np.isfinite(lw)]
    w = np.exp(finite - finite.max())
    np.testing.assert_allclose([a.sum_cube, a.sum_fourth], [(w**3).sum(), (w**4).sum()], rtol=1e-13)
    np.testing.assert_allclose([a.sum_cube, a.sum_fourth], [b.sum_cube, b.sum_fourth], rtol=1e-13)
    assert (a.sum, a.sum_sq) == (
        summarize_weights(lw, 0, 20, 1.0, "cpu", "auto").weights.sum,
        summarize_weights(lw, 0, 20, 1.0, "cpu", "auto").weights.sum_sq,
    )
