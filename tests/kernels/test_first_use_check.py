"""The first-use check of each Triton kernel (issue 19, item 4), under the interpreter: a kernel
that gives wrong values, does not compile, or fails at a later launch gives one
KernelCheckWarning naming it and the GPU, and the process takes the torch path for it from then
on, with right results; the verdict is kept per (kernel, device), once, across threads; CPU-only
paths never reach the check.

The check applies to CUDA devices; these tests add "cpu" to the checked device types, which is
how the interpreter (TRITON_INTERPRET=1, set in tests/conftest.py) stands in for a GPU here.
"""

import ast
import os
import sys
import threading
import warnings

import numpy as np
import pytest
import torch

from shardeval.kernels import _selfcheck
from shardeval.kernels._selfcheck import KernelCheckError, KernelCheckWarning, Verdict

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter"
)

CPU = torch.device("cpu")


@pytest.fixture
def checked(monkeypatch):
    """Checks on CPU tensors (the interpreter standing in for a GPU), fresh verdicts."""
    monkeypatch.setattr(_selfcheck, "CHECKED_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(_selfcheck, "device_name", lambda device: "Test GPU 9000")
    monkeypatch.delenv(_selfcheck.POLICY_VARIABLE, raising=False)
    _selfcheck.forget()
    yield _selfcheck
    _selfcheck.forget()


def _rows(n, d, seed=0, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 1.5 + offset


def _compile_error():
    from triton.compiler.errors import CompilationError

    node = ast.parse("acc += tl.dot(a, b)").body[0]
    return CompilationError("acc += tl.dot(a, b)", node, "simulated: out of shared memory")


def _no_more_warnings(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    assert not [w for w in caught if issubclass(w.category, KernelCheckWarning)]
    return result


def test_cpu_paths_never_reach_the_check(monkeypatch):
    # Not even an import: with both modules made unimportable, every CPU path still runs.
    from shardeval.kernels import logsumexp, parzen_logpdf, shard_moments, weight_stats
    from shardeval.kernels.pairs import PairRequest, pair_reduce

    for name in ("shardeval.kernels._selfcheck", "shardeval.kernels.checks"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        from shardeval.kernels._selfcheck import launch  # noqa: F401
    shard_moments(np.ones((5, 3), np.float32))
    shard_moments(torch.ones(5, 3))
    logsumexp(torch.ones(4, 3), dim=1)
    logsumexp(torch.ones(4))
    weight_stats(torch.ones(9), top=2)
    parzen_logpdf(torch.ones(2, 3), torch.zeros(4, 3), 1.0)
    gaussian = __import__("shardeval.kernels", fromlist=["gaussian_logpdf"]).gaussian_logpdf
    gaussian(torch.ones(2, 3), torch.zeros(3), torch.eye(3))
    pair_reduce(torch.ones(4, 3), torch.zeros(5, 3), PairRequest(knn=2, radii=None))


def test_interpreted_cpu_tensors_are_not_checked_by_default(monkeypatch):
    # The interpreter tests of the kernels themselves must see the kernels, never a fallback.
    _selfcheck.forget()

    def no_check(kernel, device):
        raise AssertionError(f"checked {kernel} on {device}")

    monkeypatch.setattr(_selfcheck, "_check", no_check)
    from shardeval.kernels import shard_moments

    shard_moments(_rows(40, 5), backend="triton")
    assert _selfcheck.verdicts() == {}
    assert _selfcheck.launches()["shard_moments"] == 1
    _selfcheck.forget()


def test_wrong_values_warn_once_naming_kernel_and_gpu_and_fall_back(checked, monkeypatch):
    import shardeval.kernels._triton_moments as tm
    from shardeval.kernels import shard_moments, shard_moments_reference

    real, calls = tm.shifted_comoment_triton, []

    def wrong(x, shift, dot_precision="ieee"):
        calls.append(x.shape)
        comoment, col_sum = real(x, shift, dot_precision)
        return comoment * 1.01, col_sum  # 1% off: far beyond fp32 rounding

    monkeypatch.setattr(tm, "shifted_comoment_triton", wrong)
    x = _rows(300, 12)
    with pytest.warns(KernelCheckWarning) as record:
        first = shard_moments(x, backend="triton")
    second = _no_more_warnings(lambda: shard_moments(x, backend="triton"))
    assert len(record) == 1
    warning = record[0].message
    assert (warning.kernel, warning.device, warning.gpu) == (
        "shard_moments",
        "cpu",
        "Test GPU 9000",
    )
    assert "'shard_moments'" in str(warning)
    assert "Test GPU 9000" in str(warning)
    assert "disagrees with its torch path" in str(warning)
    assert len(calls) == 1  # the check ran the kernel; no call after it did
    ref = shard_moments_reference(x)
    for got in (first, second):
        scale = float(ref.m2.abs().max())
        np.testing.assert_allclose(got.m2, ref.m2, rtol=0, atol=2e-6 * scale)
        np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-6)
    verdict = checked.verdicts()[("shard_moments", "cpu")]
    assert not verdict.ok
    assert verdict.error > verdict.tolerance
    assert "shard_moments" not in checked.launches()


def test_a_compile_error_warns_and_falls_back(checked, monkeypatch):
    import shardeval.kernels._triton_lse as tl_mod
    from shardeval.kernels import logsumexp
    from shardeval.kernels.lse import _lse_torch

    def broken(x):
        raise _compile_error()

    monkeypatch.setattr(tl_mod, "row_lse_triton", broken)
    x = _rows(20, 130, offset=0.0) * 30
    with pytest.warns(KernelCheckWarning, match="'row_lse'.*Test GPU 9000.*CompilationError"):
        got = logsumexp(x, dim=1, backend="triton")
    want = _lse_torch(x, 1)
    assert torch.equal(got.max, want.max)
    assert torch.equal(got.sum, want.sum)
    assert "did not compile or run" in checked.verdicts()[("row_lse", "cpu")].reason


def test_a_failure_at_a_later_launch_warns_once_and_falls_back(checked, monkeypatch):
    # The check compiled one specialisation; another (a new dtype or tile) fails to compile.
    import shardeval.kernels._triton_lse as tl_mod
    from shardeval.kernels import weight_stats, weight_stats_reference

    x = _rows(50, 1, offset=-5.0).reshape(-1) * 20
    _no_more_warnings(lambda: weight_stats(x, top=3, backend="triton"))
    assert checked.verdicts()[("flat_stats", "cpu")].ok
    assert checked.launches()["flat_stats"] == 1
    calls = []

    def out_of_resources(*args, **kwargs):
        from triton.runtime.errors import OutOfResources

        calls.append(1)
        raise OutOfResources(232_448, 101_376, "shared memory")

    monkeypatch.setattr(tl_mod, "flat_stats_triton", out_of_resources)
    with pytest.warns(KernelCheckWarning, match="failed at launch: OutOfResources"):
        got = weight_stats(x, top=3, backend="triton")
    again = _no_more_warnings(lambda: weight_stats(x, top=3, backend="triton"))
    assert calls == [1]
    want = weight_stats_reference(x, top=3)
    for w in (got, again):
        assert (float(w.max), float(w.sum), float(w.sum_sq)) == pytest.approx(
            (float(want.max), float(want.sum), float(want.sum_sq)), rel=1e-12
        )
        assert torch.equal(w.top, want.top)
    assert not checked.verdicts()[("flat_stats", "cpu")].ok


def test_pair_kernels_fall_back_one_at_a_time(checked, monkeypatch):
    import shardeval.kernels._triton_path as path
    from shardeval.kernels.pairs import PairRequest, exact_sq_distances, pair_reduce

    def broken(*args, **kwargs):
        raise RuntimeError("simulated: ptxas fatal: unsupported sm")

    monkeypatch.setattr(path, "pair_knn_triton", broken)
    x, y = (_rows(n, 6, seed=s, offset=0.5).numpy() for n, s in ((30, 1), (23, 2)))
    sq = exact_sq_distances(x, y)
    radii = (np.median(sq, 1), np.quantile(sq, 0.3, axis=1), np.median(sq, 0))
    request = PairRequest(knn=3, radii=radii)
    with pytest.warns(KernelCheckWarning, match="'pair_knn'.*RuntimeError: simulated") as rec:
        got = pair_reduce(torch.from_numpy(x), torch.from_numpy(y), request, backend="triton")
    assert [w.message.kernel for w in rec] == ["pair_knn"]
    want = pair_reduce(x, y, request)
    for g, w in zip(got.knn, want.knn, strict=True):
        np.testing.assert_array_equal(g, w)
    for g, w in zip(got.radius[:4], want.radius[:4], strict=True):
        np.testing.assert_array_equal(g, w)
    assert checked.verdicts()[("pair_radius", "cpu")].ok  # the other kernel still runs
    assert checked.launches().get("pair_radius") == 1
    assert "pair_knn" not in checked.launches()


def test_strict_policy_raises_instead(checked, monkeypatch):
    import shardeval.kernels._triton_lse as tl_mod
    from shardeval.kernels import logsumexp

    monkeypatch.setenv(checked.POLICY_VARIABLE, "strict")

    def broken(x):
        raise _compile_error()

    monkeypatch.setattr(tl_mod, "row_lse_triton", broken)
    for _ in range(2):  # a known failure is an error every time, never a quiet fallback
        with pytest.raises(KernelCheckError, match=r"'row_lse'.*Test GPU 9000"):
            logsumexp(_rows(5, 7), dim=1, backend="triton")


def test_off_policy_and_a_bad_policy(checked, monkeypatch):
    monkeypatch.setattr(checked, "_check", lambda k, d: pytest.fail("checked under off"))
    monkeypatch.setenv(checked.POLICY_VARIABLE, "off")
    assert checked.verdict("row_lse", CPU).ok
    monkeypatch.setenv(checked.POLICY_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="SHARDEVAL_KERNEL_CHECK='sometimes'"):
        checked.verdict("row_lse", CPU)


@pytest.mark.parametrize("ok", [True, False])
def test_one_check_per_kernel_and_device_across_threads(checked, monkeypatch, ok):
    calls = []
    lock = threading.Lock()

    def slow_check(kernel, device):
        with lock:
            calls.append((kernel, str(device)))
        threading.Event().wait(0.05)  # the other threads arrive while this one checks
        return Verdict(ok, "" if ok else "simulated disagreement")

    monkeypatch.setattr(checked, "_check", slow_check)
    monkeypatch.setattr(checked, "CHECKED_DEVICE_TYPES", ("cpu", "meta"))
    barrier = threading.Barrier(8)
    seen = []

    def first_use():
        barrier.wait()
        seen.append(checked.verdict("row_lse", CPU).ok)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=first_use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        checked.verdict("row_lse", torch.device("meta"))  # another device: its own check
        checked.verdict("flat_stats", CPU)  # another kernel: its own check
        checked.verdict("row_lse", CPU)  # known: no check
    assert seen == [ok] * 8
    assert calls == [("row_lse", "cpu"), ("row_lse", "meta"), ("flat_stats", "cpu")]
    warned = [w for w in caught if issubclass(w.category, KernelCheckWarning)]
    assert len(warned) == (0 if ok else 3)  # one per failed (kernel, device), not per thread


def test_the_api_reports_the_fallback_and_stays_right(checked, monkeypatch, feature_pair):
    import shardeval as se
    import shardeval.kernels._triton_moments as tm

    real_store, _, gen_store, _ = feature_pair
    original = tm.shifted_comoment_triton

    def wrong(x, shift, dot_precision="ieee"):
        comoment, col_sum = original(x, shift, dot_precision)
        return comoment + 1.0, col_sum

    monkeypatch.setattr(tm, "shifted_comoment_triton", wrong)
    with pytest.warns(KernelCheckWarning):
        report = se.fid(real_store, gen_store, device="cpu", backend="triton", shard_rows=300)
    cpu = se.fid(real_store, gen_store, shard_rows=300)
    assert float(report) == pytest.approx(float(cpu), rel=1e-12)
    notes = report.to_dict()["warnings"]
    assert any("'shard_moments'" in n and "torch path" in n for n in notes)
