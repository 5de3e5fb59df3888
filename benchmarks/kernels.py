"""Per-kernel speed on whatever device is present, against the best plain torch expression of
the same computation on the same device.

On a CUDA device the kernels run as compiled Triton; on a CPU the dispatcher's CPU paths run
(BLAS syrk, torch), and the Triton kernels are not timed (the interpreter is for tests only).

Reports, per kernel: median time, achieved TFLOP/s (matrix kernels) or GB/s (reductions), and
time ratio ours / torch. On CUDA, also how far tf32x3 shard moments are from the fp64 answer.

Usage:
    python -m benchmarks.kernels [--full]      # --full: the issue's sizes even on a CPU
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks._harness import cpu_name
from shardeval.kernels import (
    gaussian_logpdf,
    logsumexp,
    parzen_logpdf,
    shard_moments,
    shard_moments_reference,
    weight_stats,
)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=5, rep=max(25, repeats * 10))) / 1e3
    fn()  # warm-up (allocations, BLAS thread start)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_moments(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=0)
    return centred.T @ centred


def _torch_parzen(x: torch.Tensor, y: torch.Tensor, h: float, chunk: int = 4096) -> torch.Tensor:
    out = []
    for start in range(0, x.shape[0], chunk):
        dist = torch.cdist(x[start : start + chunk], y) ** 2
        out.append(torch.logsumexp(-dist / (2 * h * h), dim=1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="full sizes even on a CPU")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full = args.full or device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # IEEE fp32 for the torch baselines too
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} torch threads"
    )
    print(f"# device: {name}; medians; ratio = ours / torch (below 1: ours faster)")
    print(f"{'kernel':<34} {'shape':<22} {'ours ms':>9} {'torch ms':>9} {'rate':>16} {'ratio':>6}")
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    def row(label: str, shape: str, ours: float, base: float, rate: str) -> None:
        print(
            f"{label:<34} {shape:<22} {ours * 1e3:>9.2f} {base * 1e3:>9.2f} {rate:>16} "
            f"{ours / base:>6.2f}"
        )

    n, d = (50_000, 2048) if full else (8192, 1024)
    x = rand(n, d) + 3.0
    t_ours = _timed(lambda: shard_moments(x), device, args.repeats)
    t_base = _timed(lambda: _torch_moments(x), device, args.repeats)
    row(
        "shard_moments (fp32 ieee)",
        f"{n}x{d}",
        t_ours,
        t_base,
        f"{2 * n * d * d / t_ours / 1e12:.2f} TFLOP/s*",
    )
    if device.type == "cuda":
        ref = shard_moments_reference(x).m2
        fast = shard_moments(x, dot_precision="tf32x3")
        ieee = shard_moments(x)
        t_fast = _timed(lambda: shard_moments(x, dot_precision="tf32x3"), device, args.repeats)
        scale = float(ref.abs().max())
        print(
            f"{'shard_moments (tf32x3)':<34} {f'{n}x{d}':<22} {t_fast * 1e3:>9.2f} "
            f"{'':>9} {2 * n * d * d / t_fast / 1e12:>12.2f} TFLOP/s*  "
            f"max|err|/max|m2|: tf32x3 {float((fast.m2 - ref).abs().max()) / scale:.2e}, "
            f"ieee {float((ieee.m2 - ref).abs().max()) / scale:.2e}"
        )

    rows, k = (1_000_000, 64) if full else (200_000, 64)
    lw = rand(rows, k) * 10
    t_ours = _timed(lambda: logsumexp(lw, dim=1), device, args.repeats)
    t_base = _timed(lambda: torch.logsumexp(lw, dim=1), device, args.repeats)
    row(
        "logsumexp (rows)",
        f"{rows}x{k}",
        t_ours,
        t_base,
        f"{lw.numel() * 4 / t_ours / 1e9:.1f} GB/s",
    )

    flat = rand(10_000_000 if full else 2_000_000) * 10
    t_ours = _timed(lambda: weight_stats(flat, top=100), device, args.repeats)
    t_base = _timed(
        lambda: (torch.logsumexp(flat, 0), torch.logsumexp(2 * flat, 0), torch.topk(flat, 100)),
        device,
        args.repeats,
    )
    row(
        "weight_stats (+top-100)",
        f"{flat.numel()}",
        t_ours,
        t_base,
        f"{flat.numel() * 4 / t_ours / 1e9:.1f} GB/s",
    )

    n, d = (50_000, 2048) if full else (8192, 512)
    a = rand(d, d)
    chol = torch.linalg.cholesky(a @ a.T / d + torch.eye(d, device=device))
    mean, xs = rand(d), rand(n, d)
    linv = torch.linalg.solve_triangular(chol, torch.eye(d, device=device), upper=False)
    t_ours = _timed(lambda: gaussian_logpdf(xs, mean, chol), device, args.repeats)
    t_base = _timed(lambda: ((xs - mean) @ linv.T).square().sum(1), device, args.repeats)
    row("gaussian_logpdf", f"{n}x{d}", t_ours, t_base, f"{n * d * d / t_ours / 1e12:.2f} TFLOP/s")

    n, m, d = (16_384, 65_536, 2048) if full else (2048, 4096, 256)
    q, s = rand(n, d), rand(m, d)
    h = math.sqrt(d)
    t_ours = _timed(lambda: parzen_logpdf(q, s, h), device, args.repeats)
    t_base = _timed(lambda: _torch_parzen(q, s, h), device, args.repeats)
    row(
        "parzen_logpdf",
        f"{n}x{m}x{d}",
        t_ours,
        t_base,
        f"{2 * n * m * d / t_ours / 1e12:.2f} TFLOP/s",
    )
    print(
        "* shard_moments rate counts the 2·n·d² flops of the full product; syrk/upper-tile "
        "kernels do about half of them"
    )


if __name__ == "__main__":
    main()
