"""The API functions of likelihoods and weights: :func:`nll` (negative log-likelihood of the
generated set under a model of the real one) and :func:`ess` (effective sample size of
importance log-weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardeval.api.calls import Progress, _must_exist, _noted, _running, check_options, refuse
from shardeval.api.inputs import (
    arrays_for,
    describe_input,
    features,
    is_path,
    statistics,
)
from shardeval.api.results import (
    Report,
    ess_dict,
    ess_summary,
    nll_dict,
    nll_summary,
)
from shardeval.pipeline.errors import OptionError

#: nll: which options apply to which mode
_NLL_MODES = {
    "dims": ("loglik", "iw"),
    "reff": ("iw",),
    "bandwidth": ("parzen",),
    "device": ("iw", "gaussian", "parzen"),
    "backend": ("iw", "gaussian", "parzen"),
    "split_every": ("loglik", "iw", "gaussian", "gmm"),
    "test": ("gmm",),
    "covariance": ("gmm",),
    "reg_covar": ("gmm",),
    "tol": ("gmm",),
    "max_iter": ("gmm",),
    "seed": ("gmm",),
}

_MODES = ("iw", "gaussian", "parzen", "gmm")


def nll(
    store: Any = None,
    test: Any = None,
    *,
    iw: Any = None,
    gaussian: Any = None,
    parzen: Any = None,
    gmm: int | None = None,
    dims: int | None = None,
    reff: float | None = None,
    bandwidth: float | str | None = None,
    ci: float | None = None,
    covariance: str | None = None,
    reg_covar: float | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    seed: int | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    nonfinite: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Mean negative log-likelihood (nats) with its standard error, one of five ways:
    ``nll(loglik)`` from per-sample log-likelihoods (N,); ``nll(iw=log_weights)`` IWAE-style
    from importance log-weights (N, K) (Burda et al. 2016); ``nll(test, gaussian=stats)``
    under a Gaussian of saved statistics; ``nll(test, parzen=samples)`` under a Gaussian KDE
    of sample features (Parzen 1962); ``nll(store, test, gmm=K)`` under a K-component
    Gaussian mixture fitted to STORE's rows by EM, one pass over the shards per iteration
    (Dempster, Laird & Rubin 1977; :mod:`shardeval.pipeline.likelihood.gmm`).

    Args:
        test: the TEST features (gmm; the other modes take them as ``store``).
        gmm: components of the Gaussian mixture.
        dims: dimensions per sample, for bits/dim (loglik, iw).
        reff: relative efficiency of the draws for the PSIS tail (iw).
        bandwidth: Parzen's h, ``"silverman"`` (default) or ``"cv"`` (parzen).
        ci: a confidence level in (0, 1) (0 or None: none): the normal interval nll ∓ z·SE
            of the mean NLL per sample (``ci_low``, ``ci_high``). Its standard error is the
            spread of the per-row values over their rows, so the interval holds fixed what
            the method takes as given: the model (loglik), the reference Gaussian
            (gaussian), the kernel centres and bandwidth (parzen); by iw it is the interval
            of the IWAE bound at this K (−E log p̂ ≥ NLL), not of the NLL.

    Raises:
        OptionError: options that do not apply to the mode, or a level outside [0, 1).
        ShapeError: «ci» with fewer than 2 finite values (no standard error).
        covariance: ``"full"`` (default) or ``"diag"`` components (gmm).
        reg_covar: added to each covariance's diagonal, default 1e-6 (gmm).
        tol: EM stops when the mean log-likelihood per row changes by less, default 1e-3
            nats (gmm).
        max_iter: at most this many EM iterations, default 100 (gmm).
        seed: of the k-means++ initialisation, default 0 (gmm).

    Returns:
        :class:`~shardeval.api.results.Report` (``float()`` the mean NLL; ``results["nll"]``
        the :class:`~shardeval.pipeline.likelihood.nll.NLLResult`; for gmm also
        ``results["gmm"]``, the :class:`~shardeval.pipeline.likelihood.gmm.GMMFit`).

    Example:
        >>> import numpy as np, shardeval as se
        >>> round(float(se.nll(np.full(10, -2.0))), 6)
        2.0
    """
    options = dict(locals())
    check_options(options)
    level = interval_level(ci)
    modes = [m for m in _MODES if options[m] is not None]
    if len(modes) > 1:
        raise OptionError(
            f"choose one of «iw», «gaussian», «parzen», «gmm»; got {', '.join(modes)}"
        )
    mode = modes[0] if modes else "loglik"
    if (store is None) != (mode == "iw") or (mode == "gmm" and test is None):
        want = {"iw": "no store", "loglik": "LOGLIK", "gmm": "the fitting STORE and the TEST"}
        raise OptionError(f"nll by {mode} takes {want.get(mode, 'the TEST features')}")
    for option, applies in _NLL_MODES.items():
        if mode not in applies:
            refuse(options, (option,), f"does not apply to nll {mode}")
    _must_exist(store, test, iw, parzen, *([gaussian] if is_path(gaussian) else []))
    nonfinite = nonfinite or "error"
    with _noted() as notes, _running(options) as run:
        eng, bar = run.engine, run.progress
        kernel: dict[str, Any] = {"device": device or "auto", "backend": backend or "auto"}
        inputs: dict[str, Any] = {}
        results: dict[str, Any] = {}

        def opened(x: Any, name: str | None = array, **kw: Any) -> Any:
            return features(x, array=name, shard_rows=shard_rows, **kw)

        if mode == "loglik":
            from shardeval.pipeline.likelihood.nll import nll_from_loglik

            source = opened(store, min_rows=1, ndims=(1,))
            result = nll_from_loglik(
                source, engine=eng, nonfinite=nonfinite, dims=dims, split_every=split_every,
                progress=bar,
            )  # fmt: skip
            inputs["loglik"] = source.describe()
        elif mode == "iw":
            from shardeval.pipeline.likelihood.nll import nll_importance

            source = opened(iw, min_rows=1, ndims=(2,))
            result = nll_importance(
                source, engine=eng, nonfinite=nonfinite, dims=dims,
                reff=1.0 if reff is None else reff, split_every=split_every, progress=bar,
                **kernel,
            )  # fmt: skip
            inputs["log_weights"] = source.describe()
        elif mode == "gaussian":
            from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian

            source = opened(store)
            result = nll_gaussian(
                statistics(gaussian), source, engine=eng, nonfinite=nonfinite,
                split_every=split_every, progress=bar, **kernel,
            )  # fmt: skip
            inputs.update(statistics=describe_input(gaussian), test=source.describe())
        elif mode == "gmm":
            from shardeval.pipeline.likelihood.gmm import nll_gmm
            from shardeval.pipeline.runoptions import BY_NAME

            names = arrays_for([store, test], array)
            fitting = opened(store, names[0], min_rows=1)
            scored = opened(test, names[1], min_rows=1)
            fit_options = {
                name: BY_NAME[name].default if options[name] is None else options[name]
                for name in ("covariance", "reg_covar", "tol", "max_iter")
            }
            result, results["gmm"] = nll_gmm(
                fitting, scored, int(gmm or 0), **fit_options, seed=seed or 0, engine=eng,
                nonfinite=nonfinite, split_every=split_every, progress=bar,
            )  # fmt: skip
            inputs.update(store=fitting.describe(), test=scored.describe())
        else:
            from shardeval.pipeline.likelihood.parzen import nll_parzen

            names = arrays_for([parzen, store], array)
            samples, test = opened(parzen, names[0]), opened(store, names[1])
            result = nll_parzen(
                samples, test, bandwidth or "silverman", engine=eng, nonfinite=nonfinite,
                progress=bar, **kernel,
            )  # fmt: skip
            inputs.update(samples=samples.describe(), test=test.describe())
        tail = run.tail(notes)
        settings = {k: v for k, v in run.settings().items() if mode in _NLL_MODES.get(k, (mode,))}
    from shardeval.pipeline.likelihood.nll import nll_interval

    interval = nll_interval(result, level) if level else None
    if level:
        settings["ci"] = level
    data = {
        "metric": "nll",
        **nll_dict(result, interval),
        "inputs": inputs,
        **tail,
        "settings": settings,
    }
    text = nll_summary(result, tail["seconds"], interval, level)
    return Report("nll", {"nll": result, **results}, data, text, result.nll)


