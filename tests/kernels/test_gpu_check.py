"""The CPU side of ``make gpu-check`` (benchmarks/gpu_check.py, issue 19 item 3), which cannot run
here: the kernel table covers every Triton kernel and the issue's shape grid; its comparison
machinery passes every kernel under the interpreter and fails, naming kernel and shape, a kernel
that gives wrong values, does not compile or gives NaN; the metric checks pass on the CPU and
catch a wrong kernel; the roofline arithmetic, the peak table, the table, the JSON and the exit
status; and without CUDA the command refuses in one line.
"""

import ast
import json
import math
import os
import pathlib
from types import SimpleNamespace

import pytest
import torch

from benchmarks import gpu_check as gc
from shardeval.kernels import checks
from shardeval.kernels.checks import Shape

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter"
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Small awkward shapes for the interpreter, one per dtype: one row below every tile, a few,
#: and more than one tile of rows and features (32 under the interpreter).
SMALL = ((1, 3, "bf16"), (7, 33, "fp16"), (40, 33, "fp32"))


def _small_cases():
    return [
        checks.Case(kernel, variant, checks.awkward_shape(kernel, rows, d), dtype)
        for kernel in checks.KERNELS
        for variant in kernel.variants
        for rows, d, dtype in SMALL
    ]


# ---------------------------------------------------------------------------------------------
# refusing, in one line


