"""``shardeval.inception_score(logits)``, the ``is`` command: the Inception Score of a set's
class logits, exact over all samples with its standard error, and the peers' split protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from shardeval.api.functions import (
    Progress,
    _must_exist,
    _noted,
    _running,
    image_flags,
    with_features,
)
from shardeval.api.inputs import features, is_path
from shardeval.api.results import Report, features_made
from shardeval.pipeline.errors import OptionError

#: The settings the report records.
_SETTINGS = ("shard_rows", "array", "split_every")


def summary(result: Any, seconds: float) -> str:
    """The command's lines for people."""
    lines = [
        f"IS {result.inception_score:.6g} ± {result.standard_error:.3g}   [all "
        f"{result.n:,} samples, exact; standard error by the delta method on log IS]"
    ]
    if result.splits:
        lines.append(
            f"IS {result.split_mean:.6g} ± {result.split_std:.3g}   [peers' protocol: mean ± "
            f"std over {result.splits} splits, rows shuffled by seed {result.seed}, as "
            "torch-fidelity's isc]"
        )
    declared = "  (declared logits)" if result.as_logits else ""
    lines.append(
        f"  logits {result.logits}  n={result.n:,} C={result.classes:,}{declared}   {seconds:.2f} s"
    )
    return "\n".join(lines)


def inception_score(
    logits: Any,
    *,
    splits: int | None = None,
    seed: int | None = None,
    as_logits: bool | None = None,
    encoder: str | None = None,
    resize: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    cache_root: str | None = None,
    verify: bool | None = None,
    skip_bad: bool | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Inception Score (Salimans et al., "Improved techniques for training GANs", NeurIPS
    2016), IS = exp(E_x KL(p(y|x) ‖ p(y))), from class logits.

    By default over ALL samples, exactly (mergeable sums per shard: n, Σ p(y|x), Σ Σ p log p;
    softmax by log-sum-exp in float64), with its standard error (delta method on log IS: the
    spread of KL(p(y|x_i) ‖ p̂(y)) over rows, a second pass). ``splits`` adds the peers'
    protocol, as torch-fidelity's ``isc`` computes it: rows shuffled by
    ``RandomState(seed)``, the IS of each of ``splits`` parts, their mean and standard
    deviation (ddof 0); papers report it with 10 splits.

    Args:
        logits: (N, C) logits: an array or tensor in memory (see
            :mod:`shardeval.api.inputs`), a store whose array says it holds logits (named
            ``logits``: a group's or ``.npz``'s variable, picked among others, a file
            ``logits.npy``; or a ``class`` dimension; or named by ``array``), an extraction
            store of the Inception (its ``logits`` array, pool3 · Wᵀ without the bias, as
            torch-fidelity's ``logits_unbiased``), or images (extracted with the Inception
            into the feature cache, logits included). A −inf logit is a class of probability
            0. Features are refused: an array 2,048 wide (the Inception's pool3 width; its
            logits have 1,008), or whose every value is ≥ 0 (features after a ReLU), unless
            ``as_logits``.
        splits: S > 0: also the peers' protocol with S splits (default 0: not computed).
        seed: seed of the split order (default 2020, torch-fidelity's; with ``splits`` only).
        as_logits: declare the array class logits: read it whatever its name (a ``.npy`` or
            Zarr array named otherwise), width or signs (default False; the report records it).
        encoder, resize, weights, batch_size, cache_root, verify, skip_bad: how image inputs
            become logits, as for :func:`shardeval.fid` (the encoder must be ``inception``).
        shard_rows, array, split_every: how the logits are read and reduced (``array`` picks
            a variable of a group, ``.npz`` or Dataset; on an extraction store only
            ``'logits'``; a ``.npy`` or a Zarr array holds one, which ``as_logits`` declares).
        scheduler, cluster, threads, performance_report, progress, log: the engine (see
            :mod:`shardeval.api.functions`).

    Returns:
        :class:`~shardeval.api.results.Report`: ``float()`` the IS over all samples;
        ``results["is"]`` the
        :class:`~shardeval.pipeline.inception_score.score.InceptionScoreResult`.

    Raises:
        ShapeError, NonFiniteError: logits that are not (N, C) with C ≥ 2, or rows with NaN,
            +inf or only −inf; NotLogitsError (a StoreError): features (by a store's
            attributes, or, unless ``as_logits``, by their width or signs), probabilities (give
            their log), a store nothing says holds logits (unless ``as_logits``); OptionError,
            MetricOptionError: options that do not fit.

    Example:
        >>> import numpy as np, shardeval as se
        >>> one_hot = np.eye(10, dtype=bool)[np.arange(1000) % 10]
        >>> logits = np.where(one_hot, 25.0, -25.0)  # confident and diverse
        >>> round(float(se.inception_score(logits)), 6)
        10.0
    """
    from shardeval.pipeline.inception_score.logits import array_of_logits, logits_of
    from shardeval.pipeline.inception_score.score import inception_score as score
    from shardeval.pipeline.metrics import METRICS

    options = dict(locals())
    pairs = (("splits", splits), ("seed", seed), ("as_logits", as_logits))
    given = {k: v for k, v in pairs if v is not None}
    declared_options = METRICS["is"](given).options  # checked by the plug-in's declaration
    _must_exist(logits)
    (images,) = image_flags([logits], options)
    if images and (encoder or "inception") != "inception":
        raise OptionError(
            f"«encoder='{encoder}'» has no class logits; the Inception Score takes the "
            "Inception's («encoder='inception'»)"
        )
    with _noted() as notes, _running(options) as run:
        # «array», or an array passed in memory as ``logits``, names the logits; a store's
        # layout or names must say so otherwise (images become an extraction store's).
        named = array is not None or not (images or is_path(logits))
        (logits,) = with_features(run, [logits], [images])
        opened = features(logits, array=array_of_logits(logits, array), shard_rows=shard_rows)
        declared = declared_options["as_logits"]
        source = logits_of(opened, shard_rows, named=named, as_logits=declared)
        result = score(
            source,
            as_logits=declared,
            splits=declared_options["splits"],
            seed=declared_options["seed"],
            engine=run.engine,
            split_every=split_every,
            progress=run.progress,
        )
        data: dict[str, Any] = {"metric": "is", "is": asdict(result)}
        data["inputs"] = {"logits": source.describe()}
        made = features_made(data["inputs"], run.cached)
        notes.extend(made.warnings)
        data.update(made.data)
        data["settings"] = run.settings(_SETTINGS)
        data.update(run.tail(notes))
        text = "\n".join([summary(result, data["seconds"]), *made.lines])
        return Report("is", {"is": result}, data, text, result.inception_score)
