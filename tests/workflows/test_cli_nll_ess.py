import json
import math

import numpy as np
import pytest

from pipeline import Moments, save_stats
from workflows.cli import main


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


def test_nll_gaussian_parzen_iw_and_ess_commands(tmp_path, capsys, rng):
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    save_stats(tmp_path / "s.zarr", Moments.from_rows(x))
    code, out, _ = _run(capsys, "nll", "--gaussian", tmp_path / "s.zarr", tmp_path / "x.npy", "-q")
    assert code == 0
    assert "nats/dim" in out
    code, out, _ = _run(
        capsys,
        "nll",
        "--parzen",
        tmp_path / "x.npy",
        tmp_path / "x.npy",
        "--bandwidth",
        "0.5",
        "--json",
        "-q",
    )
    assert code == 0
    assert json.loads(out)["bandwidth"] == 0.5
    lw = rng.normal(size=(200, 30))
    np.save(tmp_path / "lw.npy", lw)
    code, out, _ = _run(capsys, "nll", "--iw", tmp_path / "lw.npy", "--json", "-q")
    assert code == 0
    assert json.loads(out)["per_row"]["k"] == 30
    code, out, _ = _run(capsys, "ess", tmp_path / "lw.npy", "--out", tmp_path / "e.json", "-q")
    report = json.loads((tmp_path / "e.json").read_text())
    w = np.exp(lw - lw.max())
    assert report["ess"] == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
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
