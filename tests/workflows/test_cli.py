import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shardeval.workflows.cli import main
from tests.conftest import write_zarr
from tests.reference import exact_fid, np_stats, pytorch_fid_formula

REPORT_KEYS = {"metric", "fid", "options", "inputs", "settings", "seconds", "versions"}
FID_KEYS = {
    "fid",
    "fid_mean_term",
    "fid_trace_term",
    "fid_n",
    "fid_n_real",
    "fid_eigenvalues_clamped",
    "fid_clamped_max",
    "fid_rank_deficit",
}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fid_end_to_end_report(tmp_path, capsys, feature_pair):
    real_path, real, gen_path, gen = feature_pair
    out = tmp_path / "r.json"
    code, stdout, _ = _run(capsys, "fid", real_path, gen_path, "--out", out, "--quiet")
    assert code == 0
    report = json.loads(out.read_text())
    assert report.keys() >= REPORT_KEYS
    fid = report["fid"]
    assert fid.keys() >= FID_KEYS
    assert fid["fid"] == pytest.approx(exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6)
    assert fid["fid"] == pytest.approx(fid["fid_mean_term"] + fid["fid_trace_term"], rel=1e-12)
    assert (fid["fid_n_real"], fid["fid_n"]) == (900, 700)
    inputs = report["inputs"]
    assert (inputs["real"]["shape"], inputs["gen"]["shape"]) == ([900, 24], [700, 24])
    assert "shards" in inputs["real"]
    assert "shards" in inputs["gen"]
    clamped = (fid["fid_eigenvalues_clamped"], fid["fid_clamped_max"], fid["fid_rank_deficit"])
    assert clamped == (0, 0.0, 0)
    assert inputs["real"]["feature_extractor"] == "test-net"
    assert f"FID {fid['fid']:.6g}" in stdout


def test_stats_then_ref_gives_the_same_fid(tmp_path, capsys, feature_pair):
    real_path, _, gen_path, _ = feature_pair
    _, stdout, _ = _run(capsys, "fid", real_path, gen_path, "--json", "-q")
    direct = json.loads(stdout)["fid"]["fid"]
    for name in ("s.zarr", "s.npz"):
        assert _run(capsys, "stats", real_path, "-o", tmp_path / name, "-q")[0] == 0
        code, stdout, _ = _run(capsys, "fid", gen_path, "--ref", tmp_path / name, "--json", "-q")
        assert code == 0
        report = json.loads(stdout)
        assert report["fid"]["fid"] == pytest.approx(direct, rel=1e-9)
        # statistics that record their row count n are mergeable (a bare mu/sigma is not)
        assert report["inputs"]["real"]["statistics"] == str(tmp_path / name)
        assert report["inputs"]["real"]["n"] == report["fid"]["fid_n_real"] == 900


def test_bare_npz_ref_matches_pytorch_fid_and_says_unmergeable(tmp_path, capsys, feature_pair):
    _real_path, real, gen_path, gen = feature_pair
    mu, sigma = np_stats(real)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    _code, stdout, _ = _run(capsys, "fid", gen_path, "--ref", tmp_path / "ref.npz", "--json", "-q")
    report = json.loads(stdout)
    fid = report["fid"]["fid"]
    assert fid == pytest.approx(pytorch_fid_formula(mu, sigma, *np_stats(gen)), rel=1e-5)
    assert report["inputs"]["real"]["n"] is None  # no row count: cannot be merged
    assert any("cannot be merged" in w for w in report["warnings"])


def test_singular_covariance_warns_and_reports(tmp_path, capsys, rng):
    a = write_zarr(tmp_path / "a.zarr", rng.standard_normal((10, 30)).astype(np.float32))
    b = write_zarr(tmp_path / "b.zarr", rng.standard_normal((12, 30)).astype(np.float32))
    code, stdout, err = _run(capsys, "fid", a, b, "--json", "-q")
    assert code == 0
    assert "shardeval: warning: real set has n=10 <= d=30" in err
    assert len(json.loads(stdout)["warnings"]) == 2


