"""GPU acceptance in one command (``make gpu-check``): where the Triton kernels, the metrics on a
GPU and the encoders stand on this machine's CUDA device, in a few minutes.

1. **Kernels**: every Triton kernel (:data:`shardeval.kernels.checks.KERNELS`) is compiled and
   run at awkward shapes (1, 7, 1,000 and 65,537 rows; d = 3, 64, 129, 2,048; fp32, fp16 and
   bf16 input; block-pair kernels against at most 1,000 partner rows) and compared with its
   float64 reference, with the per-kernel, per-dtype tolerances of that module.
2. **Metrics**: FID, KID, CMMD, PRDC, NLL (Gaussian, Parzen, importance-weighted) and ESS
   through the Python API with ``device="cuda"`` and ``backend="triton"``, then ``"torch"``,
   against the CPU path's numbers (``device="cpu"``); the Triton backend must really have
   launched the kernels it names, and the torch backend none.
3. **Roofline**: each kernel timed alone at a representative size (CUDA events, median), with
   its FLOPs and bytes (stated in the kernel table) against the device's peaks: achieved
   rates and the fraction of the roofline time, an estimate of how far from the hardware it is.
4. **Extraction**: images per second of each encoder's network (random weights of the real
   architectures: speed does not depend on the values), fp32 with IEEE products, against its
   counted FLOPs per image.

Prints one table and writes every number as JSON (``--out``). Exit status: 0 when everything
passed; 1 when anything failed (each failure named on stderr: kernel, shape, dtype, what); 2
without a CUDA device (one line: this check cannot run on a CPU, and does not pretend to).

The device's peaks come from a table of known GPUs (NVIDIA's datasheet figures: fp32 and fp64
without tensor cores, memory bandwidth), matched on the device name; for any other GPU they are
derived from ``torch.cuda.get_device_properties`` (SMs × fp32 lanes per SM of its compute
capability × 2 × clock; memory clock × 2 × bus width) and labelled as derived.

Usage:
    python -m benchmarks.gpu_check [--out bench-data/gpu-check.json] [--device cuda:0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: The whole run should take less than this on one data-centre GPU (the issue's budget).
BUDGET_SECONDS = 300.0


# ---------------------------------------------------------------------------------------------
# the device and its peaks


@dataclass(frozen=True)
class Peak:
    """A device's peak rates: fp32 and fp64 FLOP/s without tensor cores, memory bytes/s, and
    where the figures come from."""

    name: str
    fp32: float
    fp64: float
    bandwidth: float
    source: str

    def flops(self, kind: str) -> float:
        """The peak a kernel's arithmetic is bound by (``fp32`` or ``fp64``)."""
        if kind not in ("fp32", "fp64"):
            raise ValueError(f"peak kind must be 'fp32' or 'fp64', got {kind!r}")
        return self.fp32 if kind == "fp32" else self.fp64


_DATASHEET = "NVIDIA datasheet, dense, without tensor cores"

#: Known GPUs: (pattern on the device name, label, fp32 FLOP/s, fp64 FLOP/s, bytes/s). First
#: match wins, so the specific names come first. fp64 of the parts without fast fp64 (Ada,
#: GA10x, Turing) is their documented 1/64 (1/32 for Turing) of fp32.
KNOWN_GPUS: tuple[tuple[str, str, float, float, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 51.2e12, 25.6e12, 2.0e12),
    (r"H100.*NVL", "H100 NVL", 60.0e12, 30.0e12, 3.9e12),
    (r"H100", "H100 SXM", 66.9e12, 33.5e12, 3.35e12),
    (r"H200", "H200 SXM", 66.9e12, 33.5e12, 4.8e12),
    (r"A100.*80GB.*PCIe", "A100 80GB PCIe", 19.5e12, 9.7e12, 1.935e12),
    (r"A100.*PCIE", "A100 40GB PCIe", 19.5e12, 9.7e12, 1.555e12),
    (r"A100.*80GB", "A100 80GB SXM", 19.5e12, 9.7e12, 2.039e12),
    (r"A100", "A100 40GB SXM", 19.5e12, 9.7e12, 1.555e12),
    (r"L40S", "L40S", 91.6e12, 1.43e12, 0.864e12),
    (r"L40\b", "L40", 90.5e12, 1.41e12, 0.864e12),
    (r"\bL4\b", "L4", 30.3e12, 0.47e12, 0.300e12),
    (r"\bA10\b", "A10", 31.2e12, 0.49e12, 0.600e12),
    (r"V100.*PCIE", "V100 PCIe", 14.0e12, 7.0e12, 0.900e12),
    (r"V100", "V100 SXM2", 15.7e12, 7.8e12, 0.900e12),
    (r"\bT4\b", "T4", 8.1e12, 0.25e12, 0.320e12),
    (r"RTX 4090", "GeForce RTX 4090", 82.6e12, 1.29e12, 1.008e12),
)

