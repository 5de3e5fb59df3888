"""How a Triton kernel is checked: the declaration each launcher module makes beside its kernel,
the comparisons the declarations share, and running one case.

Each launcher module (:mod:`~shardeval.kernels.moments`, :mod:`~shardeval.kernels.lse`,
:mod:`~shardeval.kernels.density`, :mod:`~shardeval.kernels.pair_sums`,
:mod:`~shardeval.kernels.pair_decisions`) declares, beside its launcher and its torch path, a
:class:`KernelSpec` per ``@triton.jit`` kernel: how to make inputs at a shape and dtype, the
Triton path, the torch path, the float64 reference, the error measure and its tolerance, and the
FLOPs and bytes for a roofline. :func:`declare` records it by name, so that the first-use check
(:func:`first_use_check`, called by :mod:`shardeval.kernels._selfcheck`) finds the declaration
of the kernel its launcher names without importing any other launcher: the module that launches
a kernel is the module that declared it. :mod:`shardeval.kernels.checks` assembles the
declarations into the table of the GPU acceptance run.

Tolerances. Every kernel loads its input in whatever dtype it has and converts it on load
(fp16/bf16 to fp32, fp32 stays), and the reference is computed from the same, already rounded,
values in float64. So an input dtype changes the data, not the arithmetic, and the tolerance of
fp16 and bf16 input is that of fp32; a declaration keeps one entry per dtype so that a kernel
that accumulated in the input's precision would need its own, visible entry. The errors of fp32
accumulation grow with the accumulation length L (rows for the co-moment, d for a dot product,
k for a row's log-sum-exp): the allowed error is the table's value times max(1, log2 L), the
growth of blocked pairwise summation. Under the interpreter, at small shapes, no error came
within a fiftieth of its tolerance, while a 0.1% error in a kernel fails by far (the tests);
the errors at the large shapes on a GPU are still to be measured by the first run.
Kernels whose paths are exact or carry their own rigorous bound take no growth: kernel sums
(float64 products) are compared in units of the bound each result carries, neighbour distances
must equal the float64 definition to rounding, radius decisions must be identical.
Nothing here imports torch before a case runs (the CPU shard-moments path needs no torch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardeval.kernels._dispatch import triton_interpreted

if TYPE_CHECKING:
    import torch

#: Input dtypes the checks cover, by name, and the torch dtype of each.
DTYPE_NAMES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

#: The first-use check's rows and features: past the largest tile of every launcher (64 rows,
#: 32 or 64 features) and no multiple of 16, so that the check compiles the block configuration
#: real shards use, with masked edges. Under the interpreter, whose tiles stop at 32, 37 does
#: the same at a quarter of the cost.
CHECK_SIZE, CHECK_SIZE_INTERPRETED = 67, 37

#: Seed of the first-use check's inputs.
CHECK_SEED = 20260


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of an input dtype name of :data:`DTYPE_NAMES`."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


@dataclass(frozen=True)
class Shape:
    """Rows and features of a case; ``partner``: the other block's rows for a block-pair
    kernel (0 otherwise); ``diagonal``: the block paired with itself (x is y)."""

    rows: int
    d: int
    partner: int = 0
    diagonal: bool = False

    def label(self) -> str:
        if not self.partner:
            return f"{self.rows}x{self.d}"
        pair = f"{self.rows}x{self.partner}" if not self.diagonal else f"{self.rows} (itself)"
        return f"{pair} d={self.d}"


Inputs = dict[str, Any]


@dataclass(frozen=True)
class KernelSpec:
    """One Triton kernel and everything needed to check and time it.

    Attributes:
        name: the kernel's name in warnings, verdicts and reports.
        jit: ``module.function`` of its ``@triton.jit`` kernel.
        inputs: (shape, dtype, device, seed, variant) → the inputs.
        triton: the Triton path on the inputs.
        torch_path: what the dispatcher runs when the kernel fails its check.
        reference: the float64 reference.
        error: (result, expected) → normalised error (inf when not finite where it should be).
        tolerance: allowed error per input dtype, before growth.
        length: accumulation length L of a shape (1: no growth).
        flops: floating-point operations of one launch at a shape (2 per multiply-add).
        bytes: bytes a launch must move at least (inputs read once, outputs written once).
        peak: which peak bounds its arithmetic: ``fp32`` (CUDA cores) or ``fp64``.
        timed: inputs → a closure launching only the kernel (for the roofline).
        bench: the shape it is timed at.
        pair: a block-pair kernel (shapes have a partner).
        diagonal: it has a diagonal-block mode (checked where rows ≤ the partner limit).
        variants: kernel modes checked separately (the polynomial and RBF kernel sums).
    """

    name: str
    jit: str
    inputs: Callable[[Shape, torch.dtype, torch.device, int, str], Inputs]
    triton: Callable[[Inputs], Any]
    torch_path: Callable[[Inputs], Any]
    reference: Callable[[Inputs], Any]
    error: Callable[[Any, Any], float]
    tolerance: Mapping[str, float]
    length: Callable[[Shape], int]
    flops: Callable[[Shape], float]
    bytes: Callable[[Shape, int], float]
    peak: str
    timed: Callable[[Inputs], Callable[[], Any]]
    bench: Shape
    pair: bool = False
    diagonal: bool = False
    variants: tuple[str, ...] = ("",)

    def allowed(self, shape: Shape, dtype: str) -> float:
        """The error allowed at ``shape`` for input ``dtype``."""
        return self.tolerance[dtype] * max(1.0, math.log2(max(1, self.length(shape))))


_DECLARED: dict[str, KernelSpec] = {}


def declare(spec: KernelSpec) -> KernelSpec:
    """Record ``spec`` as its kernel's declaration (at its module's import, or a reload's).

    Raises:
        ValueError: another kernel is declared under the name.
    """
    known = _DECLARED.get(spec.name)
    if known is not None and known.jit != spec.jit:
        raise ValueError(f"Triton kernels {known.jit} and {spec.jit} are both named {spec.name!r}")
    _DECLARED[spec.name] = spec
    return spec


def declared(name: str) -> KernelSpec:
    """The declaration of kernel ``name``.

    Raises:
        KeyError: no imported module declared it (the message lists those that did).
    """
    try:
        return _DECLARED[name]
    except KeyError:
        known = ", ".join(_DECLARED) or "none"
        raise KeyError(f"no Triton kernel {name!r} is declared; declared: {known}") from None


# ---------------------------------------------------------------------------------------------
# inputs and comparisons shared by the declarations


def per_dtype(value: float) -> dict[str, float]:
    """One tolerance for every input dtype (the kernels convert on load: see the module)."""
    return dict.fromkeys(DTYPE_NAMES, value)


def pair_flops(s: Shape) -> float:
    """2 · rows · partner · d: one product of a block pair."""
    return 2.0 * s.rows * s.partner * s.d


def randn(shape: tuple[int, ...], seed: int, device: torch.device, dtype: Any = None) -> Any:
    """Standard normal values from a seeded generator on ``device`` (nothing crosses the bus)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=dtype or torch.float32)


