"""Specific exceptions raised at the public boundary.

Every message names the store, the shape or value that is wrong, and what would fix it. The CLI
turns any :class:`ShardevalError` into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

from shardeval._words import Worded


class ShardevalError(Worded, Exception):
    """Base class: a problem with the user's input or request, reported in one line. Its
    message marks the options that would fix it (``«nonfinite='drop'»``): ``str()`` names
    them as Python arguments, :meth:`cli_text` as the command line's flags."""


class OptionError(ShardevalError):
    """Options that cannot apply, or do not fit together (one given where it means nothing)."""


class MetricOptionError(ShardevalError):
    """A metric's options are wrong (unknown name, wrong type, a value out of its choices)."""


class StoreError(ShardevalError):
    """A feature store cannot be opened: missing path, unreadable format, ambiguous array."""


class ShapeError(ShardevalError):
    """Features have the wrong rank, too few rows, or feature dimensions that differ."""


class DtypeError(ShardevalError):
    """Features are not real numbers."""


class NonFiniteError(ShardevalError):
    """Features contain NaN or ±inf rows."""


class ZeroRowError(ShardevalError):
    """A metric that scales each row to unit norm met a row of zeros, which has no direction."""


class StatsFormatError(ShardevalError):
    """A statistics file lacks the expected fields or has inconsistent shapes."""


class NumericalError(ShardevalError):
    """A result is not trustworthy: e.g. a covariance that is not positive semi-definite."""


class SingularCovarianceWarning(Worded, UserWarning):
    """N ≤ d: the sample covariance is singular. FID is still defined and computed."""


class SuspectStoreWarning(Worded, UserWarning):
    """A store reads without error but holds something that looks unwritten."""


class EngineError(ShardevalError):
    """The engine is configured wrongly: an unknown scheduler, a device this machine lacks."""


class ClusterError(ShardevalError):
    """The cluster cannot be started or reached, or lost every worker."""


class RoundingWarning(Worded, UserWarning):
    """A result is smaller than the stated tolerance allows for its rounding bound: it is
    reported with that bound (e.g. an MMD between sets that float64 cannot tell apart)."""


class EmptyComponentWarning(Worded, UserWarning):
    """A Gaussian mixture's component lost (almost) all its responsibility in an EM step and
    was re-seeded."""
