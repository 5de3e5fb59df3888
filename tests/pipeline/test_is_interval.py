"""The Inception Score's interval: exp(log IS ∓ z·SE/IS), normal on the log scale from the
delta method's standard error; calibrated on synthetic Gaussian logits over independent
replicates (the reported standard error against the spread of the scores, and the interval's
coverage of their mean), each replicate through ``se.inception_score`` (the plug-in's compute),
and the same interval on every route."""

import json
import math

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.errors import MetricOptionError

CLASSES = 10


def _logits(rng, n):
    """Gaussian logits: a class's mean 1.5 above the others' for each row's class, noise 1.5."""
    labels = rng.integers(0, CLASSES, size=n)
    return 1.5 * np.eye(CLASSES)[labels] + 1.5 * rng.normal(size=(n, CLASSES))


def _calibration(n, replicates=300, level=0.95):
    """(mean reported SE / SD of the scores, coverage of their mean) over ``replicates``
    draws of n rows of logits."""
    rng = np.random.default_rng(400 + n)
    scores, errors, lows, highs = [], [], [], []
    for _ in range(replicates):
        got = se.inception_score(_logits(rng, n), ci=level).to_dict()["is"]
        scores.append(got["is"])
        errors.append(got["is_standard_error"])
        lows.append(got["is_ci_low"])
        highs.append(got["is_ci_high"])
    scores, low, high = np.array(scores), np.array(lows), np.array(highs)
    centre = scores.mean()
    return (
        float(np.mean(errors) / scores.std(ddof=1)),
        float(np.mean((low <= centre) & (centre <= high))),
    )


@pytest.mark.parametrize("n", [200, 1000])
def test_the_interval_is_calibrated_on_gaussian_logits(n):
    """300 replicates of 10-class logits: the mean reported standard error within 20 % of the
    scores' standard deviation, the 95 % interval covering their mean in 92–98 % of replicates
    (binomial SD of the coverage: 1.3 %)."""
    ratio, covered = _calibration(n)
    assert 0.8 <= ratio <= 1.2, ratio
    assert 0.92 <= covered <= 0.98, covered


def _reference_log_is(logits):
    """Float64 log IS and its delta-method standard error by the definitions: the mean
    KL(p_i ‖ q) over rows and the standard deviation of those KLs over √n."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    q = p.mean(axis=0)
    kl = (p * (np.log(p) - np.log(q))).sum(axis=1)
    return kl.mean(), kl.std(ddof=1) / math.sqrt(len(kl))


def test_every_route_gives_the_interval_on_the_log_scale(tmp_path, capsys):
    from scipy import stats

    from shardeval.workflows.cli import main

    logits = _logits(np.random.default_rng(5), 400)
    path = str(tmp_path / "logits.npy")
    np.save(path, logits)
    report = se.inception_score(path, ci=0.9, as_logits=True)
    python = report.to_dict()["is"]
    log_is, log_se = _reference_log_is(logits)
    z = stats.norm.ppf(0.95)
    assert python["is_ci_low"] == pytest.approx(math.exp(log_is - z * log_se), rel=1e-9)
    assert python["is_ci_high"] == pytest.approx(math.exp(log_is + z * log_se), rel=1e-9)
    # asymmetric about IS: IS is the geometric mean of the ends
    assert math.sqrt(python["is_ci_low"] * python["is_ci_high"]) == pytest.approx(
        python["is"], rel=1e-12
    )
    assert "90% interval" in report.summary()
    capsys.readouterr()
    assert main(["is", path, "--ci", "0.9", "--as-logits", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["is"] == python
    assert se.metrics(None, path, "is", ci=0.9, as_logits=True).to_dict()["is"] == python
    plain = se.inception_score(path, as_logits=True).to_dict()["is"]
    assert plain["is_ci_low"] is None
    assert plain["is_ci_high"] is None
    assert {k: v for k, v in plain.items() if "_ci_" not in k} == {
        k: v for k, v in python.items() if "_ci_" not in k
    }


@pytest.mark.parametrize("level", [-0.5, 1.0])
def test_a_level_outside_0_1_is_refused(level):
    with pytest.raises(MetricOptionError, match="ci"):
        se.inception_score(_logits(np.random.default_rng(6), 20), ci=level)


def test_identical_rows_give_an_interval_of_one_point():
    """Rows that are all one distribution: IS is 1 exactly and its standard error 0, so the
    interval is [1, 1], not NaN."""
    logits = np.tile([[2.0, -1.0, 0.5]], (5, 1))
    got = se.inception_score(logits, ci=0.95).to_dict()["is"]
    assert got["is"] == got["is_ci_low"] == got["is_ci_high"] == 1.0
