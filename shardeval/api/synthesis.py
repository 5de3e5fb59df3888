"""Synthetic features: ``shardeval synth OUT`` writes Gaussian features (demos, tests,
benchmarks) whose covariance is known in closed form, so that what is computed from them can
be checked against a formula.
"""

from __future__ import annotations

import os

__all__ = ["is_synthetic", "synth"]


def is_synthetic(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds features that :func:`synth` wrote (never raises). A ``.npy``
    cannot say who wrote it (any float32 feature dump looks the same), so it never counts.

    Args:
        path: any path.

    Returns:
        True for a Zarr array of synthetic features.

    Example:
        >>> from shardeval.api.synthesis import is_synthetic
        >>> is_synthetic("/nonexistent")
        False
    """
    try:
        import zarr

        from shardeval.pipeline.io.synthetic import FEATURE_EXTRACTOR

        node = zarr.open_array(path, mode="r")
        return node.attrs.get("feature_extractor") == FEATURE_EXTRACTOR
    except Exception:
        return False


def synth(
    output: str | os.PathLike[str],
    n: int = 10_000,
    d: int = 256,
    *,
    chunk_rows: int = 4096,
    seed: int = 0,
    mean: float = 0.0,
    scale: float = 1.0,
    overwrite: bool = False,
) -> str:
    """Write ``n`` x ``d`` float32 Gaussian features with every coordinate's mean ``mean`` and
    covariance scale²(I + B Bᵀ), B a fixed d x 16 matrix: a Zarr array chunked by rows that
    records its settings (reports say how it was made), or one ``.npy`` file (or a pipe).
    The output appears complete or not at all.

    Args:
        output: the store to write (``.npy``: one numpy file; a pipe or ``/dev/stdout``: the
            ``.npy`` bytes).
        n: rows.
        d: features.
        chunk_rows: rows per chunk.
        seed: the rows' random seed.
        mean: every coordinate's mean.
        scale: the standard deviations' scale.
        overwrite: replace synthetic features written before (nothing else is replaced).

    Returns:
        ``output`` as a path.

    Raises:
        OutputExistsError: ``output`` exists and is not synthetic features, or is and
            ``overwrite`` is not given.

    Example:
        >>> import tempfile, os
        >>> from shardeval.api.stores import open_store
        >>> from shardeval.api.synthesis import synth
        >>> path = synth(os.path.join(tempfile.mkdtemp(), "x.zarr"), 100, 8, seed=1)
        >>> open_store(path).d
        8
    """
    from shardeval.pipeline.io.atomic import atomic_dir, atomic_file, claim_output, is_stream
    from shardeval.pipeline.io.synthetic import gaussian_features, synthetic_attrs, write_features

    claim_output(output, "synthetic feature store", is_synthetic, overwrite, streams=True)
    x = gaussian_features(n, d, shard_rows=chunk_rows, seed=seed, mean=mean, scale=scale)
    attrs = synthetic_attrs(n, d, seed=seed, mean=mean, scale=scale)
    if os.fspath(output).endswith(".npy") or is_stream(output):  # a pipe takes one file
        import numpy as np

        with atomic_file(output, "wb") as fh:
            np.save(fh, x.compute())
    else:
        with atomic_dir(output) as tmp:
            write_features(tmp, x, chunk_rows=chunk_rows, attrs=attrs)
    return os.fspath(output)
