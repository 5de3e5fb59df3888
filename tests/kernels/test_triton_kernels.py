"""Every Triton kernel through the interpreter (TRITON_INTERPRET=1, set in tests/conftest.py)
on awkward shapes, against its float64 torch reference, with a per-dtype tolerance table."""

import math

import numpy as np
import pytest
import torch

from shardeval.kernels import (
    gaussian_logpdf,
    gaussian_logpdf_reference,
    logsumexp,
    logsumexp_reference,
    parzen_logpdf,
    shard_moments,
    shard_moments_reference,
    weight_stats,
    weight_stats_reference,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or the Triton interpreter",
)

ROWS = [1, 7, 1000]
DIMS = [3, 64, 129]
# Relative tolerance of each kernel's output per input dtype. Inputs are upcast on load, and the
# reference sees the same (rounded) values, so half precision costs no extra tolerance; fp64
# accumulates in fp64 where the kernel supports it (moments, LSE).
MOMENTS_TOL = {torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6, torch.float64: 1e-12}
LSE_TOL = {torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6, torch.float64: 1e-12}
DENSITY_TOL = {torch.float32: 2e-5, torch.float64: 2e-5}


def _x(n, d, dtype, seed=0, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5 + offset).to(dtype)


@pytest.mark.parametrize("dtype", list(MOMENTS_TOL))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", ROWS)
def test_shard_moments(n, d, dtype):
    x = _x(n, d, dtype)
    got, ref = shard_moments(x, backend="triton"), shard_moments_reference(x)
    tol = MOMENTS_TOL[dtype]
    assert got.n == n
    np.testing.assert_allclose(got.mean, ref.mean, rtol=tol, atol=tol * 3)
    scale = max(float(ref.m2.abs().max()), 1.0)
    np.testing.assert_allclose(got.m2, ref.m2, rtol=0, atol=tol * scale * max(1, math.log2(n)))
    np.testing.assert_array_equal(got.m2, got.m2.T)


def test_shard_moments_large_offset_one_pass():
    x = (torch.randn(500, 33, generator=torch.Generator().manual_seed(2)) + 1e4).float()
    got, ref = shard_moments(x, backend="triton"), shard_moments_reference(x)
    np.testing.assert_allclose(got.m2, ref.m2, rtol=0, atol=1e-5 * float(ref.m2.abs().max()))


def test_shard_moments_tf32x3_runs_close():
    x = _x(200, 40, torch.float32)
    got = shard_moments(x, backend="triton", dot_precision="tf32x3")
    ref = shard_moments_reference(x)
    np.testing.assert_allclose(got.m2, ref.m2, rtol=0, atol=1e-4 * float(ref.m2.abs().max()))


def _lse_value(pair):
    return pair.max + torch.log(pair.sum)


@pytest.mark.parametrize("dtype", list(LSE_TOL))
@pytest.mark.parametrize("k", [1, 7, 129, 1000])
@pytest.mark.parametrize("n", ROWS)
def test_row_logsumexp(n, k, dtype):
    x = (_x(n, k, torch.float64, offset=0.0) * 30).to(dtype)
    got, ref = logsumexp(x, dim=1, backend="triton"), logsumexp_reference(x, dim=1)
    np.testing.assert_allclose(got.max, ref.max, rtol=0, atol=0)
    np.testing.assert_allclose(_lse_value(got), _lse_value(ref), rtol=LSE_TOL[dtype])


@pytest.mark.parametrize("dtype", list(LSE_TOL))
@pytest.mark.parametrize("n", [1, 7, 1000, 5003])
def test_flat_logsumexp_and_weight_stats(n, dtype):
    x = (_x(n, 1, torch.float64, offset=-5.0).reshape(-1) * 20).to(dtype)
    got, ref = logsumexp(x, backend="triton"), logsumexp_reference(x)
    assert float(got.max) == float(ref.max)
    np.testing.assert_allclose(float(got.sum), float(ref.sum), rtol=LSE_TOL[dtype])
    w, wr = weight_stats(x, top=5, backend="triton"), weight_stats_reference(x, top=5)
    assert w.n == wr.n == n
    np.testing.assert_allclose([w.sum, w.sum_sq], [wr.sum, wr.sum_sq], rtol=LSE_TOL[dtype])
    np.testing.assert_array_equal(w.top, wr.top)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_lse_neg_inf_and_huge_magnitudes(backend):
    ninf = float("-inf")
    x = torch.tensor(
        [
            [ninf, ninf, ninf],
            [1e30, ninf, 1e30],
            [-1e30, -1e30 - 1e24, ninf],
            [0.0, 1000.0, -1000.0],
        ],
        dtype=torch.float32,
    )
    got = logsumexp(x, dim=1, backend=backend)
    assert got.max[0] == ninf
    assert got.sum[0] == 0
    assert got.sum[1] == 2.0
    assert got.max[1] == float(torch.tensor(1e30, dtype=torch.float32))
    assert torch.isfinite(_lse_value(got)[1:]).all()
    assert float(got.sum[3]) == pytest.approx(1.0)
    flat = logsumexp(torch.full((37,), ninf), backend=backend)
    assert float(flat.max) == ninf
    assert float(flat.sum) == 0.0
    w = weight_stats(torch.tensor([ninf, ninf, 0.0, ninf]), backend=backend)
    assert (float(w.max), float(w.sum), float(w.sum_sq)) == (0.0, 1.0, 1.0)


@pytest.mark.parametrize("dtype", list(DENSITY_TOL))
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", ROWS)
def test_gaussian_logpdf(n, d, dtype):
    g = torch.Generator().manual_seed(d)
    a = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    chol = torch.linalg.cholesky(a @ a.T / (2 * d) + 0.5 * torch.eye(d, dtype=torch.float64))
    mean = torch.randn(d, generator=g, dtype=torch.float64) + 3
    x = _x(n, d, dtype)
    got = gaussian_logpdf(x, mean, chol, backend="triton")
    ref = gaussian_logpdf_reference(x, mean, chol)
    np.testing.assert_allclose(got, ref, rtol=DENSITY_TOL[dtype])


def _parzen_brute_force(x, y, h):
    x, y = x.double().numpy(), y.double().numpy()
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    logits = -sq / (2 * h * h)
    m = logits.max(axis=1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    return lse - np.log(len(y)) - 0.5 * x.shape[1] * np.log(2 * np.pi * h * h)


@pytest.mark.parametrize("dtype", list(DENSITY_TOL))
@pytest.mark.parametrize(("n", "m", "d"), [(1, 1, 3), (7, 1000, 3), (1000, 7, 64), (130, 129, 129)])
def test_parzen_logpdf(n, m, d, dtype):
    x, y = _x(n, d, dtype, seed=1, offset=50.0), _x(m, d, dtype, seed=2, offset=50.0)
    h = 0.7 * math.sqrt(d)
    expected = _parzen_brute_force(x, y, h)
    for backend in ("triton", "torch"):
        got = parzen_logpdf(x, y, h, backend=backend)
        np.testing.assert_allclose(got, expected, rtol=DENSITY_TOL[dtype])


def test_parzen_far_queries_stay_finite():
    # Every kernel value underflows in a direct sum (densities ~ e^-5000); the LSE keeps it.
    x, y = torch.full((3, 2), 100.0), torch.zeros(4, 2)
    for backend in ("triton", "torch"):
        got = parzen_logpdf(x, y, 1.0, backend=backend)
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got, _parzen_brute_force(x, y, 1.0), rtol=1e-6)
