import numpy as np
import pytest
import torch

from shardeval.kernels import (
    shard_moments,
    shard_moments_blas,
    shard_moments_reference,
    shard_moments_torch,
)

# Relative tolerance of m2 (scaled by max |m2|) and of the mean per input dtype: the inputs are
# converted to fp32 (fp64 stays fp64) and the products accumulate in that precision.
TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 2e-6,
    torch.float16: 2e-6,
    torch.bfloat16: 2e-6,
    torch.int32: 2e-6,
}
SHAPES = [(1, 3), (7, 3), (7, 64), (1000, 129), (1000, 3), (130, 64)]
PATHS = {
    "blas": shard_moments_blas,
    "torch": shard_moments_torch,
    "dispatch": lambda x: shard_moments(x),
}


def _data(n, d, dtype, offset=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + offset
    if dtype == torch.int32:
        return (x * 10).round().to(dtype)
    return x.to(dtype)


def _check(got, x, rtol):
    ref = np.asarray(x.to(torch.float64).numpy())
    mean = ref.mean(axis=0)
    m2 = (ref - mean).T @ (ref - mean)
    assert got.n == ref.shape[0]
    assert got.mean.dtype == torch.float64
    assert got.m2.dtype == torch.float64
    scale = max(np.abs(m2).max(), 1e-300)
    np.testing.assert_allclose(got.mean.numpy(), mean, rtol=rtol, atol=rtol * np.abs(mean).max())
    np.testing.assert_allclose(got.m2.numpy(), m2, rtol=0, atol=rtol * scale)
    np.testing.assert_array_equal(got.m2.numpy(), got.m2.numpy().T)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_against_float64_definition(path, shape, dtype):
    x = _data(*shape, dtype)
    _check(PATHS[path](x), x, TOLERANCE[dtype])


def test_reference_is_the_definition():
    x = _data(50, 5, torch.float64)
    _check(shard_moments_reference(x), x, 1e-13)


@pytest.mark.parametrize("path", ["blas", "torch"])
def test_large_mean_does_not_cancel(path):
    # Mean 1e4 against unit spread: raw Σxxᵀ − n·μμᵀ in fp32 would lose every digit of m2.
    x = (torch.randn(4000, 16, generator=torch.Generator().manual_seed(1)) + 1e4).float()
    _check(PATHS[path](x), x, 1e-5)


def test_empty_block_gives_zero_state():
    got = shard_moments(torch.empty(0, 4))
    assert got.n == 0
    assert torch.count_nonzero(got.m2) == 0


@pytest.mark.parametrize(
    ("bad", "err"),
    [
        (torch.zeros(3), ValueError),
        (torch.zeros(2, 2, 2), ValueError),
        (torch.zeros(3, 2, dtype=torch.complex64), TypeError),
        (torch.zeros(3, 2, dtype=torch.bool), TypeError),
        (np.zeros(3), ValueError),
        (np.zeros((3, 2), dtype=np.complex64), TypeError),
        (np.zeros((3, 2), dtype=bool), TypeError),
        ([[1.0, 2.0]], TypeError),
    ],
)
def test_rejects_bad_input(bad, err):
    with pytest.raises(err):
        shard_moments(bad)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, np.uint16])
def test_numpy_input_needs_no_torch_and_matches_the_definition(shape, dtype):
    x = _data(*shape, torch.float64).numpy()
    x = (np.abs(x) * 10).round().astype(dtype) if np.dtype(dtype).kind in "iu" else x.astype(dtype)
    got = shard_moments(x)
    assert isinstance(got.mean, np.ndarray)
    rtol = 1e-12 if np.dtype(dtype).itemsize >= 4 and dtype != np.float32 else 2e-6
    _check(
        type(got)(got.n, torch.from_numpy(got.mean), torch.from_numpy(got.m2)),
        torch.from_numpy(x.astype(np.float64)),
        rtol,
    )


@pytest.mark.parametrize("magnitude", [1e-25, 1e-22, 1e18, 1e30])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_magnitudes_outside_fp32_range_are_scaled_exactly(magnitude, as_tensor):
    # Squares of 1e-25 underflow fp32, sums of squares of 1e18 overflow it: without the
    # power-of-two scaling the co-moment is 0 or inf.
    x64 = _data(500, 8, torch.float64, offset=3.0).numpy() * magnitude
    x = x64.astype(np.float32)
    got = shard_moments(torch.from_numpy(x) if as_tensor else x)
    m2 = np.asarray(got.m2)
    ref = shard_moments_reference(torch.from_numpy(x))
    scale = float(ref.m2.abs().max())
    assert np.isfinite(m2).all()
    np.testing.assert_allclose(m2, ref.m2.numpy(), rtol=0, atol=2e-6 * scale)
    np.testing.assert_array_equal(m2, m2.T)


def test_wide_integers_keep_their_digits():
    # 1e10 + small noise: fp32 holds 7 digits, so an fp32 cast would leave no variance at all.
    g = torch.Generator().manual_seed(3)
    x = (torch.randint(-50, 50, (400, 5), generator=g) + 10**10).to(torch.int64)
    ref = shard_moments_reference(x)
    for got in (shard_moments(x), shard_moments(x.numpy())):
        np.testing.assert_allclose(np.asarray(got.m2), ref.m2.numpy(), rtol=1e-12)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown kernel backend"):
        shard_moments(torch.zeros(2, 2), backend="cuda-magic")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gil_free_syrk_matches_blas_definition(dtype):
    from shardeval.kernels._blas import syrk_upper

    a = np.random.default_rng(3).standard_normal((37, 11)).astype(dtype)
    c = np.asfortranarray(np.tril(np.ones((11, 11), dtype)))  # lower part must survive
    syrk_upper(a.T, c, beta=2.0)
    expected = a.T.astype(np.float64) @ a + 2.0 * np.eye(11)  # c's upper part was the identity
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(np.triu(c), np.triu(expected), rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(np.tril(c, -1), np.tril(np.ones((11, 11)), -1))


def test_gil_free_syrk_rejects_c_ordered_operands():
    from shardeval.kernels._blas import syrk_upper

    a = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="Fortran"):
        syrk_upper(a, np.zeros((5, 5), np.float32, order="F"), 0.0)
    with pytest.raises(ValueError, match="Fortran-ordered"):
        syrk_upper(a.T, np.zeros((3, 3), np.float32), 0.0)
