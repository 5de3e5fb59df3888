"""Intervals in the training loop: the metrics that keep rows give the one-shot interval (the
same bits), FID over rows included; the class that keeps moments refuses «ci» in one line."""

import numpy as np
import pytest
import torch

import shardeval as se
from shardeval.pipeline.errors import OptionError


def _fed(metric, real, gen, rng):
    for rows, is_real in ((real, True), (gen, False)):
        start = 0
        while start < len(rows):
            step = int(rng.integers(1, 60))
            metric.update(torch.from_numpy(rows[start : start + step]), real=is_real)
            start += step
    return metric


@pytest.mark.parametrize(
    ("names", "options", "keys"),
    [
        (["fid"], {"ci": 0.9, "ci_groups": 5}, ("fid", "fid_standard_error", "fid_ci_low")),
        (["kid"], {"ci": 0.9}, ("kid", "kid_standard_error", "kid_ci_low", "kid_ci_high")),
    ],
)
def test_the_training_loop_gives_the_one_shot_interval(names, options, keys):
    rng = np.random.default_rng(11)
    real, gen = rng.normal(size=(310, 5)), 1.1 * rng.normal(size=(290, 5)) + 0.2
    with se.RowMetrics(names, **options) as metric:
        got = _fed(metric, real, gen, rng).compute().to_dict()[names[0]]
    expected = se.metrics(real, gen, names, **options).to_dict()[names[0]]
    for key in keys:
        assert got[key] == expected[key], key
    assert got[keys[-1]] is not None


def test_the_class_of_moments_refuses_an_interval_and_names_the_one_that_gives_it():
    with pytest.raises(OptionError, match=r"se\.RowMetrics\(\['fid'\], ci=0\.95\)"):
        se.FID(ci=0.95)
    se.FID(ci=0.0)  # no interval asked: nothing to refuse
