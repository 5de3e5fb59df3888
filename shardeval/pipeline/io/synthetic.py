"""Synthetic Gaussian features with a known closed form, generated shard by shard.

Rows are x = μ·1 + s·(z + B u) with z ~ N(0, I_d), u ~ N(0, I_k) and a fixed d × k matrix B
(drawn from ``basis_seed``), so the population covariance is s²(I + B Bᵀ) and FID between two
such sets has a closed form. Each shard is drawn from its own seeded generator: the data are a
pure function of the arguments, can be produced on any worker, and never need to fit in memory.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np
import zarr

#: Columns of B: a few strong directions over an isotropic floor, like real embeddings.
DEFAULT_RANK = 16

#: The ``feature_extractor`` attribute of the stores ``shardeval synth`` writes.
FEATURE_EXTRACTOR = "synthetic-gaussian"

#: What a report calls such features.
DESCRIPTION = "synthetic Gaussian"


def basis(d: int, rank: int = DEFAULT_RANK, basis_seed: int = 0) -> np.ndarray:
    """The fixed (d, rank) mixing matrix B, scaled so B Bᵀ has trace ``d``."""
    rng = np.random.default_rng([basis_seed, d, rank])
    return rng.standard_normal((d, rank)) / np.sqrt(rank)


def population(
    d: int, *, mean: float = 0.0, scale: float = 1.0, rank: int = DEFAULT_RANK, basis_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The exact (mean, covariance) that :func:`gaussian_features` samples from."""
    b = basis(d, rank, basis_seed)
    return np.full(d, float(mean)), scale**2 * (np.eye(d) + b @ b.T)


def _block(
    rows: int,
    d: int,
    seed: int,
    index: int,
    mean: float,
    scale: float,
    b: np.ndarray,
    dtype: np.dtype,
) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    z = rng.standard_normal((rows, d), dtype=np.float32)
    u = rng.standard_normal((rows, b.shape[1]), dtype=np.float32)
    z += u @ b.T.astype(np.float32)
    z *= np.float32(scale)
    z += np.float32(mean)
    return z.astype(dtype, copy=False)


def gaussian_features(
    n: int,
    d: int,
    *,
    shard_rows: int = 4096,
    seed: int = 0,
    mean: float = 0.0,
    scale: float = 1.0,
    rank: int = DEFAULT_RANK,
    basis_seed: int = 0,
    dtype: str | np.dtype = "float32",
) -> da.Array:
    """A lazy (n, d) dask array of Gaussian features, one block per ``shard_rows`` rows.

    Example:
        >>> x = gaussian_features(10, 4, shard_rows=4, seed=1)
        >>> x.shape, x.numblocks
        ((10, 4), (3, 1))
    """
    if n < 1 or d < 1 or shard_rows < 1:
        raise ValueError(f"need n, d, shard_rows >= 1, got n={n}, d={d}, rows={shard_rows}")
    b = basis(d, rank, basis_seed)
    dt = np.dtype(dtype)
    sizes = [min(shard_rows, n - start) for start in range(0, n, shard_rows)]
    blocks = [
        da.from_delayed(
            da.core.delayed(_block, pure=True)(rows, d, seed, i, mean, scale, b, dt),
            shape=(rows, d),
            dtype=dt,
        )
        for i, rows in enumerate(sizes)
    ]
    return da.concatenate(blocks, axis=0)


def synthetic_attrs(
    n: int,
    d: int,
    *,
    seed: int,
    mean: float,
    scale: float,
    rank: int = DEFAULT_RANK,
    basis_seed: int = 0,
) -> dict[str, Any]:
    """The attributes of a store of :func:`gaussian_features`: everything that made its rows,
    so that a report can say how its features were made (and they can be made again).

    Example:
        >>> synthetic_attrs(10, 4, seed=1, mean=0.0, scale=1.0)["feature_extractor"]
        'synthetic-gaussian'
    """
    return {
        "feature_extractor": FEATURE_EXTRACTOR,
        "n": int(n),
        "d": int(d),
        "seed": int(seed),
        "mean": float(mean),
        "scale": float(scale),
        "rank": int(rank),
        "basis_seed": int(basis_seed),
    }


def made_by(attrs: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any] | None:
    """How a store's features were made, as reports name it, when ``shardeval synth`` wrote
    it; None otherwise. N and d are the store's shape (stores written before the attributes
    recorded them say the same).

    Args:
        attrs: the store's attributes.
        shape: its (n, d).

    Returns:
        ``{"features": "synthetic Gaussian", "seed": …, "n": …, "d": …, "mean": …,
        "scale": …}``, or None.
    """
    if attrs.get("feature_extractor") != FEATURE_EXTRACTOR:
        return None
    n, d = (int(v) for v in shape)
    made: dict[str, Any] = {"features": DESCRIPTION, "seed": attrs.get("seed"), "n": n, "d": d}
    made.update({k: attrs[k] for k in ("mean", "scale") if k in attrs})
    return made


def write_features(
    path: str | os.PathLike[str],
    features: da.Array,
    *,
    chunk_rows: int = 4096,
    attrs: dict[str, Any] | None = None,
    compressors: Any = None,
) -> zarr.Array:
    """Write features to a Zarr v3 array at ``path`` (chunked by rows), shard by shard.

    Uncompressed by default: float32 embeddings shrink by only ~14% under zstd, while
    decompressing them costs about as much CPU as their moments. Pass ``compressors="auto"``
    for Zarr's default codec.
    """
    features = features.rechunk((chunk_rows, features.shape[1]))
    target = zarr.create_array(
        os.fspath(path),
        shape=features.shape,
        chunks=(chunk_rows, features.shape[1]),
        dtype=features.dtype,
        overwrite=True,
        dimension_names=("sample", "feature"),
        compressors=compressors,
    )
    da.store(features, target, lock=False)  # type: ignore[arg-type]  # zarr arrays take slices
    target.attrs.update(attrs or {})
    return target
