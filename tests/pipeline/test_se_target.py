"""«se_target»: how many rows per side give a chosen standard error at most, from the
measured one and its 1/√N scaling, the scaling checked against runs at four times the rows."""

import math

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.errors import MetricOptionError


def _kid(n, seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, 4))
    gen = 1.2 * rng.normal(size=(n, 4)) + 0.3
    return real, gen


def test_the_rows_predicted_for_a_target_give_about_that_standard_error():
    real, gen = _kid(300, 1)
    section = se.kid(real, gen, ci=0.95, se_target=1e-9).to_dict()["kid"]
    target = section["kid_standard_error"] / 2
    section = se.kid(real, gen, ci=0.95, se_target=target).to_dict()["kid"]
    rows = section["kid_rows_for_se_target"]
    assert rows == math.ceil(300 * (section["kid_standard_error"] / target) ** 2) == 1200
    # The scaling it rests on: at four times the rows, half the standard error (means over
    # draws, since one draw's standard error varies by about 20 % at 300 rows; a 1/N
    # scaling would give a ratio of 0.5).
    small = np.mean(
        [se.kid(*_kid(300, s)).to_dict()["kid"]["kid_standard_error"] for s in range(4)]
    )
    large = np.mean(
        [se.kid(*_kid(1200, s)).to_dict()["kid"]["kid_standard_error"] for s in range(4)]
    )
    assert large / (small / 2) == pytest.approx(1.0, abs=0.25)


def test_fid_reports_the_rows_and_says_they_are_a_bound():
    rng = np.random.default_rng(3)
    real, gen = rng.normal(size=(400, 3)), rng.normal(size=(500, 3)) + 0.5
    report = se.fid(real, gen, ci=0.9, se_target=0.01)
    section = report.to_dict()["fid"]
    expected = math.ceil(500 * (section["fid_standard_error"] / 0.01) ** 2)
    assert section["fid_rows_for_se_target"] == expected
    assert section["fid_standard_error"] > 0.01
    assert f"at most about {expected:,} rows per side" in report.summary()
    assert se.fid(real, gen, ci=0.9).to_dict()["fid"]["fid_rows_for_se_target"] is None


@pytest.mark.parametrize("value", [-0.1, float("inf")])
def test_a_target_must_be_a_positive_number_and_needs_ci(value):
    real, gen = _kid(50, 4)
    with pytest.raises(MetricOptionError, match="se_target"):
        se.kid(real, gen, ci=0.95, se_target=value)
    with pytest.raises(MetricOptionError, match="ci"):
        se.fid(real, gen, se_target=0.1)  # applies with «ci» only