#: fp32 lanes per SM and the fp64 : fp32 rate, by compute capability (major, minor), for GPUs
#: outside the table (CUDA programming guide, arithmetic instruction throughput).
_LANES = {(7, 0): (64, 1 / 2), (7, 5): (64, 1 / 32), (8, 0): (64, 1 / 2), (9, 0): (128, 1 / 2)}
_LANES_DEFAULT = (128, 1 / 64)  # 8.6, 8.9, 10.x, 12.x consumer and workstation parts


def known_peak(name: str) -> Peak | None:
    """The peaks of a GPU of the table by its device name, or None."""
    for pattern, label, fp32, fp64, bandwidth in KNOWN_GPUS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return Peak(label, fp32, fp64, bandwidth, f"{_DATASHEET} ({label})")
    return None


def derived_peak(props: Any) -> Peak | None:
    """Peaks derived from device properties (an estimate: boost clocks and memory clocks as
    the driver reports them), or None when the properties lack the clocks."""
    clock = getattr(props, "clock_rate", 0) or 0  # kHz
    memory_clock = getattr(props, "memory_clock_rate", 0) or 0  # kHz
    bus = getattr(props, "memory_bus_width", 0) or 0  # bits
    sms = getattr(props, "multi_processor_count", 0) or 0
    if not (clock and memory_clock and bus and sms):
        return None
    lanes, fp64_ratio = _LANES.get((props.major, props.minor), _LANES_DEFAULT)
    fp32 = sms * lanes * 2.0 * clock * 1e3
    bandwidth = 2.0 * memory_clock * 1e3 * bus / 8
    source = (
        f"derived from device properties: {sms} SMs x {lanes} lanes x 2 x {clock / 1e6:.2f} GHz; "
        f"2 x {memory_clock / 1e6:.2f} GHz x {bus}-bit bus (an estimate)"
    )
    return Peak(str(props.name), fp32, fp32 * fp64_ratio, bandwidth, source)


def device_peak(name: str, props: Any = None) -> Peak | None:
    """The table's figures for a known GPU, else figures derived from ``props``."""
    return known_peak(name) or (derived_peak(props) if props is not None else None)


# ---------------------------------------------------------------------------------------------
# the roofline (arithmetic only: testable anywhere)


@dataclass(frozen=True)
class Roofline:
    """Lower bound on a kernel's time from its FLOPs and bytes: max(FLOPs / peak FLOP/s,
    bytes / bandwidth). An estimate: it assumes every byte crosses memory exactly once."""

    seconds: float
    bound: str  # "compute" or "memory"


