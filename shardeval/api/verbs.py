"""The metric functions, made from the declarations: ``se.fid``, ``se.fid_infinity``,
``se.kid``, ``se.cmmd``, ``se.prdc``, ``se.authpct``, ``se.inception_score``, ``se.ct`` and
``se.metrics``.

Each is :func:`~shardeval.api.evaluate.evaluate` of its metrics; its keyword arguments, their
defaults and its docstring's arguments come from the metrics' declarations (their parameters)
and the run options' (:mod:`shardeval.pipeline.runoptions`), so an option is declared once and
is the same keyword, job key and flag everywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from shardeval.api.evaluate import evaluate, taken_options
from shardeval.api.results import Report
from shardeval.pipeline.errors import OptionError
from shardeval.pipeline.runoptions import BY_NAME, ENGINE, IMAGES, OPTIONS

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _metric_params(names: Sequence[str]) -> list[Any]:
    from shardeval.pipeline.metrics import METRICS

    seen: dict[str, Any] = {}
    for name in names:
        for param in METRICS[name].params:
            if param.name not in BY_NAME:  # «nonfinite» is the run's, given to those that take it
                seen.setdefault(param.name, param)
    return list(seen.values())


def _run_params(names: Sequence[str]) -> list[str]:
    """The run options the metrics ``names`` take, with the engine's and the image inputs'
    (in the declarations' order)."""
    from shardeval.pipeline.metrics import METRICS

    instances = [METRICS[n]({}) for n in names]
    taken = {*taken_options(instances, images=True), *ENGINE, "progress", "log"}
    if any(m.products for m in instances):  # refused unless it names what they always do
        taken.add("precision")
    return [o.name for o in OPTIONS if o.name in taken]


def _annotation(option: Any) -> str:
    kind = getattr(option.constraint, "kind", None)
    if option.api_only:
        return "Callable | None"
    if option.name == "scheduler":
        return "Any"
    return f"{getattr(kind, '__name__', None) or ('bool' if option.is_flag else 'str')} | None"


def _docstring(text: str, args: list[tuple[str, str]], returns: str, example: str) -> str:
    lines = [text.strip(), "", "Args:"]
    lines += [f"    {name}: {what}" for name, what in args]
    lines += ["", "Returns:", f"    {returns}", "", "Raises:"]
    lines += [
        "    StoreError, ShapeError, NonFiniteError, NumericalError: inputs that cannot be read "
        "or give no number, named.",
        "    OptionError, MetricOptionError: options that do not apply or fit.",
    ]
    lines += ["", "Example:", example.rstrip()]
    return "\n".join(lines) + "\n"


#: The inputs of a metric that compares with a held-out test set besides the training set.
_HELD_OUT = ("train", "test", "gen")


def make_verb(
    function_name: str,
    names: Sequence[str],
    text: str,
    example: str,
    *,
    inputs: Sequence[str] = ("real", "gen"),
    route: Callable[..., Report] | None = None,
) -> Callable[..., Report]:
    """A metric function: positional ``inputs``, then the metrics' parameters and the run
    options they take as keywords (None: not given; the declared default applies)."""
    params = _metric_params(names)
    run = _run_params(names)

    def verb(*args: Any, **kwargs: Any) -> Report:
        bound = verb.__signature__.bind(*args, **kwargs)  # type: ignore[attr-defined]
        given = dict(bound.arguments)
        sides = [given.pop(n, None) for n in inputs]
        metric_options = {p.name: given.pop(p.name) for p in params if p.name in given}
        if route is not None:
            return route(*sides, metric_options, given)
        if tuple(inputs) == _HELD_OUT:  # the reference is the training set; test a third side
            train, test, gen = sides
            return evaluate(
                names, train, gen, metric_options=metric_options, run_options=given, test=test
            )
        real, gen = ([None, *sides] if len(sides) == 1 else sides)[:2]
        return evaluate(names, real, gen, metric_options=metric_options, run_options=given)

    parameters = [inspect.Parameter(n, _POSITIONAL) for n in inputs]
    parameters += [
        inspect.Parameter(p.name, _KEYWORD, default=None, annotation=f"{p.kind.__name__} | None")
        for p in params
    ]
    parameters += [
        inspect.Parameter(n, _KEYWORD, default=None, annotation=_annotation(BY_NAME[n]))
        for n in run
    ]
    verb.__signature__ = inspect.Signature(parameters, return_annotation="Report")  # type: ignore[attr-defined]
    args = [(", ".join(inputs), _inputs_text(inputs))]
    args += [(p.name, p.describe() + ".") for p in params]
    args += [(n, BY_NAME[n].describe() + ".") for n in run]
    verb.__doc__ = _docstring(
        text,
        args,
        ":class:`~shardeval.api.results.Report`: ``float()`` the headline; ``results[name]`` "
        "and ``to_dict()[name]`` each metric's declared outputs.",
        example,
    )
    verb.__name__ = verb.__qualname__ = function_name
    verb.__module__ = __name__
    return verb


def _inputs_text(inputs: Sequence[str]) -> str:
    if list(inputs) == ["train", "test", "gen"]:
        return (
            "features of the training set (the reference), of a held-out test set (rows of the "
            "training distribution not trained on) and of the generated set: each a store path "
            "or URL, an array, a tensor, a Dask array or an xarray DataArray."
        )
    if list(inputs) == ["logits"]:
        return (
            "(N, C) class logits: an array or tensor, a store whose array says it holds logits, "
            "an extraction store of the Inception (its ``logits``), or images."
        )
    return (
        "features (a store path or URL, an array, a tensor, a Dask array, an xarray "
        "DataArray), statistics (a file, a ``Gaussian``, ``Moments``) where the metric takes "
        "them, or images (a folder, zip, tar shards, an image array file, a 4-D array or "
        "tensor): see :mod:`shardeval.api.inputs`."
    )


def _fid_route(
    real: Any, gen: Any, metric_options: dict[str, Any], given: dict[str, Any]
) -> Report:
    """``se.fid``: FID, and FID∞ beside it with ``infinity`` (one pass over GEN)."""
    infinity = given.pop("infinity", None)
    real_is_statistics = given.pop("real_is_statistics", None)
    for name, value in (("infinity", infinity), ("real_is_statistics", real_is_statistics)):
        if value is not None and not isinstance(value, bool):
            raise OptionError(f"«{name}»: expected True or False, got {value!r}")
    if not infinity and metric_options.get("seed") is not None:
        raise OptionError("«seed» applies to «infinity=True» (FID∞'s nested subsets)")
    names = ("fid", "fid_inf") if infinity else ("fid",)
    return evaluate(
        names,
        real,
        gen,
        metric_options=metric_options,
        run_options=given,
        real_is_statistics=bool(real_is_statistics),
    )


def _with_flags(verb: Callable[..., Report], flags: Sequence[tuple[str, str]]) -> None:
    """Add keyword switches (``infinity``, ``real_is_statistics``) to a verb's signature."""
    signature = verb.__signature__  # type: ignore[attr-defined]
    params = list(signature.parameters.values())
    extra = [
        inspect.Parameter(n, _KEYWORD, default=None, annotation="bool | None") for n, _ in flags
    ]
    verb.__signature__ = signature.replace(parameters=[*params[:2], *extra, *params[2:]])  # type: ignore[attr-defined]
    lines = (verb.__doc__ or "").split("\n")
    at = lines.index("Args:") + 2
    lines[at:at] = [f"    {n}: {what}" for n, what in flags]
    verb.__doc__ = "\n".join(lines)


fid = make_verb(
    "fid",
    ("fid", "fid_inf"),
    """Fréchet Inception Distance between two feature sets or their statistics,

    FID = ‖μ_r − μ_g‖² + tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^½

(Heusel et al., "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", NeurIPS 2017), from exact, mergeable moments of every row, by a symmetric
eigenvalue problem in float64.""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(500, 4)), rng.normal(0.5, 1.0, size=(500, 4))
    >>> round(float(se.fid(a, b)), 2)
    1.13""",
    route=_fid_route,
)
_with_flags(
    fid,
    (
        ("infinity", "also FID∞ (Chong & Forsyth 2020), from 15 nested subsets of ``gen``."),
        ("real_is_statistics", "read ``real`` as statistics whatever it looks like."),
    ),
)


def _fid_infinity_route(
    real: Any, gen: Any, metric_options: dict[str, Any], given: dict[str, Any]
) -> Report:
    return evaluate(("fid_inf", "fid"), real, gen, metric_options=metric_options, run_options=given)


fid_infinity = make_verb(
    "fid_infinity",
    ("fid_inf", "fid"),
    """FID∞ (Chong & Forsyth, "Effectively unbiased FID and Inception Score and where to find
them", CVPR 2020): FID at 15 nested subset sizes of ``gen`` and the intercept of a
least-squares line in 1/N. ``float()`` is FID∞; the report holds FID beside it.""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> r = se.fid_infinity(rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3)))
    >>> len(r["fid_inf"]["fid_inf_sizes"])
    15""",
    route=_fid_infinity_route,
)

sfid = make_verb(
    "sfid",
    ("sfid",),
    """sFID (Nash et al., "Generating images with sparse representations", ICML 2021): FID of
the Inception's spatial features (the first 7 channels of the TF graph's ``mixed_6/conv``,
17 × 17 × 7 = 2,023 values per image), as guided-diffusion's evaluator computes it. It reads
an extraction store's ``spatial`` array (``se.extract(..., spatial=True)``) or an input of one
array as it is; a guided-diffusion reference batch gives its ``mu_s``/``sigma_s``. Which layer
that is in the Inception, and why: docs/sfid.md.""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 6))
    >>> float(se.sfid(x, x)) < 1e-9
    True""",
)

kid = make_verb(
    "kid",
    ("kid",),
    """Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018): the
squared MMD of ``real`` and ``gen`` under k(x, y) = (x·y/d + 1)³,

    KID = Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(n(n−1)) − 2 Σ k(x_i, y_j)/(mn),

by default unbiased over ALL pairs of the full sets, with its standard error and a rigorous
bound on its rounding; ``subsets`` gives the peers' protocol (torch-fidelity's). Its kernel
sums take float64 products (``precision='fp32'`` is refused).""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> r = se.kid(rng.normal(size=(300, 8)), rng.normal(0.3, 1.0, size=(300, 8)))
    >>> bool(0 < float(r) < 1), bool(r["kid"]["kid_standard_error"] > 0)
    (True, True)""",
)

cmmd = make_verb(
    "cmmd",
    ("cmmd",),
    """CMMD (Jayasumana et al., "Rethinking FID", CVPR 2024): 1,000 × the squared MMD under
exp(−‖x̂ − ŷ‖²/2σ²) on embeddings scaled to unit norm, over all pairs of the full sets (the
reference's V-statistic, or the U-statistic). Its kernel sums take float64 products.""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> r = se.cmmd(rng.normal(size=(200, 8)), rng.normal(0.5, 1.0, size=(200, 8)))
    >>> bool(float(r) > 0)
    True""",
)

prdc = make_verb(
    "prdc",
    ("prdc",),
    """Precision and recall (Kynkäänniemi et al., NeurIPS 2019) and density and coverage
(Naeem et al., ICML 2020), exact over the full sets: every distance decision is exact in
float64. ``float()`` is the precision.""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> r = se.prdc(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)))
    >>> bool(0 < r["prdc"]["prdc_recall"] <= 1)
    True""",
)

authpct = make_verb(
    "authpct",
    ("authpct",),
    """Authenticity, AuthPct (Alaa et al., "How Faithful is your Synthetic Data?", ICML 2022),
as dgm-eval computes it: the percentage of generated rows farther from their nearest training
row t* than t* is from its own nearest other training row. **``real`` is the training set.**
Exact over the full sets: every nearest-neighbour decision exact in float64. With
``per_sample`` each generated row's nearest training row (distance and index) and whether it
is authentic (:func:`shardeval.save_per_sample` writes them beside the rows' names).""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> train = rng.normal(size=(300, 4))
    >>> gen = np.concatenate([train[:30], rng.normal(size=(170, 4))])   # 30 copies
    >>> r = se.authpct(train, gen, per_sample=True)
    >>> r["authpct"]["authpct_copies"], bool(r["authpct"]["authpct_authentic"][:30].any())
    (30, False)""",
)

inception_score = make_verb(
    "inception_score",
    ("is",),
    """Inception Score (Salimans et al., "Improved techniques for training GANs", NeurIPS
2016), IS = exp(E_x KL(p(y|x) ‖ p(y))), from class logits, exact over all samples with its
standard error (delta method on log IS); ``splits`` adds the peers' protocol (mean and std
over splits, torch-fidelity's ``isc``). A −inf logit is a class of probability 0.""",
    """    >>> import numpy as np, shardeval as se
    >>> one_hot = np.eye(10, dtype=bool)[np.arange(1000) % 10]
    >>> logits = np.where(one_hot, 25.0, -25.0)  # confident and diverse
    >>> round(float(se.inception_score(logits)), 6)
    10.0""",
    inputs=("logits",),
)


ct = make_verb(
    "ct",
    ("ct",),
    """The data-copying statistic C_T (Meehan, Chaudhuri & Dasgupta, "A Non-Parametric Test to
Detect Data-Copying in Generative Models", AISTATS 2020) with dgm-eval's choices: in each
k-means cell of the training set, the Z-scored Mann-Whitney U of the generated rows' distances
to their nearest training row against the held-out test rows', averaged over the cells that
hold more than ``tau_rows`` generated rows, weighted by the test set's fractions; nearest rows
exact over the full sets. Without copying C_T is near 0 (each Z_U about N(0, 1)); below 0: the
generated rows lie closer to the training rows than fresh rows do, i.e. copying; above 0:
under-fitting.""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> train, test = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    >>> copies = train[:200] + 1e-3 * rng.normal(size=(200, 4))
    >>> bool(float(se.ct(train, test, copies)) < -3)
    True""",
    inputs=_HELD_OUT,
)


fld = make_verb(
    "fld",
    ("fld",),
    """The feature likelihood divergence FLD (Jiralerspong et al., "Feature Likelihood
Divergence: Evaluating the Generalization of Generative Models Using Samples", NeurIPS 2023)
with the authors' defaults: after standardising by the test set, a mixture of Gaussians centred
on up to ``gen_rows`` generated rows, one bandwidth each fitted to the training set by Adam,
scores the held-out test set; FLD = 100 × (its NLL per dimension − a baseline's, a mixture on
half the training rows fitted to the other half). Lower is better, about 0 for a generator as
good as the training data; copies of the training set score high (above 1,000 the authors warn
of copying), and ``evaluate='gap'`` gives 100 × (train NLL − test NLL), below 0 when copying.""",
    """    >>> import numpy as np, shardeval as se
    >>> rng = np.random.default_rng(0)
    >>> train, test = rng.normal(size=(400, 4)), rng.normal(size=(200, 4))
    >>> fresh, copies = rng.normal(size=(200, 4)), train[:200] + 1e-4
    >>> bool(abs(float(se.fld(train, test, fresh))) < 5 < float(se.fld(train, test, copies)))
    True""",
    inputs=_HELD_OUT,
)


def metrics(
    real: Any, gen: Any, names: Sequence[str] | str, *, test: Any = None, **options: Any
) -> Report:
    """Several metrics at once, by their plug-ins (:mod:`shardeval.pipeline.metrics`), sharing
    the passes: the sets' moments once for every metric that reads them, the pair metrics'
    block pairs once for KID, CMMD and PRDC together. A job evaluates each entry so.

    Args:
        real, gen: features, statistics or images (see :mod:`shardeval.api.inputs`); ``real``
            is None when every metric named measures the set alone (``is``).
        names: registered metric names (``fid``, ``fid_inf``, ``kid``, ``cmmd``, ``prdc``,
            ``nll_gaussian``, ``is``, and any registered since), as a list or as the command
            line's comma-separated text (``"fid,kid"``).
        test: a held-out test set (features), for the metrics that compare with one (``ct``,
            ``fld``, with ``real`` the training set); refused by the others.
        **options: the metrics' own options by name (an option several asked metrics declare,
            such as ``seed``, goes to each of them it means something to), and the run options
            (:mod:`shardeval.pipeline.runoptions`: ``shard_rows``, ``precision``,
            ``scheduler``…); each refused where no asked metric takes it.

    Returns:
        :class:`~shardeval.api.results.Report`: each metric's declared outputs under its
        name; ``float()`` the first metric's headline.

    Raises:
        OptionError: an unknown metric, or an option no metric asked takes.
        MetricOptionError: an option's value its declaration refuses.

    Example:
        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(300, 4)), rng.normal(0.3, 1.0, size=(300, 4))
        >>> r = se.metrics(a, b, "fid,kid")
        >>> sorted(r.results), bool(float(r) > 0)
        (['fid', 'kid'], True)
    """
    run = {k: v for k, v in options.items() if k in BY_NAME}
    own = {k: v for k, v in options.items() if k not in BY_NAME}
    return evaluate(names, real, gen, metric_options=own, run_options=run, test=test)


__all__ = [
    "IMAGES",
    "authpct",
    "cmmd",
    "ct",
    "fid",
    "fid_infinity",
    "fld",
    "inception_score",
    "kid",
    "make_verb",
    "metrics",
    "prdc",
]