def interval_level(ci: Any) -> float:
    """«ci» checked by the one declaration of a normal interval's level
    (:data:`~shardeval.pipeline.metrics.intervals.NORMAL_CI`): 0.0 when not given.

    Raises:
        OptionError: not 0 or a level in (0, 1).
    """
    from shardeval.pipeline.metrics.intervals import NORMAL_CI

    if ci is None:
        return 0.0
    if isinstance(ci, int) and not isinstance(ci, bool):
        ci = float(ci)
    problem = NORMAL_CI.constraint.problem(ci)
    if problem:
        raise OptionError(f"«ci»: {problem}")
    return float(ci)


def ess(
    log_weights: Any,
    *,
    reff: float | None = None,
    ci: float | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    nonfinite: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Effective sample size ESS = (Σw)²/Σw² (Kong 1992) of importance log-weights (N,) or
    (N, K), with the largest normalised weight and the PSIS Pareto k̂ (Vehtari et al. 2024;
    < 0.5 good, < 0.7 usable, ≥ 0.7 unreliable); for (N, K) also per row.

    Args:
        reff: relative efficiency of the draws (1 for independent draws).
        ci: a confidence level in (0, 1) (0 or None: none): the standard error of ESS and
            ESS/N by the delta method on m₁²/m₂ (m_k = E w^k) and their normal intervals
            (``ess_standard_error``, ``ess_ci_low``, ``ess_ci_high``, ``ess_fraction_*``,
            ``ess_ci_method``), of the population value N·m₁²/m₂ over all weights as
            independent draws (for (N, K) the whole set's, none per row). Given only while
            k̂ < 0.25 (a finite fourth moment of w) and Σw⁴/max w⁴ ≥ 60 (the fourth moment
            not resting on a few weights); otherwise ``ess_ci_withheld`` says why.

    Raises:
        OptionError: a level outside (0, 1).

    Returns:
        :class:`~shardeval.api.results.Report` (``float()`` the ESS; ``results["ess"]`` the
        :class:`~shardeval.pipeline.likelihood.ess.ESSResult`).

    Example:
        >>> import numpy as np, shardeval as se
        >>> float(se.ess(np.log(np.array([1.0, 1.0, 2.0]))))   # 4² / 6
        2.6666666666666665
    """
    options = dict(locals())
    check_options(options)
    level = interval_level(ci)
    _must_exist(log_weights)
    from shardeval.pipeline.likelihood.ess import ess_of

    with _noted() as notes, _running(options) as run:
        source = features(log_weights, array=array, shard_rows=shard_rows, min_rows=1, ndims=(1, 2))
        result = ess_of(
            source,
            engine=run.engine,
            nonfinite=nonfinite or "error",
            reff=1.0 if reff is None else reff,
            device=device or "auto",
            backend=backend or "auto",
            split_every=split_every,
            progress=run.progress,
            ci=level,
        )
        tail = run.tail(notes)
        settings = run.settings()
    if level:
        settings["ci"] = level
    data = {
        "metric": "ess",
        **ess_dict(result),
        "inputs": {"log_weights": source.describe()},
        **tail,
        "settings": settings,
    }
    return Report(
        "ess", {"ess": result}, data, ess_summary(result, tail["seconds"], level), result.ess
    )