def _bad_inputs(tmp_path, rng):
    good = write_zarr(tmp_path / "good.zarr", rng.standard_normal((20, 4)).astype(np.float32))
    nan = rng.standard_normal((20, 4)).astype(np.float32)
    nan[[3, 11]] = np.nan
    np.save(tmp_path / "3d.npy", np.zeros((4, 3, 2), np.float32))
    np.save(tmp_path / "one.npy", np.zeros((1, 4), np.float32))
    np.save(tmp_path / "str.npy", np.array([["a"] * 4] * 3))
    np.save(tmp_path / "d3.npy", np.zeros((5, 3), np.float32))
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(4))
    np.savez(tmp_path / "mismatch.npz", mu=np.zeros(4), sigma=np.eye(3))
    return {
        "missing store": (["fid", tmp_path / "nope.zarr", good], "does not exist"),
        "not 2-D": (["fid", tmp_path / "3d.npy", good], "must be 2-D"),
        "fewer than 2 rows": (["fid", tmp_path / "one.npy", good], "at least 2"),
        "non-numeric": (["fid", tmp_path / "str.npy", good], "integer or floating"),
        "dims differ": (["fid", tmp_path / "d3.npy", good], "feature dimensions differ"),
        "non-finite": (
            ["fid", write_zarr(tmp_path / "nan.zarr", nan), good],
            r"2 row\(s\) with NaN or inf \(first at rows 3, 11\)",
        ),
        "stats without sigma": (["fid", good, "--ref", tmp_path / "nosigma.npz"], "lacks"),
        "stats mismatched": (["fid", good, "--ref", tmp_path / "mismatch.npz"], "expected"),
        "ref d differs": (
            ["fid", tmp_path / "d3.npy", "--ref", tmp_path / "mismatch.npz"],
            "expected",
        ),
        "three stores": (["fid", good, good, good], "give REAL and GEN"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing store",
        "not 2-D",
        "fewer than 2 rows",
        "non-numeric",
        "dims differ",
        "non-finite",
        "stats without sigma",
        "stats mismatched",
        "ref d differs",
        "three stores",
    ],
)
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, capsys, rng, case):
    argv, msg = _bad_inputs(tmp_path, rng)[case]
    out = tmp_path / "out" / "report.json"
    code, _stdout, err = _run(capsys, *argv, "--out", out, "-q")
    assert code == 2
    assert err.startswith("shardeval: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert __import__("re").search(msg, err)
    assert not out.exists()


def test_nonfinite_drop_counts_rows(tmp_path, capsys, rng):
    x = rng.standard_normal((40, 4)).astype(np.float32)
    x[5, 1] = np.inf
    a = write_zarr(tmp_path / "a.zarr", x)
    code, stdout, _ = _run(capsys, "fid", a, a, "--nonfinite", "drop", "--json", "-q")
    report = json.loads(stdout)
    assert code == 0
    assert report["fid"]["fid_n_real"] == 39
    assert report["fid"]["fid_nonfinite_dropped"] == 1


def test_progress_bar_goes_to_stderr_unless_quiet(capsys, feature_pair):
    real_path, _, gen_path, _ = feature_pair
    _, _, err = _run(capsys, "fid", real_path, gen_path, "--shard-rows", "100")
    assert "shards: 16/16 done" in err
    _, _, err = _run(capsys, "fid", real_path, gen_path, "--shard-rows", "100", "-q")
    assert err == ""


def test_synth_writes_a_store(tmp_path, capsys):
    code, stdout, _ = _run(capsys, "synth", tmp_path / "s.zarr", "--n", "100", "--d", "5")
    assert code == 0
    assert "100 x 5" in stdout
    code, _, _ = _run(capsys, "synth", tmp_path / "s.npy", "--n", "10", "--d", "3")
    assert np.load(tmp_path / "s.npy").shape == (10, 3)


def test_console_script_help_and_error_exit():
    exe = os.path.join(os.path.dirname(sys.executable), "shardeval")
    help_run = subprocess.run([exe, "fid", "--help"], capture_output=True, text=True, check=False)
    assert help_run.returncode == 0
    assert "--ref STATS" in help_run.stdout
    bad = subprocess.run(
        [exe, "fid", "/nonexistent/a.zarr", "/nonexistent/b.zarr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "shardeval: error: '/nonexistent/a.zarr' does not exist"
    ]


def test_the_cpu_fid_path_never_imports_torch(tmp_path, feature_pair):
    real_path, _, gen_path, _ = feature_pair
    script = (
        "import sys; from shardeval.workflows.cli import main; "
        f"code = main(['fid', {real_path!r}, {gen_path!r}, '--device', 'cpu', '-q']); "
        "print(code, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-2:] == ["0", "False"]


@pytest.fixture
def mislabelled(tmp_path, rng):
    """Features saved as .npy but named .npz, and as .npz but named .npy, with their data."""
    real = (rng.standard_normal((300, 5)) + 0.5).astype(np.float32)
    gen = (1.3 * rng.standard_normal((250, 5))).astype(np.float32)
    np.save(tmp_path / "real.npy", real)
    os.rename(tmp_path / "real.npy", tmp_path / "real.npz")
    np.savez(tmp_path / "gen.npz", features=gen)
    os.rename(tmp_path / "gen.npz", tmp_path / "gen.npy")
    return str(tmp_path / "real.npz"), real, str(tmp_path / "gen.npy"), gen


def test_fid_and_kid_read_mislabelled_numpy_files_by_their_bytes(capsys, mislabelled):
    # Both were AttributeError tracebacks (exit 1): the extension chose the reader.
    from tests.pipeline.test_samples import kid_brute

    real_path, real, gen_path, gen = mislabelled
    code, out, err = _run(capsys, "fid", real_path, gen_path, "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["fid"]["fid"] == pytest.approx(
        exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6
    )
    code, out, err = _run(capsys, "kid", real_path, gen_path, "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["kid"]["kid"] == pytest.approx(kid_brute(real, gen), rel=1e-5)


def test_stats_and_ess_read_mislabelled_numpy_files_by_their_bytes(tmp_path, capsys, mislabelled):
    real_path, real, _, _ = mislabelled
    code, _, err = _run(capsys, "stats", real_path, "-o", tmp_path / "s.zarr", "-q")
    assert code == 0, err
    from shardeval.pipeline.io.statsio import load_stats

    stats = load_stats(tmp_path / "s.zarr")
    np.testing.assert_allclose(stats.mean, real.astype(np.float64).mean(0), rtol=1e-6)
    lw = np.random.default_rng(3).normal(size=500) * 2
    np.savez(tmp_path / "lw.npz", lw=lw)
    os.rename(tmp_path / "lw.npz", tmp_path / "lw.npy")
    code, out, err = _run(capsys, "ess", tmp_path / "lw.npy", "--json", "-q")
    assert code == 0, err
    w = np.exp(lw - lw.max())
    assert json.loads(out)["ess"] == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)


def test_statistics_named_npy_are_statistics(tmp_path, capsys, feature_pair):
    _, real, gen_path, gen = feature_pair
    mu, sigma = np_stats(real)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    os.rename(tmp_path / "ref.npz", tmp_path / "ref.npy")
    code, out, err = _run(capsys, "fid", tmp_path / "ref.npy", gen_path, "--json", "-q")
    assert code == 0, err
    report = json.loads(out)
    assert report["inputs"]["real"]["statistics"] == str(tmp_path / "ref.npy")
    assert report["fid"]["fid"] == pytest.approx(exact_fid(mu, sigma, *np_stats(gen)), rel=1e-6)


def test_fid_against_pytorch_fid_statistics_at_d_1(tmp_path, capsys, rng):
    # A pytorch-fid .npz at d = 1 holds a 0-d sigma (np.cov of one feature); it was refused.
    gen = (0.5 * rng.standard_normal((4000, 1)) - 1.0).astype(np.float64)
    np.savez(tmp_path / "ref.npz", mu=np.float64(2.0), sigma=np.float64(9.0))
    np.save(tmp_path / "gen.npy", gen)
    code, out, err = _run(capsys, "fid", tmp_path / "ref.npz", tmp_path / "gen.npy", "--json", "-q")
    assert code == 0, err
    # Two 1-D Gaussians: (μ1 − μ2)² + (σ1 − σ2)², σ the standard deviations.
    mu2, sd2 = gen.mean(), gen.std(ddof=1)
    assert json.loads(out)["fid"]["fid"] == pytest.approx(
        (2.0 - mu2) ** 2 + (3.0 - sd2) ** 2, rel=1e-9
    )
