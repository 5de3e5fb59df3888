"""FLD: shardeval from Zarr stores against the authors' computation transcribed from its
definition (torch, float32, the N × M distances held in memory), side by side, each in its own
process (time and peak memory).

Data: a training set, a held-out test set drawn like it and a generated set (mean shifted,
scaled 1.1), each N(μ, A Aᵀ) rows of ``--d`` features (default 768) with a decaying spectrum,
written once as Zarr stores and ``.npy`` files. Methods:

* ``fld/shardeval``: ``se.fld(TRAIN, TEST, GEN)``: float64, the distances kept between epochs
  (they fit in 4 GiB here);
* ``fld/authors-def``: the authors' steps (``fld/MoG.py``, ``fld/metrics/FLD.py``) written
  from their definition in torch: float32 ``cdist`` squared, the log-variances and the origin
  component fitted by autograd and ``torch.optim.Adam``, 50 epochs of batches of 10,000 rows,
  the baseline on half the training rows fitted to the other half. Their permutations are
  torch's, so the two values differ by the seeds as well as by float32.

No package of the authors installs from a registry, hence the transcription.

Usage:
    python -m benchmarks.fld [--train 20000] [--test 5000] [--gen 5000] [--d 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")
CHUNK = 5_000


def _path(tag: str, name: str) -> str:
    return os.path.join(DATA_DIR, f"{tag}-{name}")


def make_data(train: int, test: int, gen: int, d: int) -> str:
    import zarr

    tag = f"fld-{train}-{test}-{gen}-{d}"
    sets = {"train": (train, 0.0, 1.0), "test": (test, 0.0, 1.0), "gen": (gen, 0.05, 1.1)}
    if all(os.path.exists(_path(tag, f"{s}.{e}")) for s in sets for e in ("zarr", "npy")):
        return tag
    os.makedirs(DATA_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0] / np.sqrt(1.0 + np.arange(d))
    mean = 0.1 * rng.normal(size=d)
    for name, (n, shift, scale) in sets.items():
        rows = (scale * rng.normal(size=(n, d)) @ basis.T + mean + shift).astype(np.float32)
        np.save(_path(tag, f"{name}.npy"), rows)
        z = zarr.create_array(
            _path(tag, f"{name}.zarr"), shape=rows.shape, dtype=rows.dtype,
            chunks=(CHUNK, d), overwrite=True, compressors=None,
        )  # fmt: skip
        z[...] = rows
    return tag


def _shardeval(tag: str) -> dict[str, Any]:
    import shardeval as se

    report = se.fld(*(_path(tag, f"{s}.zarr") for s in ("train", "test", "gen")))
    return {"value": report.to_dict()["fld"]["fld"]}


def _authors_def(tag: str) -> dict[str, Any]:
    import torch

    train, test, gen = (torch.from_numpy(np.load(_path(tag, f"{s}.npy"))) for s in
                        ("train", "test", "gen"))  # fmt: skip
    mean, std = test.mean(dim=0), test.std(dim=0)
    train, test, gen = ((x - mean) / std for x in (train, test, gen))
    d = train.shape[1]
    log_2pi = 0.5 * d * math.log(2 * math.pi)

    def fit(centres: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x[torch.randperm(x.shape[0])]
        dists = torch.cdist(x, centres) ** 2
        log_var = ((dists.min(dim=0).values + 1e-3) / d).log().requires_grad_(True)
        origin = torch.tensor(0.0, requires_grad=True)
        origin_dists = 0.81 * torch.cdist(x, x.mean(dim=0, keepdim=True)) ** 2
        opt = torch.optim.Adam([log_var, origin], lr=0.5)
        for _ in range(50):
            for i in range(0, x.shape[0], 10_000):
                opt.zero_grad()
                pair = -0.5 * dists[i : i + 10_000] / log_var.exp() - 0.5 * d * log_var
                org = -0.5 * origin_dists[i : i + 10_000] / origin.exp() - 0.5 * d * origin
                both = torch.cat([pair - math.log(centres.shape[0]), org], dim=1) - log_2pi
                loss = -torch.logsumexp(both, dim=1).mean() / d
                loss.backward()
                opt.step()
                with torch.no_grad():
                    log_var.clamp_(-40, 20)
        return log_var.detach()

    def nll(centres: torch.Tensor, log_var: torch.Tensor, x: torch.Tensor) -> float:
        pair = -0.5 * torch.cdist(x, centres) ** 2 / log_var.exp() - 0.5 * d * log_var
        lls = torch.logsumexp(pair - math.log(centres.shape[0]) - log_2pi, dim=1)
        return float(-lls.mean() / d)

    nll_gen = nll(gen, fit(gen, train), test)
    shuffled = train[torch.randperm(train.shape[0])]
    half = min(gen.shape[0], train.shape[0] // 2)
    base = shuffled[:half]
    nll_base = nll(base, fit(base, shuffled[half:]), test)
    return {"value": 100.0 * (nll_gen - nll_base)}


METHODS: dict[str, Callable[[str], Any]] = {
    "fld/shardeval": _shardeval,
    "fld/authors-def": _authors_def,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=20_000, help="training rows")
    parser.add_argument("--test", type=int, default=5_000, help="test rows")
    parser.add_argument("--gen", type=int, default=5_000, help="generated rows")
    parser.add_argument("--d", type=int, default=768, help="features per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch  # noqa: F401  # imports outside the timed region

        import shardeval
        import shardeval.pipeline.memorization.fld
        import shardeval.pipeline.memorization.metrics  # noqa: F401

        child(METHODS, args.child[0], args.child[1:])
        return
    tag = make_data(args.train, args.test, args.gen, args.d)
    print(
        f"# {cpu_name()}; train {args.train:,}, test {args.test:,}, gen {args.gen:,} rows of "
        f"{args.d} features; medians of {args.repeats} runs"
    )
    print(f"{'method':<18} {'value':>12} {'seconds':>9} {'peak MiB':>9} {'ratio':>7}")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for m in METHODS:
            runs[m].append(run_child("benchmarks.fld", m, tag))
    med = {m: medians(rs) for m, rs in runs.items()}
    base = med["fld/authors-def"]["seconds"]
    for m, r in med.items():
        print(
            f"{m:<18} {r['value']['value']:>12.6g} {r['seconds']:>9.2f} "
            f"{r['peak_rss_mib']:>9.0f} {r['seconds'] / base:>7.3f}"
        )


if __name__ == "__main__":
    main()