def normal_rows(
    n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int, offset: float
) -> Any:
    """(n, d) rows of spread 1.5 about ``offset``, in ``dtype``."""
    return (randn((n, d), seed, device) * 1.5 + offset).to(dtype)


def max_abs(t: Any) -> float:
    import torch

    t = torch.as_tensor(t)
    return float(t.abs().max()) if t.numel() else 0.0


def _comparable(got: Any, want: Any, flat: bool = False) -> tuple[Any, Any] | float:
    """``got`` and ``want`` as float64 CPU tensors (``flat``: 1-D), or the distance already
    decided: inf for other shapes or a value that is not finite, 0 for nothing to compare."""
    import torch

    g = torch.as_tensor(got, dtype=torch.float64).cpu()
    w = torch.as_tensor(want, dtype=torch.float64).cpu()
    if flat:
        g, w = g.reshape(-1), w.reshape(-1)
    if g.shape != w.shape:
        return math.inf
    if g.numel() == 0:
        return 0.0
    if not (torch.isfinite(g).all() and torch.isfinite(w).all()):
        return math.inf
    return g, w


def scaled(got: Any, want: Any, scale: float) -> float:
    """max |got − want| / scale; inf where a value is not finite (or differs in finiteness)."""
    pair = _comparable(got, want)
    if isinstance(pair, float):
        return pair
    g, w = pair
    diff = float((g - w).abs().max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def log_space(got: Any, want: Any) -> float:
    """max |Δ| / (1 + |want|): for log-densities and log-sum-exps, whose fp32 error is
    relative to the sum inside the logarithm (so absolute in nats) for small values and
    relative for large ones."""
    pair = _comparable(got, want, flat=True)
    if isinstance(pair, float):
        return pair
    g, w = pair
    return float(((g - w).abs() / (1.0 + w.abs())).max())


def lse_value(pair: Any) -> Any:
    """max + log(sum) of a log-sum-exp pair."""
    import torch

    return pair[0] + torch.log(pair[1])


def same(got: Any, want: Any) -> bool:
    """Equal values (as float64 on the CPU)."""
    import torch

    g = torch.as_tensor(got, dtype=torch.float64).cpu()
    return bool(torch.equal(g, torch.as_tensor(want, dtype=torch.float64).cpu()))


# ---------------------------------------------------------------------------------------------
# running a case


def describe(err: BaseException) -> str:
    """One line for an exception: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@dataclass(frozen=True)
class Verdict:
    """The outcome of one kernel's check on one device.

    Attributes:
        ok: the kernel runs as Triton on this device.
        reason: why not (empty when ``ok``).
        error: the check's normalised error (None when the kernel did not run).
        tolerance: what the error was allowed.
    """

    ok: bool
    reason: str = ""
    error: float | None = None
    tolerance: float | None = None


@dataclass(frozen=True)
class Outcome:
    """One kernel at one shape, dtype and variant, against the reference or its torch path.

    Attributes:
        failure: empty when it passed; else what went wrong, in one line.
        error: the normalised error (None when the kernel did not run).
        tolerance: what the error was allowed.
        seconds: wall time of the Triton call (compilation included on a first call).
    """

    kernel: str
    variant: str
    shape: Shape
    dtype: str
    error: float | None
    tolerance: float
    failure: str = ""
    seconds: float = 0.0
    against: str = "reference"

    @property
    def ok(self) -> bool:
        return not self.failure

    def label(self) -> str:
        name = f"{self.kernel}[{self.variant}]" if self.variant else self.kernel
        return f"{name} {self.shape.label()} {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "variant": self.variant,
            "rows": self.shape.rows,
            "d": self.shape.d,
            "partner": self.shape.partner,
            "diagonal": self.shape.diagonal,
            "dtype": self.dtype,
            "error": self.error,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "failure": self.failure,
            "seconds": self.seconds,
            "against": self.against,
        }


def run_case(
    kernel: KernelSpec,
    shape: Shape,
    dtype: str,
    device: torch.device | str,
    *,
    variant: str = "",
    against: str = "reference",
    seed: int = 0,
    slack: float = 1.0,
) -> Outcome:
    """Run ``kernel`` at ``shape`` and compare it with its float64 reference (``against=
    "reference"``) or with its torch path (``"torch"``).

    Never raises for the kernel's own failures: a compile or launch error, a non-finite result
    or an error beyond ``slack`` × the allowed one is an :class:`Outcome` whose ``failure``
    names it. Running out of device memory propagates (it says nothing about the kernel).
    """
    import torch

    if against not in ("reference", "torch"):
        raise ValueError(f"against must be 'reference' or 'torch', got {against!r}")
    device = torch.device(device)
    allowed = slack * kernel.allowed(shape, dtype)
    inputs = kernel.inputs(shape, torch_dtype(dtype), device, seed, variant)
    start = time.perf_counter()
    try:
        got = kernel.triton(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # any failure of the kernel: compile, PTX, launch, assertion
        failure = f"did not compile or run: {describe(err)}"
        seconds = time.perf_counter() - start
        return Outcome(kernel.name, variant, shape, dtype, None, allowed, failure, seconds, against)
    seconds = time.perf_counter() - start
    want = kernel.reference(inputs) if against == "reference" else kernel.torch_path(inputs)
    error = float(kernel.error(got, want))
    failure = ""
    if not error <= allowed:  # NaN and inf fail too
        what = "the float64 reference" if against == "reference" else "its torch path"
        failure = f"disagrees with {what}: error {error:.3g} > tolerance {allowed:.3g}"
    return Outcome(kernel.name, variant, shape, dtype, error, allowed, failure, seconds, against)


def first_use_check(kernel: KernelSpec | str, device: torch.device) -> Verdict:
    """The first-use check of ``kernel`` (a declaration, or the name of one) on ``device``:
    :data:`CHECK_SIZE` rows and features in fp32 (partner blocks 6 rows fewer), every variant
    (and the diagonal mode of a block-pair kernel that has one), against its torch path,
    allowing twice the kernel's tolerance (both paths are within it of the exact values).

    Raises:
        KeyError: ``kernel`` names no declared kernel.
    """
    spec = declared(kernel) if isinstance(kernel, str) else kernel
    size = CHECK_SIZE_INTERPRETED if triton_interpreted() else CHECK_SIZE
    shapes = [Shape(size, size, size - 6 if spec.pair else 0)]
    if spec.diagonal:
        shapes.append(Shape(size, size, size, True))
    worst: tuple[float, float] = (0.0, 0.0)
    for shape in shapes:
        for variant in spec.variants:
            outcome = run_case(
                spec,
                shape,
                "fp32",
                device,
                variant=variant,
                against="torch",
                seed=CHECK_SEED,
                slack=2.0,
            )
            if not outcome.ok:
                return Verdict(
                    False,
                    f"{outcome.failure} (at {outcome.label()})",
                    outcome.error,
                    outcome.tolerance,
                )
            if outcome.error is not None and outcome.error >= worst[0]:
                worst = (outcome.error, outcome.tolerance)
    return Verdict(True, "", worst[0], worst[1])
