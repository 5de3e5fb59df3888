"""FID stays within its stated error where fp32 products used to fail it: few rows (N ≤ d),
magnitudes outside fp32's comfortable range, and the choice of scheduler; FID and PRDC of
float64 features at magnitudes where float64 products overflow or underflow are right, or one
line saying why not."""

import json

import numpy as np
import pytest

from shardeval.pipeline import Engine, Gaussian, feature_moments, frechet_distance, open_features
from shardeval.workflows.cli import main
from tests.conftest import write_zarr
from tests.reference import exact_fid, np_stats


def _fid(capsys, a, b):
    code = main(["fid", str(a), str(b), "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)["fid"]["fid"]


def test_fewer_rows_than_features_at_the_default_precision(tmp_path, capsys):
    # 200 x 256 against 20,000 x 256: the small side's covariance is singular, and fp32 noise in
    # its null space used to put FID 2.6e-4 off (the rank cut-off took noise for variance).
    rng = np.random.default_rng(0)
    d = 256
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    small = (rng.standard_normal((200, d)) @ a + 1).astype(np.float32)
    big = (rng.standard_normal((20_000, d)) @ (1.3 * a)).astype(np.float32)
    p_small = write_zarr(tmp_path / "small.zarr", small, chunk_rows=64)
    p_big = write_zarr(tmp_path / "big.zarr", big, chunk_rows=4096)
    expected = exact_fid(*np_stats(small), *np_stats(big))
    assert _fid(capsys, p_small, p_big) == pytest.approx(expected, rel=1e-6)
    assert _fid(capsys, p_big, p_small) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("magnitude", [1e18, 1e-22, 1e-25])
def test_magnitudes_outside_fp32_range(tmp_path, capsys, magnitude):
    # 1e18 overflowed fp32 sums of squares (FID inf, JSON null); 1e-22 lost digits in
    # subnormals (0.3% off); 1e-25 underflowed to a false "not positive semi-definite".
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3000, 16)) * magnitude).astype(np.float32)
    y = ((rng.standard_normal((3000, 16)) * 1.2 + 0.1) * magnitude).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    expected = exact_fid(*np_stats(x), *np_stats(y))
    fid = _fid(capsys, tmp_path / "x.npy", tmp_path / "y.npy")
    assert fid == pytest.approx(expected, rel=1e-6, abs=0)  # FID here is ~1e-44: no abs slack


def test_threaded_and_sync_schedulers_agree_exactly(tmp_path, rng):
    # 777-row shards: with BLAS threads following the scheduler, threads and sync differed by
    # 1.1e-9. One BLAS thread per shard on every scheduler makes them agree.
    x = (rng.standard_normal((20_000, 96)) @ rng.standard_normal((96, 96)) + 2).astype(np.float32)
    y = (rng.standard_normal((15_000, 96)) @ rng.standard_normal((96, 96))).astype(np.float32)
    paths = [write_zarr(tmp_path / "x.zarr", x), write_zarr(tmp_path / "y.zarr", y)]
    values = []
    for scheduler in ("threads", "sync"):
        sources = [open_features(p, shard_rows=777) for p in paths]
        (a, _), (b, _) = feature_moments(sources, engine=Engine(scheduler))
        values.append(frechet_distance(Gaussian.from_moments(a), Gaussian.from_moments(b)).fid)
    assert abs(values[0] - values[1]) <= 1e-12 * abs(values[0])


def _prdc_cli(capsys, a, b):
    code = main(["prdc", str(a), str(b), "--k", "3", "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)["prdc"]
    return r["prdc_precision"], r["prdc_recall"], r["prdc_density"], r["prdc_coverage"]


@pytest.mark.parametrize("scale", [1e-300, 1e154, 1e155, 1e300])
def test_prdc_of_float64_features_far_from_1(tmp_path, capsys, scale):
    # The reported case: 1e154 gave 1 / 1 / 0.3033 / 0.15, 1e155–1e300 and 1e-300 gave
    # 1 / 1 / 0 / 0, exit 0. Unscaled, the float64 brute force gives 0.9 / 0.95 / 1.0233 / 0.97.
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    r, g = rng.normal(size=(100, 4)), rng.normal(size=(100, 4))
    np.save(tmp_path / "r.npy", r * scale)
    np.save(tmp_path / "g.npy", g * scale)
    within_r, within_g = cdist(r, r, "sqeuclidean"), cdist(g, g, "sqeuclidean")
    np.fill_diagonal(within_r, np.inf)
    np.fill_diagonal(within_g, np.inf)
    rad_r, rad_g = np.sort(within_r, 1)[:, 2], np.sort(within_g, 1)[:, 2]
    cross = cdist(r, g, "sqeuclidean")
    expected = (
        (cross <= rad_r[:, None]).any(0).mean(),
        (cross <= rad_g[None, :]).any(1).mean(),
        (cross < rad_r[:, None]).sum() / 300,
        (cross < rad_r[:, None]).any(1).mean(),
    )
    assert _prdc_cli(capsys, tmp_path / "r.npy", tmp_path / "g.npy") == expected
    assert expected == pytest.approx((0.9, 0.95, 1.0233333333, 0.97))


def test_prdc_of_features_too_wide_for_one_scale_is_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "r.npy", rng.normal(size=(100, 4)) * 1e300)
    np.save(tmp_path / "g.npy", rng.normal(size=(100, 4)) * 1e-300)
    code = main(["prdc", str(tmp_path / "r.npy"), str(tmp_path / "g.npy"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "would be rounded on the way" in err


def _scaled_pair(tmp_path, scale):
    rng = np.random.default_rng(0)
    r, g = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) * 1.1 + 0.05
    np.save(tmp_path / "r.npy", r * scale)
    np.save(tmp_path / "g.npy", g * scale)
    return exact_fid(*np_stats(r), *np_stats(g)), tmp_path / "r.npy", tmp_path / "g.npy"


@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1e76, 1e77, 1e80, 1e120, 1e150])
def test_fid_of_float64_features_far_from_1(tmp_path, capsys, scale):
    # 1e77–1e150 ended in numpy's LinAlgError "Eigenvalues did not converge" (a 34-line
    # traceback, exit 1); 1e-150 gave 1.6e-299 where FID is 1.7e-301 (tr (Σ_r Σ_g)^½
    # underflowed to 0), exit 0. FID scales by the square of the features' factor.
    expected, r, g = _scaled_pair(tmp_path, scale)
    assert _fid(capsys, r, g) / scale**2 == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("scale", "match"),
    [
        (1e154, "co-moment of its rows is beyond float64"),
        (1e300, "co-moment of its rows is beyond float64"),
        (1e-160, "below float64's normal range"),
    ],
)
def test_fid_of_features_beyond_float64_is_one_line(tmp_path, capsys, scale, match):
    # 1e154: "the real statistics hold NaN or inf; recompute them", which recomputing does
    # not mend; 1e-160: variances of a few bits gave FID 1.6e-319, exit 0.
    _, r, g = _scaled_pair(tmp_path, scale)
    code = main(["fid", str(r), str(g), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1
    assert match in err