def test_refuses_without_cuda_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine
    assert gc.main(["--out", os.devnull]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpu-check: no CUDA device: torch ")


def test_refuses_under_the_interpreter(capsys):
    assert gc.main(["--out", os.devnull]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "TRITON_INTERPRET" in err[0]


def test_the_makefile_target_runs_the_module():
    text = (ROOT / "Makefile").read_text()
    assert "gpu-check:" in text
    assert "-m benchmarks.gpu_check" in text


# ---------------------------------------------------------------------------------------------
# the kernel table and the grid


def test_the_table_names_every_triton_kernel():
    found = set()
    for path in sorted((ROOT / "shardeval" / "kernels").glob("_triton_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel"):
                jitted = any("jit" in ast.unparse(d) for d in node.decorator_list)
                if jitted:
                    found.add(f"{path.stem}.{node.name}")
    assert found == {k.jit for k in checks.KERNELS}
    assert len({k.name for k in checks.KERNELS}) == len(checks.KERNELS)


def test_the_grid_is_the_issues():
    cases = list(checks.awkward_cases())
    variants = sum(len(k.variants) for k in checks.KERNELS)
    assert len(cases) == variants * 4 * 4 * 3
    assert {c.shape.rows for c in cases} == {1, 7, 1000, 65537}
    assert {c.shape.d for c in cases} == {3, 64, 129, 2048}
    assert {c.dtype for c in cases} == {"fp32", "fp16", "bf16"}
    for c in cases:
        if c.kernel.pair:
            assert c.shape.partner == min(c.shape.rows, checks.PAIR_PARTNER)
            assert c.shape.diagonal == (c.kernel.diagonal and c.shape.rows <= 1000)
        else:
            assert c.shape.partner == 0


def test_the_tolerance_table_has_every_dtype_and_grows_with_the_accumulation():
    for kernel in checks.KERNELS:
        assert set(kernel.tolerance) == set(checks.DTYPES)
    moments = checks.spec("shard_moments")
    assert moments.allowed(Shape(1, 64), "fp16") == moments.tolerance["fp16"]
    assert moments.allowed(Shape(65537, 64), "fp32") == pytest.approx(
        moments.tolerance["fp32"] * math.log2(65537)
    )
    assert checks.spec("pair_radius").allowed(Shape(65537, 9, 1000), "bf16") == 0.0
    with pytest.raises(KeyError, match="no Triton kernel 'nope'; known: shard_moments"):
        checks.spec("nope")


# ---------------------------------------------------------------------------------------------
# the comparison machinery, on the CPU through the interpreter


def test_every_kernel_agrees_with_its_reference_at_small_awkward_shapes():
    outcomes = gc.check_kernels("cpu", _small_cases())
    bad = [f"{o.label()}: {o.failure}" for o in outcomes if not o.ok]
    assert not bad
    rows = gc.kernel_rows(outcomes)
    assert rows
    assert all(r.ok for r in rows)
    assert {r.name for r in rows} >= {"shard_moments", "kernel_sums[poly]", "kernel_sums[rbf]"}


def test_every_kernel_passes_its_first_use_check():
    for kernel in checks.KERNELS:
        verdict = checks.first_use_check(kernel.name, torch.device("cpu"))
        assert verdict.ok, (kernel.name, verdict.reason)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("scaled", "disagrees with the float64 reference: error"),
        ("nan", "disagrees with the float64 reference: error inf"),  # not finite
        ("compile", "did not compile or run: CompilationError"),
    ],
)
def test_a_wrong_kernel_fails_loudly_naming_kernel_and_shape(monkeypatch, how, expected):
    import shardeval.kernels._triton_moments as tm

    real = tm.shifted_comoment_triton

    def wrong(x, shift, dot_precision="ieee"):
        if how == "compile":
            from triton.compiler.errors import CompilationError

            raise CompilationError(None, ast.parse("x").body[0], "simulated")
        comoment, col_sum = real(x, shift, dot_precision)
        if how == "nan":
            return comoment * float("nan"), col_sum
        return comoment * (1 + 1e-3), col_sum  # 0.1%: fp32 rounding is 1e-7

    monkeypatch.setattr(tm, "shifted_comoment_triton", wrong)
    cases = [
        checks.Case(checks.spec("shard_moments"), "", Shape(40, 33), "fp32"),
        checks.Case(checks.spec("row_lse"), "", Shape(40, 33), "fp32"),
    ]
    outcomes = gc.check_kernels("cpu", cases)
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[0].failure.startswith(expected)
    rows = gc.kernel_rows(outcomes)
    lines = gc.failures(rows)
    assert any(
        line.startswith("kernels shard_moments 40x33 fp32: ") and expected in line for line in lines
    )
    assert any(line.startswith("kernels shard_moments 1 shapes fp32: 1 of 1") for line in lines)
    assert not any("row_lse" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# metrics through the API


def _metrics(*names):
    return [m for m in gc.METRICS if m.name in names]


def test_metric_checks_pass_on_the_cpu_through_both_backends():
    data = gc.metric_data(scale=0.01)
    rows = gc.check_metrics("cpu", data, _metrics("fid", "nll iw"))
    assert [(r.name, r.dtype) for r in rows] == [
        (name, backend) for name in ("fid", "nll iw") for backend in ("triton", "torch")
    ]
    assert all(r.ok for r in rows), [r.result for r in rows if not r.ok]
    for r in rows:
        launched = r.data["launches"]
        assert all(launched.values()) if r.dtype == "triton" else not any(launched.values())


def test_a_wrong_kernel_fails_its_metric_check(monkeypatch):
    import shardeval.kernels._triton_moments as tm

    real = tm.shifted_comoment_triton

    def wrong(x, shift, dot_precision="ieee"):
        comoment, col_sum = real(x, shift, dot_precision)
        return comoment * 1.001, col_sum

    monkeypatch.setattr(tm, "shifted_comoment_triton", wrong)
    rows = gc.check_metrics("cpu", gc.metric_data(scale=0.01), _metrics("fid"))
    assert [(r.dtype, r.ok) for r in rows] == [("triton", False), ("torch", True)]
    assert gc.failures(rows)[0].startswith("metrics fid triton: |diff| ")


def test_a_metric_whose_triton_backend_never_launches_a_kernel_fails(monkeypatch):
    # ESS launches flat_stats (so the message names row_lse alone) and agrees with the CPU.
    check = _metrics("ess")[0]
    silent = gc.MetricCheck("ess", ("flat_stats", "row_lse"), check.run, check.compare)
    rows = gc.check_metrics("cpu", gc.metric_data(scale=0.01), [silent], backends=("triton",))
    assert not rows[0].ok
    assert rows[0].result.endswith("Triton kernel(s) never launched: row_lse")


# ---------------------------------------------------------------------------------------------
# roofline arithmetic and peaks


def test_roofline_arithmetic():
    line = gc.roofline(2e12, 1e9, 1e12, 1e12)
    assert (line.seconds, line.bound) == (2.0, "compute")
    line = gc.roofline(1e9, 3e12, 1e12, 1e12)
    assert (line.seconds, line.bound) == (3.0, "memory")
    with pytest.raises(ValueError, match="peaks must be positive"):
        gc.roofline(1.0, 1.0, 0.0, 1.0)
    peak = gc.Peak("test", 10e12, 1e12, 2e12, "test")
    t = gc.timing("k", "s", 4.0, 20e12, 1e12, peak, "fp64")  # fp64: 20 s of arithmetic
    assert (t.roofline_seconds, t.bound, t.fraction) == (20.0, "compute", 5.0)
    assert t.tflops == 5.0
    assert t.gbytes == 250.0
    assert gc.timing("k", "s", 1.0, 1.0, 1.0, None, "fp32").fraction is None
    with pytest.raises(ValueError, match="a measured time must be positive"):
        gc.timing("k", "s", 0.0, 1.0, 1.0, peak, "fp32")
    with pytest.raises(ValueError, match="'tf32'"):
        peak.flops("tf32")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("Tesla V100-SXM2-32GB", "V100 SXM2"),
        ("Tesla T4", "T4"),
        ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"),
    ],
)
def test_known_gpus_by_name(name, label):
    peak = gc.known_peak(name)
    assert peak is not None
    assert peak.name == label
    assert "datasheet" in peak.source


