"""The metrics of a held-out test set, C_T and FLD: shardeval from Zarr stores against the
reference computation transcribed from its definition (no package of either installs from a
registry), side by side, each method in its own process (time and peak memory).

Data: a training set, a held-out test set drawn like it and a generated set, N(μ, A Aᵀ) rows
with a decaying spectrum, written once as Zarr stores and ``.npy`` files.

* ``ct``: ``--d`` 64 (the width dgm-eval computes C_T at, after its PCA of wider features);
  half the generated rows are jittered copies of training rows. ``ct/shardeval`` is
  ``se.ct(TRAIN, TEST, GEN)`` (k-means on a seeded sample of at most 10,000 training rows, each
  row's nearest training row of its cell exact); ``ct/dgm-eval-def`` is dgm-eval's steps
  (``dgm_eval/metrics/ct.py``): scikit-learn's ``KMeans(n_clusters=3, n_init=10)`` on every
  training row, a ``NearestNeighbors`` search per cell, scipy's ``mannwhitneyu``, its Z-score
  and weights. The values differ by the k-means cells, not by the statistic.
* ``fld``: ``--d`` 768; the generated set's mean shifted, its scale 1.1. ``fld/shardeval`` is
  ``se.fld(TRAIN, TEST, GEN)`` (float64, the distances kept between epochs);
  ``fld/authors-def`` the authors' steps (``fld/MoG.py``, ``fld/metrics/FLD.py``) in torch:
  float32 ``cdist`` squared, the log-variances and the origin component fitted by autograd and
  ``torch.optim.Adam``, 50 epochs of batches of 10,000 rows, the baseline on half the training
  rows fitted to the other half. Their permutations are torch's, so the values differ by the
  baseline's split as well as by float32.

Usage:
    python -m benchmarks.heldout ct [--train 50000] [--test 10000] [--gen 10000] [--d 64]
    python -m benchmarks.heldout fld [--train 20000] [--test 5000] [--gen 5000] [--d 768]
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, side_by_side

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")

#: Each metric's default sizes: (train, test, gen, d) and its rows per stored chunk.
SIZES = {"ct": ((50_000, 10_000, 10_000, 64), 10_000), "fld": ((20_000, 5_000, 5_000, 768), 5_000)}


def _path(tag: str, name: str) -> str:
    return os.path.join(DATA_DIR, f"{tag}-{name}")


def _save(tag: str, rows: dict[str, np.ndarray], chunk: int) -> None:
    import zarr

    for name, x in rows.items():
        x = x.astype(np.float32)
        np.save(_path(tag, f"{name}.npy"), x)
        z = zarr.create_array(
            _path(tag, f"{name}.zarr"), shape=x.shape, dtype=x.dtype,
            chunks=(chunk, x.shape[1]), overwrite=True, compressors=None,
        )  # fmt: skip
        z[...] = x


def _ready(tag: str) -> bool:
    names = ("train", "test", "gen")
    return all(os.path.exists(_path(tag, f"{s}.{e}")) for s in names for e in ("zarr", "npy"))


def _gaussian(rng: np.random.Generator, d: int) -> Callable[..., np.ndarray]:
    """Rows of N(μ, A Aᵀ), A orthogonal times a decaying spectrum, ``scale`` times spread."""
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0] / np.sqrt(1.0 + np.arange(d))
    mean = 0.1 * rng.normal(size=d)
    return lambda n, scale=1.0: scale * rng.normal(size=(n, d)) @ basis.T + mean


def make_data(metric: str, train: int, test: int, gen: int, d: int) -> str:
    tag = f"{metric}-{train}-{test}-{gen}-{d}"
    if _ready(tag):
        return tag
    os.makedirs(DATA_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    draw = _gaussian(rng, d)
    rows = {"train": draw(train), "test": draw(test)}
    if metric == "ct":
        copies = rows["train"][rng.choice(train, gen // 2, replace=False)]
        jittered = copies + 0.01 * rng.normal(size=copies.shape)
        rows["gen"] = np.concatenate([jittered, draw(gen - gen // 2)])
    else:
        rows["gen"] = draw(gen, 1.1) + 0.05
    _save(tag, rows, SIZES[metric][1])
    return tag


def _shardeval(metric: str, tag: str) -> dict[str, Any]:
    import shardeval as se

    report = getattr(se, metric)(*(_path(tag, f"{s}.zarr") for s in ("train", "test", "gen")))
    return {"value": report.to_dict()[metric][metric]}


def _dgm_eval_def(tag: str) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    train, test, gen = (np.load(_path(tag, f"{s}.npy")) for s in ("train", "test", "gen"))
    cells = KMeans(n_clusters=3, n_init=10).fit(train)
    labels = [cells.predict(x) for x in (train, test, gen)]
    weights, scores, kept = np.zeros(3), np.zeros(3), np.zeros(3, dtype=bool)
    for c in range(3):
        t, p, q = (x[lab == c] for x, lab in zip((train, test, gen), labels, strict=True))
        weights[c] = len(p) / len(test)
        kept[c] = len(q) / len(gen) > 20 / len(gen)
        if len(q) == 0:
            continue
        search = NearestNeighbors(n_neighbors=1).fit(t)
        lq, lp = search.kneighbors(q)[0], search.kneighbors(p)[0]
        u = mannwhitneyu(lq, lp, alternative="less")[0]
        n, m = len(p), len(q)
        scores[c] = (u[0] - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)
    return {"value": float(weights[kept] @ scores[kept] / weights[kept].sum())}


def _fld_authors_def(tag: str) -> dict[str, Any]:
    import torch

    train, test, gen = (
        torch.from_numpy(np.load(_path(tag, f"{s}.npy"))) for s in ("train", "test", "gen")
    )
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
    "ct/shardeval": lambda tag: _shardeval("ct", tag),
    "ct/dgm-eval-def": _dgm_eval_def,
    "fld/shardeval": lambda tag: _shardeval("fld", tag),
    "fld/authors-def": _fld_authors_def,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("metric", choices=sorted(SIZES), nargs="?", help="ct or fld")
    parser.add_argument("--train", type=int, help="training rows")
    parser.add_argument("--test", type=int, help="test rows")
    parser.add_argument("--gen", type=int, help="generated rows")
    parser.add_argument("--d", type=int, help="features per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import scipy.stats  # noqa: F401  # imports outside the timed region
        import torch  # noqa: F401

        import shardeval
        import shardeval.pipeline.memorization.copying
        import shardeval.pipeline.memorization.fld
        import shardeval.pipeline.memorization.metrics  # noqa: F401

        child(METHODS, args.child[0], args.child[1:])
        return
    if args.metric is None:
        parser.error("name the metric: ct or fld")
    defaults = SIZES[args.metric][0]
    sizes = [v if v is not None else dv for v, dv in
             zip((args.train, args.test, args.gen, args.d), defaults, strict=True)]  # fmt: skip
    tag = make_data(args.metric, *sizes)
    print(
        f"# {cpu_name()}; {args.metric}: train {sizes[0]:,}, test {sizes[1]:,}, gen "
        f"{sizes[2]:,} rows of {sizes[3]} features; medians of {args.repeats} runs"
    )
    methods = [m for m in METHODS if m.startswith(args.metric + "/")]
    side_by_side("benchmarks.heldout", methods, tag, args.repeats, methods[1])


if __name__ == "__main__":
    main()