def roofline(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> Roofline:
    """The roofline time of ``flops`` and ``nbytes`` on a device with these peaks.

    Raises:
        ValueError: a peak that is not positive.
    """
    if not (peak_flops > 0 and bandwidth > 0):
        raise ValueError(f"peaks must be positive, got {peak_flops} FLOP/s, {bandwidth} B/s")
    compute, memory = flops / peak_flops, nbytes / bandwidth
    return Roofline(max(compute, memory), "compute" if compute >= memory else "memory")


@dataclass(frozen=True)
class Timing:
    """A measured kernel against its roofline."""

    kernel: str
    shape: str
    seconds: float
    flops: float
    bytes: float
    roofline_seconds: float | None
    bound: str | None

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / 1e12

    @property
    def gbytes(self) -> float:
        return self.bytes / self.seconds / 1e9

    @property
    def fraction(self) -> float | None:
        """Roofline time / measured time: 1.0 would be the hardware's limit."""
        if self.roofline_seconds is None:
            return None
        return self.roofline_seconds / self.seconds


def timing(
    kernel: str,
    shape: str,
    seconds: float,
    flops: float,
    nbytes: float,
    peak: Peak | None,
    peak_kind: str,
) -> Timing:
    """A measured time placed against the roofline of ``peak`` (None: peaks unknown)."""
    if not seconds > 0:
        raise ValueError(f"{kernel}: a measured time must be positive, got {seconds}")
    if peak is None:
        return Timing(kernel, shape, seconds, flops, nbytes, None, None)
    line = roofline(flops, nbytes, peak.flops(peak_kind), peak.bandwidth)
    return Timing(kernel, shape, seconds, flops, nbytes, line.seconds, line.bound)


def measure(fn: Callable[[], Any], device: Any) -> float:
    """Median seconds of ``fn``: CUDA events through ``triton.testing.do_bench`` on a GPU
    (warm-up, then as many runs as fill about 100 ms), ``perf_counter`` elsewhere."""
    if str(device).startswith("cuda"):
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median")) / 1e3
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# what a run reports


@dataclass
class Row:
    """One line of the table (and one record of the JSON).

    Attributes:
        section: ``kernels``, ``metrics``, ``roofline`` or ``extraction``.
        name: what was checked or timed.
        shape, dtype: where.
        ok: False makes the run fail.
        result: the line's reading, for people.
        data: its numbers, for the JSON.
    """

    section: str
    name: str
    shape: str
    dtype: str
    ok: bool
    result: str
    data: dict[str, Any] = field(default_factory=dict)


def kernel_rows(outcomes: Sequence[Any]) -> list[Row]:
    """One row per kernel, variant and dtype (the worst error over its shapes, as a fraction
    of the tolerance), and one row for each case that failed, naming its shape."""
    rows: list[Row] = []
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for o in outcomes:
        groups.setdefault((o.kernel, o.variant, o.dtype), []).append(o)
    for (kernel, variant, dtype), group in groups.items():
        name = f"{kernel}[{variant}]" if variant else kernel
        failed = [o for o in group if not o.ok]
        ran = [o for o in group if o.error is not None and math.isfinite(o.error)]
        worst = max(ran, key=lambda o: _ratio(o.error, o.tolerance), default=None)
        if failed:
            result = f"{len(failed)} of {len(group)} shapes FAILED"
        elif worst is not None:
            result = (
                f"{len(group)} shapes; worst error {worst.error:.2g} = "
                f"{_ratio(worst.error, worst.tolerance):.2f} x tolerance at {worst.shape.label()}"
            )
        else:
            result = f"{len(group)} shapes"
        rows.append(
            Row(
                "kernels",
                name,
                f"{len(group)} shapes",
                dtype,
                not failed,
                result,
                {
                    "cases": len(group),
                    "failed": len(failed),
                    "worst_error": None if worst is None else worst.error,
                    "worst_tolerance": None if worst is None else worst.tolerance,
                },
            )
        )
        for o in failed:
            rows.append(Row("kernels", name, o.shape.label(), dtype, False, o.failure, o.to_dict()))
    return rows


def _ratio(error: float | None, tolerance: float) -> float:
    if error is None:
        return math.inf
    if tolerance > 0:
        return error / tolerance
    return 0.0 if error == 0 else math.inf


def check_kernels(
    device: Any,
    cases: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Any]:
    """Every case (default: :func:`shardeval.kernels.checks.awkward_cases`) on ``device``
    against the float64 reference; the outcomes, failures included (never raised)."""
    from shardeval.kernels import checks

    outcomes = []
    for case in checks.awkward_cases() if cases is None else cases:
        outcome = checks.run_case(case.kernel, case.shape, case.dtype, device, variant=case.variant)
        if progress is not None:
            progress(f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.label()}")
        outcomes.append(outcome)
    return outcomes


# ---------------------------------------------------------------------------------------------
# metrics through the API: the GPU's numbers against the CPU path's


@dataclass(frozen=True)
class MetricData:
    """The data sets every metric check reads (numpy, float32 unless the metric needs more)."""

    real: np.ndarray
    gen: np.ndarray
    gauss_fit: np.ndarray
    gauss_test: np.ndarray
    parzen_samples: np.ndarray
    parzen_test: np.ndarray
    log_weights: np.ndarray
    flat_log_weights: np.ndarray
    shard_rows: int


def metric_data(scale: float = 1.0, seed: int = 7) -> MetricData:
    """Seeded data sets; ``scale`` 1 is the acceptance run's size (10,007 × 64 real features
    against 9,001 generated, …), smaller for the tests. Sizes are odd on purpose."""
    rng = np.random.default_rng(seed)

    def n(base: int) -> int:
        return max(7, int(base * scale) | 1)

    d = 64
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    real = (rng.standard_normal((n(10_007), d)) @ mix + 3.0).astype(np.float32)
    gen = (rng.standard_normal((n(9_001), d)) @ (1.1 * mix) + 3.05).astype(np.float32)
    # Small, well-conditioned problems, so that the pipeline takes fp32 products there (and
    # so the Triton kernels) rather than float64, which would bypass them.
    gauss_fit = rng.standard_normal((n(4_001), 8)).astype(np.float32)
    gauss_test = (rng.standard_normal((n(5_003), 8)) * 1.1 + 0.1).astype(np.float32)
    parzen_samples = rng.standard_normal((n(4_001), 4)).astype(np.float32)
    parzen_test = (rng.standard_normal((n(3_001), 4)) + 0.2).astype(np.float32)
    log_weights = rng.standard_normal((n(5_003), 129)) * 2.0
    flat = rng.standard_normal(n(200_003)) * 3.0
    return MetricData(
        real, gen, gauss_fit, gauss_test, parzen_samples, parzen_test, log_weights, flat,
        shard_rows=max(7, int(2048 * scale)),
    )  # fmt: skip


#: Parzen bandwidth of the check: wide against the data (4-d, unit spread, largest norms
#: about 5), so that the fp32 rounding bound, about 7e-7·(‖x‖ + ‖y‖)²/2h² + 5e-7 nats, meets
#: the pipeline's 1e-6 and the Parzen kernel runs (at h = 5 the pipeline takes float64).
PARZEN_BANDWIDTH = 12.0


@dataclass(frozen=True)
class MetricCheck:
    """One metric through the API.

    Attributes:
        name: the check's name.
        kernels: the Triton kernels its ``triton`` backend must launch.
        run: (data, device, backend) → its JSON report.
        compare: (got, want) → (difference, allowed) of the reports.
    """

    name: str
    kernels: tuple[str, ...]
    run: Callable[[MetricData, str, str], dict[str, Any]]
    compare: Callable[[dict[str, Any], dict[str, Any]], tuple[float, float]]


def _fid(data: MetricData, device: str, backend: str) -> dict[str, Any]:
    import shardeval as se

    return se.fid(
        data.real, data.gen, device=device, backend=backend, shard_rows=data.shard_rows
    ).to_dict()["fid"]


def _fid_compare(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, float]:
    # fp32 products on both paths, in different orders: the moments agree to a few units of
    # fp32 rounding of their traces, and FID inherits that of its terms.
    allowed = 1e-6 * (want["fid_trace_real"] + want["fid_trace_gen"])
    return abs(got["fid"] - want["fid"]), allowed


def _sample(name: str) -> Callable[[MetricData, str, str], dict[str, Any]]:
    def run(data: MetricData, device: str, backend: str) -> dict[str, Any]:
        import shardeval as se

        fn = getattr(se, name)
        return dict(
            fn(
                data.real, data.gen, device=device, backend=backend, shard_rows=data.shard_rows
            ).to_dict()[name]
        )

    return run


def _bounded(key: str) -> Callable[[dict[str, Any], dict[str, Any]], tuple[float, float]]:
    """Values that carry a rigorous rounding bound: each within its bound of the exact value,
    so within the sum of both of each other."""

    def compare(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, float]:
        bound = f"{key}_rounding_bound"
        allowed = got[bound] + want[bound] + 1e-12 * abs(want[key])
        return abs(got[key] - want[key]), allowed

    return compare


def _prdc_compare(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, float]:
    # Every decision is exact on both paths: the four values are equal.
    keys = ("prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage")
    return max(abs(got[k] - want[k]) for k in keys), 0.0


def _nll(mode: str) -> Callable[[MetricData, str, str], dict[str, Any]]:
    def run(data: MetricData, device: str, backend: str) -> dict[str, Any]:
        import shardeval as se

        kw: dict[str, Any] = {"device": device, "backend": backend}
        if mode == "gaussian":
            from shardeval.pipeline.core.states import Moments

            fit = Moments.from_rows(data.gauss_fit.astype(np.float64))
            report = se.nll(data.gauss_test, gaussian=fit, shard_rows=data.shard_rows, **kw)
        elif mode == "parzen":
            report = se.nll(
                data.parzen_test, parzen=data.parzen_samples, bandwidth=PARZEN_BANDWIDTH,
                shard_rows=data.shard_rows, **kw,
            )  # fmt: skip
        else:
            report = se.nll(iw=data.log_weights, shard_rows=data.shard_rows, **kw)
        return report.to_dict()

    return run


def _float64_paths(key: str) -> Callable[[dict[str, Any], dict[str, Any]], tuple[float, float]]:
    """Log-weights are read in float64, so both paths sum in float64: 1e-9 relative."""

    def compare(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, float]:
        return abs(got[key] - want[key]), 1e-9 * (1.0 + abs(want[key]))

    return compare


def _ess(data: MetricData, device: str, backend: str) -> dict[str, Any]:
    import shardeval as se

    return se.ess(
        data.flat_log_weights, device=device, backend=backend, shard_rows=data.shard_rows * 16
    ).to_dict()


def _ess_compare(got: dict[str, Any], want: dict[str, Any]) -> tuple[float, float]:
    ess, khat = _float64_paths("ess")(got, want), _float64_paths("khat")(got, want)
    return max(ess[0] / ess[1], khat[0] / khat[1]), 1.0  # both in units of their tolerance


METRICS: tuple[MetricCheck, ...] = (
    MetricCheck("fid", ("shard_moments",), _fid, _fid_compare),
    MetricCheck("kid", ("kernel_sums",), _sample("kid"), _bounded("kid")),
    MetricCheck("cmmd", ("kernel_sums",), _sample("cmmd"), _bounded("cmmd")),
    MetricCheck("prdc", ("pair_knn", "pair_radius"), _sample("prdc"), _prdc_compare),
    MetricCheck("nll gaussian", ("whitened_sq_norm",), _nll("gaussian"), _bounded("nll")),
    MetricCheck("nll parzen", ("parzen_lse",), _nll("parzen"), _bounded("nll")),
    MetricCheck("nll iw", ("row_lse",), _nll("iw"), _float64_paths("nll")),
    MetricCheck("ess", ("flat_stats",), _ess, _ess_compare),
)


def check_metrics(
    device: str,  # the API's name: "cuda" (the current CUDA device), or "cpu" in the tests
    data: MetricData,
    metrics: Sequence[MetricCheck] = METRICS,
    backends: Sequence[str] = ("triton", "torch"),
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Each metric on ``device`` with each backend against ``device="cpu"``; a row each. A
    metric that raises fails its row (named), never the run."""
    from shardeval.kernels._selfcheck import describe, launches

    rows = []
    for metric in metrics:
        try:
            want = metric.run(data, "cpu", "auto")
        except Exception as err:  # the CPU path itself failed: every backend's row says so
            for backend in backends:
                text = f"the CPU path failed: {describe(err)}"
                rows.append(Row("metrics", metric.name, "", backend, False, text))
            continue
        for backend in backends:
            before = launches()
            try:
                got = metric.run(data, device, backend)
            except Exception as err:  # a failure on the GPU: the row names it
                rows.append(
                    Row("metrics", metric.name, "", backend, False, f"raised {describe(err)}")
                )
                continue
            after = launches()
            ran = {k: after.get(k, 0) - before.get(k, 0) for k in metric.kernels}
            diff, allowed = metric.compare(got, want)
            ok = diff <= allowed
            result = f"|diff| {diff:.3g} {'<=' if ok else '>'} {allowed:.3g}"
            if backend == "triton" and not all(ran.values()):
                ok = False
                missing = ", ".join(k for k, v in ran.items() if not v)
                result += f"; Triton kernel(s) never launched: {missing}"
            others = sum(after.values()) - sum(before.values())
            if backend == "torch" and others:
                ok = False
                result += f"; the torch backend launched {others} Triton kernel(s)"
            if progress is not None:
                progress(f"{'ok  ' if ok else 'FAIL'} {metric.name} ({backend})")
            rows.append(
                Row(
                    "metrics",
                    metric.name,
                    "",
                    backend,
                    ok,
                    result,
                    {
                        "difference": diff,
                        "allowed": allowed,
                        "launches": ran,
                    },
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------
# roofline and extraction timings


def time_kernels(
    device: Any,
    peak: Peak | None,
    kernels: Sequence[Any] | None = None,
    shapes: dict[str, Any] | None = None,
    timer: Callable[[Callable[[], Any], Any], float] = measure,
) -> list[Row]:
    """Each kernel alone at its bench shape (``shapes`` overrides, by kernel name), fp32."""
    import torch

    from shardeval.kernels import checks
    from shardeval.kernels._selfcheck import describe

    rows = []
    for spec in checks.KERNELS if kernels is None else kernels:
        shape = (shapes or {}).get(spec.name, spec.bench)
        label = shape.label()
        try:
            inputs = spec.inputs(shape, torch.float32, torch.device(device), 1, spec.variants[0])
            seconds = timer(spec.timed(inputs), device)
        except Exception as err:  # a kernel that cannot be timed has failed too
            rows.append(Row("roofline", spec.name, label, "fp32", False, describe(err)))
            continue
        t = timing(
            spec.name, label, seconds, spec.flops(shape), spec.bytes(shape, 4), peak, spec.peak
        )
        data = {**asdict(t), "tflops": t.tflops, "gbytes": t.gbytes, "fraction": t.fraction}
        rows.append(Row("roofline", spec.name, label, "fp32", True, timing_text(t), data))
    return rows


def timing_text(t: Timing) -> str:
    """One line: measured time, rates, and (an estimate) the fraction of the roofline."""
    text = f"{t.seconds * 1e3:.3f} ms, {t.tflops:.2f} TFLOP/s, {t.gbytes:.0f} GB/s"
    if t.fraction is None or t.roofline_seconds is None:
        return text + "; peaks unknown: no roofline"
    return (
        f"{text}; {t.fraction:.0%} of the roofline ({t.bound}-bound, "
        f"{t.roofline_seconds * 1e3:.3f} ms: an estimate)"
    )


def _random_encoder(name: str) -> Any:
    """The network of an encoder with random weights (the real architecture)."""
    if name == "inception":
        from shardeval.kernels.encoders.inception import FIDInception

        return FIDInception().eval()
    import transformers

    from benchmarks.extract import VIT_L
    from shardeval.kernels.encoders import vit

    shape: dict[str, Any] = dict(VIT_L)
    if name == "dinov2-vitl14":
        model = transformers.Dinov2Model(transformers.Dinov2Config(image_size=518, **shape))
        vit.use_hub_interpolation(model)
        return vit.DinoV2Features(model).eval()
    config = transformers.CLIPVisionConfig(image_size=336, projection_dim=768, **shape)
    return vit.ClipFeatures(transformers.CLIPVisionModelWithProjection(config)).eval()


def time_encoders(
    device: Any,
    peak: Peak | None,
    names: Sequence[str] = ("inception", "dinov2-vitl14", "clip-vitl14-336"),
    batch: int = 32,
    timer: Callable[[Callable[[], Any], Any], float] = measure,
) -> list[Row]:
    """Images per second of each encoder's forward pass on ``device`` (preprocessing, a CPU
    task, is not in it), and the fraction of the fp32 peak its counted FLOPs reach."""
    import torch

    from benchmarks.extract import flops_per_image
    from shardeval.kernels._selfcheck import describe
    from shardeval.kernels.encoders import ENCODERS

    try:
        counted = flops_per_image()
    except Exception:  # FLOPs are context, not the check: the rate is still measured
        counted = {}
    rows = []
    for name in names:
        side = ENCODERS[name].size
        try:
            net = _random_encoder(name).to(device)
            x = torch.rand(batch, 3, side, side, device=device)

            def forward(net: Any = net, x: Any = x) -> Any:
                with torch.inference_mode():
                    return net(x)

            seconds = timer(forward, device)
        except Exception as err:  # a missing extra or a failing network fails its row
            rows.append(Row("extraction", name, f"batch {batch}", "fp32", False, describe(err)))
            continue
        rate = batch / seconds
        flops = counted.get(name)
        data: dict[str, Any] = {"images_per_s": rate, "batch": batch, "flops_per_image": flops}
        result = f"{rate:,.1f} images/s"
        if flops:
            achieved = flops * rate
            data["tflops"] = achieved / 1e12
            result += f", {flops / 1e9:.1f} GFLOP/image, {achieved / 1e12:.2f} TFLOP/s"
            if peak is not None:
                data["fraction_of_fp32_peak"] = achieved / peak.fp32
                result += f" = {achieved / peak.fp32:.0%} of the fp32 peak (IEEE products)"
        rows.append(Row("extraction", name, f"batch {batch}", "fp32", True, result, data))
        del net
    return rows


# ---------------------------------------------------------------------------------------------
# output


def table(rows: Sequence[Row]) -> str:
    """The rows as one fixed-width table."""
    heads = ("section", "check", "shape", "dtype", "status", "result")
    cells = [
        (r.section, r.name, r.shape, r.dtype, "ok" if r.ok else "FAIL", r.result) for r in rows
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads[:-1], widths, strict=True)) + "  result"]
    lines.append("  ".join("-" * w for w in widths) + "  ------")
    for c in cells:
        lines.append(
            "  ".join(v.ljust(w) for v, w in zip(c[:-1], widths, strict=True)) + "  " + c[-1]
        )
    return "\n".join(lines)


def failures(rows: Sequence[Row]) -> list[str]:
    """One line per failed row, naming the section, check, shape and dtype."""
    return [
        " ".join(x for x in (r.section, r.name, r.shape, r.dtype) if x) + f": {r.result}"
        for r in rows
        if not r.ok
    ]


def report(rows: Sequence[Row], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: the run's facts, every row, and the failures."""
    failed = failures(rows)
    return {
        **meta,
        "passed": not failed,
        "failures": failed,
        "rows": [asdict(r) for r in rows],
    }


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (a temporary file in the same folder, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gpu-check-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=_jsonable, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return str(obj)


def _finite(obj: Any) -> Any:
    """Non-finite floats as strings (JSON has no inf or NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# the command


def refusal() -> str | None:
    """Why this machine cannot run the check (one line), or None."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return (
            "TRITON_INTERPRET is set: kernels would be interpreted, not compiled; unset it to "
            "check the GPU"
        )
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build"
        return (
            f"no CUDA device: torch {torch.__version__} ({build}) sees none; this check needs a "
            "CUDA GPU and a CUDA build of torch"
        )
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench-data/gpu-check.json", help="the JSON report")
    parser.add_argument("--device", default="cuda", help="the CUDA device (default: current)")
    args = parser.parse_args(argv)
    problem = refusal()
    if problem is not None:
        print(f"gpu-check: {problem}", file=sys.stderr)
        return 2
    import torch

    from shardeval.kernels import use_ieee_fp32
    from shardeval.kernels._selfcheck import POLICY_VARIABLE, describe

    # A kernel that fails must fail this run, not fall back to the torch path unseen.
    os.environ[POLICY_VARIABLE] = "strict"
    use_ieee_fp32()  # the entry point: IEEE fp32 products for the torch baselines and encoders
    device = torch.device(args.device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)  # the API's device="cuda" is this one
    props = torch.cuda.get_device_properties(device)
    peak = device_peak(props.name, props)
    started = time.perf_counter()

    def progress(line: str) -> None:
        print(f"  {time.perf_counter() - started:6.1f} s  {line}", file=sys.stderr, flush=True)

    sections: dict[str, float] = {}
    rows: list[Row] = []

    def section(name: str, produce: Callable[[], list[Row]]) -> None:
        t = time.perf_counter()
        progress(f"{name} ...")
        try:
            rows.extend(produce())
        except Exception as err:  # a section that crashed fails, and the report is still written
            rows.append(Row(name, "the section crashed", "", "", False, describe(err)))
        sections[name] = time.perf_counter() - t

    section("kernels", lambda: kernel_rows(check_kernels(device, progress=progress)))
    section("metrics", lambda: check_metrics("cuda", metric_data(), progress=progress))
    section("roofline", lambda: time_kernels(device, peak))
    section("extraction", lambda: time_encoders(device, peak))
    seconds = time.perf_counter() - started
    meta = {
        "tool": "gpu-check",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {
            "name": props.name,
            "index": device.index,
            "capability": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count,
            "memory_bytes": props.total_memory,
        },
        "peak": None if peak is None else asdict(peak),
        "versions": _versions(),
        "seconds": seconds,
        "sections_seconds": sections,
        "budget_seconds": BUDGET_SECONDS,
    }
    title = f"gpu-check on {props.name} ({device}); peaks: {peak.source if peak else 'unknown'}"
    return finish(rows, meta, args.out, title)


def finish(rows: Sequence[Row], meta: dict[str, Any], out: str, title: str) -> int:
    """Print the table, write the JSON report, name every failure on stderr; the exit status
    (0 all passed, 1 something failed)."""
    print(f"# {title}")
    print(table(rows))
    seconds = float(meta.get("seconds", 0.0))
    over = f" (over the {BUDGET_SECONDS:.0f} s budget)" if seconds > BUDGET_SECONDS else ""
    print(f"# {seconds:.0f} s{over}; roofline fractions are estimates from stated FLOPs and bytes")
    write_json(out, _finite(report(rows, meta)))
    failed = failures(rows)
    for line in failed:
        print(f"gpu-check: FAIL {line}", file=sys.stderr)
    if failed:
        print(f"gpu-check: {len(failed)} check(s) failed; report: {out}", file=sys.stderr)
        return 1
    print(f"gpu-check: all checks passed; report: {out}")
    return 0


def _versions() -> dict[str, str]:
    import torch
    import triton

    import shardeval

    return {
        "shardeval": getattr(shardeval, "__version__", "unknown"),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": triton.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