def test_unknown_gpus_take_derived_peaks():
    assert gc.known_peak("NVIDIA B999") is None
    # An H100 SXM's properties: the derivation gives its datasheet figures back.
    props = SimpleNamespace(
        name="NVIDIA B999", major=9, minor=0, multi_processor_count=132,
        clock_rate=1_980_000, memory_clock_rate=2_619_000, memory_bus_width=5120,
    )  # fmt: skip
    peak = gc.device_peak("NVIDIA B999", props)
    assert peak is not None
    assert "derived" in peak.source
    assert peak.fp32 == pytest.approx(66.9e12, rel=0.01)
    assert peak.fp64 == pytest.approx(33.5e12, rel=0.01)
    assert peak.bandwidth == pytest.approx(3.35e12, rel=0.001)
    assert gc.device_peak("NVIDIA B999", SimpleNamespace(major=9, minor=0)) is None


def test_kernels_are_timed_against_their_roofline_with_a_fixed_timer():
    peak = gc.Peak("test", 1e12, 1e11, 1e11, "test")
    shapes = {k.name: Shape(40, 33, 40 if k.pair else 0) for k in checks.KERNELS}
    calls = []

    def timer(fn, device):
        calls.append(device)
        return 2e-3  # no call: the arithmetic is what is tested

    rows = gc.time_kernels("cpu", peak, shapes=shapes, timer=timer)
    assert [r.name for r in rows] == [k.name for k in checks.KERNELS]
    assert all(r.ok for r in rows)
    moments = rows[0].data
    assert moments["flops"] == 40 * 33 * 34
    assert moments["bytes"] == 40 * 33 * 4 + 33 * 33 * 4 + 264
    expected = max(moments["flops"] / 1e12, moments["bytes"] / 1e11)
    assert moments["fraction"] == pytest.approx(expected / 2e-3)
    assert "of the roofline" in rows[0].result
    assert "an estimate" in rows[0].result
    assert rows[5].data["flops"] == 2 * 40 * 40 * 33  # kernel sums, against the fp64 peak
    assert rows[5].data["bound"] == "compute"
    bench = checks.spec("shard_moments").bench
    assert (bench.rows, bench.d) == (50_000, 2048)


def test_a_kernel_that_cannot_be_timed_fails_its_row():
    def timer(fn, device):
        raise RuntimeError("simulated: illegal memory access")

    rows = gc.time_kernels("cpu", None, [checks.spec("row_lse")], {"row_lse": Shape(3, 3)}, timer)
    assert not rows[0].ok
    assert rows[0].result == "RuntimeError: simulated: illegal memory access"


