"""The interval of ``se.nll``: nll ∓ z·SE of the mean NLL per sample, from the standard error of
the per-row values; calibrated over independent replicates for per-sample log-likelihoods and
for importance log-weights (whose interval is of the IWAE bound at that K, −E log p̂, which the
replicates' mean estimates), and the same interval on every route: the function, the command
line, the training-loop class, and, by --gaussian, the Gaussian NLL plug-in's (÷ d).

The replicates go through the pipeline functions ``se.nll`` calls
(:func:`~shardeval.pipeline.likelihood.nll.nll_from_loglik`,
:func:`~shardeval.pipeline.likelihood.nll.nll_importance`) and
:func:`~shardeval.pipeline.likelihood.nll.nll_interval` on arrays in memory: about three times
faster than the report per replicate; the route test checks that ``se.nll`` gives what they
give."""

import json
import math

import dask.array as da
import numpy as np
import pytest
from scipy import stats

import shardeval as se
from shardeval.pipeline.core.engine import Engine
from shardeval.pipeline.errors import OptionError, ShapeError
from shardeval.pipeline.io.feature_source import FeatureSource
from shardeval.pipeline.likelihood.nll import nll_from_loglik, nll_importance, nll_interval


def _source(values):
    return FeatureSource("values", da.from_array(values, chunks=values.shape))


def _loglik(rng, n):
    """Log-densities of N(0, I₄) rows under N(0.2·1, I₄): −½χ²-like, skewed."""
    x = rng.normal(size=(n, 4))
    return -0.5 * ((x - 0.2) ** 2).sum(axis=1) - 2 * math.log(2 * math.pi)


def _log_weights(rng, n, k=8):
    """Log-weights of K = 8 draws per row, log-normal weights of a row-dependent scale."""
    return rng.normal(size=(n, 1)) + 0.8 * rng.normal(size=(n, k))


def _calibration(kind, n, replicates=250, level=0.95):
    """(mean reported SE / SD of the estimates, coverage of their mean) over ``replicates``."""
    rng = np.random.default_rng({"loglik": 600, "iw": 700}[kind] + n)
    engine = Engine()
    estimates, errors, intervals = [], [], []
    for _ in range(replicates):
        if kind == "loglik":
            result = nll_from_loglik(_source(_loglik(rng, n)), engine=engine)
        else:
            result = nll_importance(_source(_log_weights(rng, n)), engine=engine, device="cpu")
        estimates.append(result.nll)
        errors.append(result.standard_error)
        intervals.append(nll_interval(result, level))
    estimates, (low, high) = np.array(estimates), np.array(intervals).T
    centre = estimates.mean()
    return (
        float(np.mean(errors) / estimates.std(ddof=1)),
        float(np.mean((low <= centre) & (centre <= high))),
    )


@pytest.mark.parametrize("kind", ["loglik", "iw"])
@pytest.mark.parametrize("n", [50, 500])
def test_the_interval_is_calibrated(kind, n):
    """250 replicates: the mean reported standard error within 20 % of the estimates' standard
    deviation, the 95 % interval covering their mean in 92–98 % of replicates (binomial SD of
    the coverage: 1.4 %)."""
    ratio, covered = _calibration(kind, n)
    assert 0.8 <= ratio <= 1.2, ratio
    assert 0.92 <= covered <= 0.98, covered


def test_every_route_gives_the_interval_of_the_standard_error(tmp_path, capsys):
    from shardeval.workflows.cli import main

    values = _loglik(np.random.default_rng(13), 240)
    path = str(tmp_path / "loglik.npy")
    np.save(path, values)
    report = se.nll(path, ci=0.9)
    python = report.to_dict()
    z = stats.norm.ppf(0.95)
    nll, error = -values.mean(), values.std(ddof=1) / math.sqrt(len(values))
    assert (python["ci_low"], python["ci_high"]) == pytest.approx(
        (nll - z * error, nll + z * error), rel=1e-12
    )
    assert python["settings"]["ci"] == 0.9
    assert "90% interval" in report.summary()
    capsys.readouterr()
    assert main(["nll", path, "--ci", "0.9", "--json", "-q"]) == 0
    command = json.loads(capsys.readouterr().out)
    assert (command["ci_low"], command["ci_high"]) == (python["ci_low"], python["ci_high"])
    with se.NLL(ci=0.9) as metric:
        metric.update(values[:100])
        metric.update(values[100:])
        loop = metric.compute().to_dict()
    assert (loop["ci_low"], loop["ci_high"]) == (python["ci_low"], python["ci_high"])
    plain = se.nll(path).to_dict()
    assert plain["ci_low"] is None
    assert plain["ci_high"] is None
    assert "ci" not in plain["settings"]
    assert (plain["nll"], plain["standard_error"]) == (python["nll"], python["standard_error"])


def test_the_gaussian_mode_gives_the_plug_ins_interval(tmp_path):
    """``se.nll(test, gaussian=stats)`` and the nll_gaussian plug-in compute one NLL: the
    plug-in reports its interval per dimension, the function per sample."""
    rng = np.random.default_rng(14)
    real, gen = rng.normal(size=(300, 3)), rng.normal(size=(200, 3)) + 0.1
    np.save(tmp_path / "gen.npy", gen)
    se.stats(real, str(tmp_path / "real-stats.zarr"))
    stats_path, gen_path = str(tmp_path / "real-stats.zarr"), str(tmp_path / "gen.npy")
    function = se.nll(gen_path, gaussian=stats_path, ci=0.9).to_dict()
    plug_in = se.metrics(stats_path, gen_path, "nll_gaussian", ci=0.9).to_dict()["nll_gaussian"]
    assert plug_in["nll_gaussian_ci_low"] == pytest.approx(function["ci_low"] / 3, rel=1e-12)
    assert plug_in["nll_gaussian_ci_high"] == pytest.approx(function["ci_high"] / 3, rel=1e-12)


@pytest.mark.parametrize("level", [-0.1, 1.0, "0.9", True])
def test_a_level_outside_0_1_is_refused(level):
    with pytest.raises(OptionError, match="ci"):
        se.nll(np.zeros(5), ci=level)
    with pytest.raises(OptionError, match="ci"):
        se.NLL(ci=level)


def test_one_value_has_no_interval():
    with pytest.raises(ShapeError, match="at least 2"):
        se.nll(np.array([-1.0, np.nan]), ci=0.9, nonfinite="drop")
    assert se.nll(np.array([-1.0, np.nan]), nonfinite="drop").to_dict()["ci_low"] is None
