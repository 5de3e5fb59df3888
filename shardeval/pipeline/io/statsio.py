"""Statistics files: compute once, reuse many times, merge.

Two formats:

* our own, exact and mergeable: a Zarr group with ``mean`` (d,) and ``m2`` (d, d) in float64,
  attribute ``n`` and provenance (source, shape, dtype, feature extractor, versions);
* pytorch-fid / clean-fid ``.npz`` with ``mu`` and ``sigma`` (``np.cov``, ddof=1). We also write
  ``n``, which makes our ``.npz`` files mergeable, and the provenance a Zarr group keeps in its
  attributes as JSON text in :data:`NPZ_PROVENANCE` (a 0-d unicode array: no pickle; pytorch-fid
  and clean-fid read ``mu`` and ``sigma`` by name and pass it by). A bare ``mu``/``sigma`` file
  is read as a :class:`~shardeval.pipeline.fid.gaussian.Gaussian` with ``n=None`` and cannot be
  merged.

Read, never written: guided-diffusion's (ADM's) reference batches, ``VIRTUAL_*.npz``
(:func:`is_adm_reference`, :func:`load_adm_reference`): ``mu``/``sigma`` as above, the sFID
statistics ``mu_s``/``sigma_s``, and the reference images in ``arr_0``, uint8 (N, H, W, 3).
Their ``mu``/``sigma`` are ``np.mean`` and ``np.cov`` (ddof=1) of the ``pool_3`` features of
the TF Inception graph (``classify_image_graph_def.pb``, images fed at their own size as
float32 in [0, 255] and resized by the graph's own TF 1.x bilinear resize), computed by the
suite's ``evaluations/evaluator.py`` over the whole dataset (``arr_0`` holds 10,000 of its
images, for precision and recall). They are read as statistics with ``n`` unknown (not
mergeable). FID against them compares with features extracted with the TF-compatible resize
(``legacy-tensorflow``): the same network under another resize gives other features, and an
FID that mixes the two measures the resize as well as the images. ``mu_s``/``sigma_s`` are the
``sfid`` metric's reference (see :class:`ADMReference`).

A file is told apart by its bytes, not its name: a zip archive is read as ``.npz``, a folder as a
Zarr group (:func:`shardeval.pipeline.io.stores.numpy_kind`). pytorch-fid's d = 1 statistics (a 0-d
``sigma``) are read as it reads them, with ``np.atleast_1d``/``np.atleast_2d``.

Everything read is checked before it is used: shapes, finite values, a symmetric covariance
(a file holding one triangle would give a wrong FID), non-negative variances, an integer
``n`` ≥ 2, and, for Zarr groups, every chunk present. Writes are atomic and never replace
what is not a statistics file (:mod:`shardeval.pipeline.io.atomic`).

The modules: :mod:`~shardeval.pipeline.io.stats_files` (our files and pytorch-fid's, written and
read), :mod:`~shardeval.pipeline.io.stats_checks` (what every file read must pass),
:mod:`~shardeval.pipeline.io.stats_adm` (guided-diffusion reference batches) and
:mod:`~shardeval.pipeline.io.stats_merge` (merging files); this module re-exports their names.
"""

from __future__ import annotations

from shardeval.pipeline.io.stats_adm import (
    ADM_FEATURES,
    ADM_IMAGES,
    ADM_POOL,
    ADM_SPATIAL,
    ADMReference,
    adm_provenance,
    is_adm_reference,
    load_adm_reference,
)
from shardeval.pipeline.io.stats_adm import _adm_description as _adm_description
from shardeval.pipeline.io.stats_checks import MAX_N, SYMMETRY_RTOL, check_n, check_statistics
from shardeval.pipeline.io.stats_files import (
    FORMAT_VERSION,
    NPZ_PROVENANCE,
    is_stats,
    load_stats,
    save_stats,
    stats_provenance,
)
from shardeval.pipeline.io.stats_merge import merge_stats

__all__ = [
    "ADM_FEATURES",
    "ADM_IMAGES",
    "ADM_POOL",
    "ADM_SPATIAL",
    "FORMAT_VERSION",
    "MAX_N",
    "NPZ_PROVENANCE",
    "SYMMETRY_RTOL",
    "ADMReference",
    "adm_provenance",
    "check_n",
    "check_statistics",
    "is_adm_reference",
    "is_stats",
    "load_adm_reference",
    "load_stats",
    "merge_stats",
    "save_stats",
    "stats_provenance",
]