def test_encoder_rows(monkeypatch):
    import benchmarks.extract

    monkeypatch.setattr(benchmarks.extract, "flops_per_image", lambda: {"inception": 11.4e9})
    peak = gc.Peak("test", 10e12, 1e12, 1e12, "test")
    rows = gc.time_encoders("cpu", peak, ("inception",), batch=2, timer=lambda fn, d: 0.5)
    assert rows[0].ok
    assert rows[0].data["images_per_s"] == 4.0
    assert rows[0].data["fraction_of_fp32_peak"] == pytest.approx(4 * 11.4e9 / 10e12)

    def missing(name):
        raise ImportError("No module named 'transformers'")

    monkeypatch.setattr(gc, "_random_encoder", missing)
    rows = gc.time_encoders("cpu", peak, ("dinov2-vitl14",), timer=lambda fn, d: 0.5)
    assert not rows[0].ok
    assert "transformers" in rows[0].result


# ---------------------------------------------------------------------------------------------
# the table, the JSON and the exit status


def _rows(ok=True):
    return [
        gc.Row("kernels", "shard_moments", "16 shapes", "fp32", True, "worst 0.02 x tolerance"),
        gc.Row("kernels", "row_lse", "65537x2048", "bf16", ok, "disagrees: error inf > 3e-5",
               {"error": math.inf}),
        gc.Row("roofline", "parzen_lse", "16384x16384 d=2048", "fp32", True, "1.0 ms"),
    ]  # fmt: skip


def test_finish_prints_one_table_writes_json_and_exits_by_the_result(tmp_path, capsys):
    out = tmp_path / "deep" / "gpu-check.json"
    assert gc.finish(_rows(ok=True), {"seconds": 12.0}, str(out), "test run") == 0
    text = capsys.readouterr().out
    assert text.count("section") == 1
    assert "parzen_lse" in text
    assert "all checks passed" in text
    assert json.loads(out.read_text())["passed"] is True

    assert gc.finish(_rows(ok=False), {"seconds": 400.0}, str(out), "test run") == 1
    captured = capsys.readouterr()
    assert "over the 300 s budget" in captured.out
    assert (
        "gpu-check: FAIL kernels row_lse 65537x2048 bf16: disagrees: error inf > 3e-5"
        in captured.err
    )
    payload = json.loads(out.read_text())  # strict JSON: inf written as a string
    assert payload["passed"] is False
    assert len(payload["failures"]) == 1
    assert payload["rows"][1]["data"]["error"] == "inf"
    assert not list(out.parent.glob(".gpu-check-*"))  # the temporary file was renamed


def test_main_on_a_faked_gpu_reports_a_crashed_section_and_fails(
    tmp_path, capsys, monkeypatch, fp32_flags
):
    # Everything main does around the sections, with CUDA faked and the sections stubbed.
    from shardeval.kernels._selfcheck import POLICY_VARIABLE

    monkeypatch.setenv(POLICY_VARIABLE, "fallback")  # restored after; main sets it to strict
    monkeypatch.setattr(gc, "refusal", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    props = SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
        total_memory=80 * 2**30,
    )  # fmt: skip
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    seen = {}

    def metrics(device, data, progress=None):
        seen["device"], seen["policy"] = device, os.environ[POLICY_VARIABLE]
        return [gc.Row("metrics", "fid", "", "triton", True, "|diff| 0 <= 1e-9")]

    def encoders(device, peak):
        raise RuntimeError("simulated: CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gc, "check_kernels", lambda device, progress=None: [])
    monkeypatch.setattr(gc, "metric_data", lambda: None)
    monkeypatch.setattr(gc, "check_metrics", metrics)
    monkeypatch.setattr(gc, "time_kernels", lambda device, peak: [])
    monkeypatch.setattr(gc, "time_encoders", encoders)
    out = tmp_path / "gpu-check.json"
    assert gc.main(["--out", str(out)]) == 1
    assert seen == {"device": "cuda", "policy": "strict"}
    err = capsys.readouterr().err
    assert "gpu-check: FAIL extraction the section crashed: RuntimeError: simulated" in err
    payload = json.loads(out.read_text())
    assert payload["device"]["name"] == "NVIDIA H100 80GB HBM3"
    assert payload["peak"]["name"] == "H100 SXM"
    assert set(payload["sections_seconds"]) == {"kernels", "metrics", "roofline", "extraction"}
    assert payload["passed"] is False
