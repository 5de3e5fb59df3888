"""Calibration of the ESS interval (``ess --ci``): how often it is given, and how often the
intervals given cover the population ESS/N, over independent replicates of known weight laws.

Each replicate is N log-weights run through the pieces :func:`shardeval.ess` runs after its
merge (:func:`~shardeval.pipeline.likelihood.ess.summarize_weights` on one block, the PSIS k̂
from the kept tail, :func:`~shardeval.pipeline.likelihood.ess.ess_interval`), so the table
measures the shipped rule, whatever it is. Laws, each with its f = ESS/N = m₁²/m₂ in closed form:

* log w ~ N(0, σ²): f = exp(−σ²); every moment finite.
* w ~ generalized Pareto (shape k, scale 1): f = (1 − 2k) / (2(1 − k)); k = 0 is exponential
  weights, and the tail has moments of order below 1/k.
* log w ~ Laplace(0, b): E w^j = 1/(1 − j²b²) for j·b < 1, so f = (1 − 4b²)/(1 − b²)²; a Pareto
  upper tail of shape b around a nearly equal bulk.
* log w ~ 0.3·Student-t₄: E w = ∞ (the exponential of any t variable has no finite moment), so
  f = 0 and no interval of a finite sample covers it unless clipped at 0: it must be withheld.

Columns: printed, the share of replicates given an interval; coverage, the share of those whose
interval holds f (± its binomial standard error); then the shares withheld for k̂ (≥ 0.25 or
undetermined), for the fourth powers (Σw⁴/max w⁴ below the threshold, where the rule has one)
and for nearly equal weights; verdict: ``ok`` (coverage 92–98 %), ``withheld`` (printed in at
most 5 % of replicates), else ``UNDER`` or ``OVER``.

Usage:
    python -m benchmarks.ess_interval_calibration [--replicates 3000] [--level 0.95] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np

Draw = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def _log_normal(sigma: float) -> tuple[str, Draw, float]:
    return (
        f"log w ~ N(0, {sigma}²)",
        lambda rng, shape: rng.normal(0.0, sigma, shape),
        math.exp(-(sigma**2)),
    )


def _pareto(k: float) -> tuple[str, Draw, float]:
    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        u = rng.random(shape)
        w = np.expm1(-k * np.log(u)) / k if k else -np.log(u)  # GPD quantile of 1 − u
        return np.log(w)

    return f"w ~ GPD(k = {k})", draw, (1 - 2 * k) / (2 * (1 - k))


def _laplace(b: float) -> tuple[str, Draw, float]:
    return (
        f"log w ~ Laplace(0, {b})",
        lambda rng, shape: rng.laplace(0.0, b, shape),
        (1 - 4 * b * b) / (1 - b * b) ** 2,
    )


def _student() -> tuple[str, Draw, float]:
    return "log w ~ 0.3·t₄", lambda rng, shape: 0.3 * rng.standard_t(4, shape), 0.0


LAWS = [
    *(_log_normal(s) for s in (0.2, 0.3, 0.5, 0.7, 1.0, 1.5)),
    *(_pareto(k) for k in (0.0, 0.1, 0.2)),
    *(_laplace(b) for b in (0.1, 0.2)),
    _student(),
]
SIZES = (200, 1000, 5000)


def _reason(withheld: str) -> str:
    if "Pareto k̂" in withheld:
        return "khat"
    if "Σw⁴" in withheld:
        return "fourth"
    if "nearly equal" in withheld:
        return "equal"
    return "other"


def cell(draw: Draw, truth: float, n: int, replicates: int, level: float, seed: int) -> dict:
    """Run ``replicates`` replicates of n log-weights; the shares given and withheld (by
    reason) and the coverage of ``truth`` among the intervals given."""
    from shardeval.pipeline.likelihood.ess import ess_interval, summarize_weights
    from shardeval.pipeline.likelihood.psis import psis_khat, tail_size

    rng = np.random.default_rng(seed)
    keep = tail_size(n) + 1
    covered: list[bool] = []
    reasons = {"khat": 0, "fourth": 0, "equal": 0, "other": 0}
    for start in range(0, replicates, 250):
        for lw in draw(rng, (min(250, replicates - start), n)):
            weights = summarize_weights(lw, 0, keep, 1.0, "cpu", "auto", True).weights
            got = ess_interval(weights, psis_khat(weights.top, n), level)
            if got.withheld is not None:
                reasons[_reason(got.withheld)] += 1
            elif got.low is not None and got.high is not None:
                covered.append(got.low <= truth <= got.high)
    printed = len(covered) / replicates
    coverage = float(np.mean(covered)) if covered else float("nan")
    error = math.sqrt(coverage * (1 - coverage) / len(covered)) if covered else float("nan")
    if printed <= 0.05:
        verdict = "withheld"
    else:
        verdict = "ok" if 0.92 <= coverage <= 0.98 else "UNDER" if coverage < 0.92 else "OVER"
    shares = {name: count / replicates for name, count in reasons.items()}
    return {"printed": printed, "coverage": coverage, "error": error, "verdict": verdict, **shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=3000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    print(f"{args.replicates:,} replicates a cell, {args.level:.0%} intervals")
    header = (
        f"{'law':26s} {'f':>6s} {'N':>6s} {'printed':>8s} {'coverage':>15s} "
        f"{'k̂':>6s} {'Σw⁴':>6s} {'equal':>6s}  verdict"
    )
    print(header)
    failures = 0
    for i, (label, draw, truth) in enumerate(LAWS):
        for j, n in enumerate(SIZES):
            got = cell(draw, truth, n, args.replicates, args.level, args.seed + 10 * i + j)
            coverage = f"{got['coverage']:.3f} ± {got['error']:.3f}" if got["printed"] else "—"
            print(
                f"{label:26s} {truth:6.3f} {n:6,d} {got['printed']:8.3f} {coverage:>15s} "
                f"{got['khat']:6.3f} {got['fourth']:6.3f} {got['equal']:6.3f}  {got['verdict']}",
                flush=True,
            )
            failures += got["verdict"] in ("UNDER", "OVER")
    print(f"cells outside 92–98 % and printed in more than 5 %: {failures}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
