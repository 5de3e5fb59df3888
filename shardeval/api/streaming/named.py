"""The training-loop classes of single metrics: a :class:`~.rows.RowMetrics` of one registered
metric each, whose ``compute()`` is the report of the one-shot function of the same name."""

from __future__ import annotations

from typing import Any

from shardeval.api.streaming.rows import RowMetrics

#: The name :class:`RowMetrics` had when it computed pair metrics alone.
PairMetrics = RowMetrics


class KID(RowMetrics):
    """KID alone: ``compute()`` is the report of :func:`shardeval.kid`.

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> rng = np.random.default_rng(1)
        >>> with se.KID() as kid:
        ...     kid.update(rng.standard_normal((200, 6)), real=True)
        ...     kid.update(rng.standard_normal((200, 6)) + 1.0)
        ...     value = float(kid.compute())
        >>> value > 0
        True
    """

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("kid",), reference, **options)


class CMMD(RowMetrics):
    """CMMD alone (images go through the CLIP encoder by default): ``compute()`` is the
    report of :func:`shardeval.cmmd`."""

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("cmmd",), reference, **options)


class PRDC(RowMetrics):
    """Precision, recall, density and coverage: ``compute()`` is the report of
    :func:`shardeval.prdc`."""

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("prdc",), reference, **options)


class FIDInfinity(RowMetrics):
    """FID∞ (Chong & Forsyth 2020) of the generated rows fed: ``compute()`` is the report of
    :func:`shardeval.fid_infinity` (FID at 15 nested subset sizes drawn with «seed»,
    extrapolated to 1/N = 0). The reference may be statistics (a file, a ``Gaussian``) or
    rows; the generated rows are spilled, since the subsets are drawn from all of them.

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> rng = np.random.default_rng(2)
        >>> with se.FIDInfinity() as fid_inf:
        ...     fid_inf.update(rng.standard_normal((600, 4)), real=True)
        ...     fid_inf.update(rng.standard_normal((600, 4)) + 0.5)
        ...     section = fid_inf.compute().to_dict()["fid_inf"]
        >>> section["fid_inf_n"]
        600
    """

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("fid_inf",), reference, **options)


class InceptionScore(RowMetrics):
    """The Inception Score of the class logits fed, ``update(logits)`` with logits ``(B, C)``
    (the Inception's, or any classifier's): ``compute()`` is the report of
    :func:`shardeval.inception_score` on the same rows (no reference; the batches are read as
    logits whatever their width or signs).

    Example:
        >>> import numpy as np
        >>> import shardeval as se
        >>> rng = np.random.default_rng(3)
        >>> with se.InceptionScore() as score:
        ...     score.update(rng.standard_normal((500, 10)) * 3)
        ...     section = score.compute().to_dict()["is"]
        >>> section["is_n"], section["is_classes"]
        (500, 10)
    """

    def __init__(self, **options: Any) -> None:
        options.setdefault("as_logits", True)
        super().__init__(("is",), None, **options)


class GaussianNLL(RowMetrics):
    """The mean negative log-likelihood of the generated rows fed under the reference's
    Gaussian: ``compute()`` is the ``nll_gaussian`` section of :func:`shardeval.metrics`
    on the same rows. The reference may be statistics or rows."""

    def __init__(self, reference: Any = None, **options: Any) -> None:
        super().__init__(("nll_gaussian",), reference, **options)
