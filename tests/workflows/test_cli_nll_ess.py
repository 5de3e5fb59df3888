import json
import math

import numpy as np
import pytest

from shardeval.pipeline import Moments, save_stats
from shardeval.workflows.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_nll_from_loglik_with_bits_per_dim(tmp_path, capsys, rng):
    ll = rng.normal(-100, 3, 5000)
    np.save(tmp_path / "ll.npy", ll)
    code, out, _ = _run(capsys, "nll", tmp_path / "ll.npy", "--dims", "8", "--json", "-q")
    report = json.loads(out)
    assert code == 0
    assert report["metric"] == "nll"
    assert report["n"] == 5000
    assert report["nll"] == pytest.approx(-ll.mean(), rel=1e-12)
    assert report["bits_per_dim"] == pytest.approx(-ll.mean() / (8 * math.log(2)), rel=1e-12)


def _json(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--json", "-q")
    assert code == 0, err
    return json.loads(out)


def test_nll_gaussian_equals_the_float64_density(tmp_path, capsys, rng):
    from scipy.stats import multivariate_normal

    x = (rng.normal(size=(3000, 4)) @ rng.normal(size=(4, 4)) + 2).astype(np.float32)
    test = (rng.normal(size=(700, 4)) + 2.2).astype(np.float32)
    np.save(tmp_path / "t.npy", test)
    save_stats(tmp_path / "s.zarr", Moments.from_rows(x))
    report = _json(capsys, "nll", "--gaussian", tmp_path / "s.zarr", tmp_path / "t.npy")
    mean, cov = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)
    lp = multivariate_normal(mean, cov).logpdf(test.astype(np.float64))
    assert report["nll"] == pytest.approx(-lp.mean(), rel=1e-6)
    assert report["nats_per_dim"] == pytest.approx(-lp.mean() / 4, rel=1e-6)
    assert report["standard_error"] == pytest.approx(lp.std(ddof=1) / math.sqrt(700), rel=1e-5)


def test_nll_parzen_equals_the_brute_force_kde(tmp_path, capsys, rng):
    samples, test = rng.normal(size=(900, 3)), rng.normal(size=(300, 3)) * 1.1
    np.save(tmp_path / "s.npy", samples)
    np.save(tmp_path / "t.npy", test)
    h = 0.5
    report = _json(
        capsys, "nll", "--parzen", tmp_path / "s.npy", tmp_path / "t.npy", "--bandwidth", str(h)
    )
    sq = ((test[:, None, :] - samples[None]) ** 2).sum(-1)
    lp = np.log(np.exp(-sq / (2 * h * h)).mean(1)) - 1.5 * math.log(2 * math.pi * h * h)
    assert report["bandwidth"] == h
    assert report["nll"] == pytest.approx(-lp.mean(), rel=1e-6)
    assert report["min_loglik"] == pytest.approx(lp.min(), rel=1e-5)


def test_nll_iw_and_ess_equal_direct_sums(tmp_path, capsys, rng):
    lw = rng.normal(size=(200, 30))
    np.save(tmp_path / "lw.npy", lw)
    report = _json(capsys, "nll", "--iw", tmp_path / "lw.npy")
    log_p = np.log(np.exp(lw).mean(axis=1))
    assert report["nll"] == pytest.approx(-log_p.mean(), rel=1e-12)
    assert report["per_row"]["k"] == 30
    code, out, _ = _run(capsys, "ess", tmp_path / "lw.npy", "--out", tmp_path / "e.json", "-q")
    assert code == 0
    report = json.loads((tmp_path / "e.json").read_text())
    w = np.exp(lw - lw.max())
    assert report["ess"] == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
    assert report["max_weight"] == pytest.approx(w.max() / w.sum(), rel=1e-9)
    assert report["khat_reading"] in ("good", "usable", "unreliable")
    assert "Pareto k̂" in out


@pytest.mark.parametrize(
    ("array", "argv", "msg"),
    [
        (np.zeros((3, 2, 2)), ["ess"], "must be 1-D"),
        (np.array([0.0, np.nan, 1.0]), ["ess"], r"1 row\(s\) with NaN"),
        (np.array([0.0, np.inf, 1.0]), ["ess"], r"\+inf"),
        (np.zeros((4, 0)), ["nll", "--iw"], "rows are empty"),
        (np.zeros((4, 2)), ["nll"], "must be 1-D"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, array, argv, msg):
    np.save(tmp_path / "bad.npy", array)
    out = tmp_path / "r.json"
    code, _, err = _run(capsys, *argv, tmp_path / "bad.npy", "--out", out, "-q")
    assert code == 2
    assert err.startswith("shardeval: error:")
    assert err.count("\n") == 1
    assert __import__("re").search(msg, err)
    assert not out.exists()


def test_nonfinite_drop_for_loglik(tmp_path, capsys):
    np.save(tmp_path / "ll.npy", np.array([-1.0, np.nan, -3.0, -np.inf]))
    code, out, _ = _run(capsys, "nll", tmp_path / "ll.npy", "--nonfinite", "drop", "--json", "-q")
    report = json.loads(out)
    assert code == 0
    assert report["n"] == 2
    assert report["nonfinite_dropped"] == 2
    assert report["nll"] == pytest.approx(2.0)
