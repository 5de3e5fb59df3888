"""Statistics as the API functions take them: a statistics file (ours or a pytorch-fid
``.npz``), a :class:`~shardeval.pipeline.fid.gaussian.Gaussian` or
:class:`~shardeval.pipeline.core.states.Moments`, checked as a statistics file is (finite, a
symmetric covariance within the files' tolerance, non-negative variances, n in [2, 2^53]).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.input_kinds import ExtractedImages, describe_input, is_path
from shardeval.pipeline.errors import StatsFormatError

if TYPE_CHECKING:
    from shardeval.pipeline.fid.gaussian import Gaussian


def is_statistics(x: Any) -> bool:
    """Whether ``x`` is statistics (a file, a Gaussian or Moments) rather than features."""
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian

    if isinstance(x, Gaussian | Moments):
        return True
    if is_path(x) and not isinstance(x, ExtractedImages):
        from shardeval.pipeline.io.statsio import is_stats

        return is_stats(os.fspath(x))
    return False


def checked_gaussian(mean: Any, cov: Any, n: Any, where: str, names: tuple[str, str]) -> Gaussian:
    """Statistics given in memory, checked as a statistics file's are (the one check,
    :func:`~shardeval.pipeline.io.statsio.check_statistics`): shapes, finite values, a
    symmetric covariance (asymmetry within :data:`~shardeval.pipeline.io.statsio.SYMMETRY_RTOL`
    of its largest entry is rounding and is symmetrised; more is refused: a matrix holding one
    triangle would give a wrong FID), non-negative variances, ``n`` None or in [2, 2^53].

    Raises:
        StatsFormatError: naming ``where`` and what is wrong.
    """
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.statsio import check_n, check_statistics

    try:
        mu = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        sigma = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise StatsFormatError(f"{where}: {names[0]}/{names[1]} are not arrays of numbers") from exc
    sigma = check_statistics(where, mu, sigma, names)
    return Gaussian(mu, sigma, None if n is None else check_n(where, n), where)


def statistics(x: Any, location: str = "") -> Gaussian:
    """``x`` as a checked :class:`~shardeval.pipeline.fid.gaussian.Gaussian`.

    Raises:
        StatsFormatError: ``x`` is not statistics, or they do not hold up (see
            :func:`checked_gaussian`).
    """
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian, as_gaussian

    if is_path(x) and not isinstance(x, ExtractedImages):
        from shardeval.pipeline.io.statsio import load_stats

        location = os.fspath(x)
        return as_gaussian(load_stats(location), location)
    where = location or describe_input(x)
    if isinstance(x, Moments):
        n = x.n
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
            raise StatsFormatError(
                f"{where}: Moments of {n!r} row(s); a covariance needs at least 2 rows"
            )
        m2 = checked_gaussian(x.mean, x.m2, n, where, ("mean", "m2")).cov
        return Gaussian.from_moments(Moments(int(n), x.mean, m2), where)
    if isinstance(x, Gaussian):
        return checked_gaussian(x.mean, x.cov, x.n, where, ("mean", "cov"))
    raise StatsFormatError(
        f"{where} is not statistics: statistics are a statistics file, a Gaussian or Moments "
        "(leave «real_is_statistics» out to read an array's rows as features)"
    )
