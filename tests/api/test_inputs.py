"""What the API functions take, checked at their boundary as the command line checks it: every
input is what it seems (byte order, symmetry, layout) or refused in words naming it."""

import warnings

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.errors import StatsFormatError
from tests.reference import exact_fid, exact_kid, np_stats


def _pair(rng, n=400, d=16):
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) * 1.1 + 0.05
    return a, b


# ---------------------------------------------------------------------------------------------
# byte order


def test_big_endian_float64_arrays_keep_their_digits(rng):
    # '>f8' is float64: its products must be float64, as a native array's are.
    a, b = _pair(rng)
    expected = exact_fid(*np_stats(a), *np_stats(b))
    big = float(se.fid(a.astype(">f8"), b.astype(">f8")))
    assert big == pytest.approx(expected, rel=1e-12)
    x, y = a[:60, :6], b[:50, :6]
    kid = float(se.kid(x.astype(">f8"), y.astype(">f8")))
    assert kid == pytest.approx(float(exact_kid(x, y)), rel=1e-12)


def test_big_endian_float64_rows_are_float64_in_the_kernels(rng):
    from shardeval.kernels.moments import shard_moments_numpy
    from shardeval.pipeline.io.stores import FeatureSource
    from shardeval.pipeline.pairwise.blocks import row_blocks

    x = rng.normal(size=(50, 7)) + 1e3
    _, mean, m2 = shard_moments_numpy(x.astype(">f8"))
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(m2, centred.T @ centred, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-15)
    import dask.array as da

    source = FeatureSource("big", da.from_array(x.astype(">f8"), chunks=(20, 7)))
    block = row_blocks(source, 20).read(0)
    assert (block.dtype.kind, block.dtype.itemsize) == ("f", 8)
    np.testing.assert_array_equal(block, x[:20])


# ---------------------------------------------------------------------------------------------
# statistics given in memory are checked as a statistics file is


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + np.eye(d)


def test_a_covariance_holding_one_triangle_is_refused(rng):
    d = 4
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    assert float(se.frechet_distance(m1, s1, m2, s2)) == pytest.approx(
        exact_fid(m1, s1, m2, s2), rel=1e-12
    )
    for bad in (np.triu(s1), s1 + np.triu(np.ones((d, d)), 1)):
        with pytest.raises(StatsFormatError, match="not symmetric"):
            se.frechet_distance(m1, bad, m2, s2)
        with pytest.raises(StatsFormatError, match="not symmetric"):
            se.frechet_distance(m1, s1, m2, bad)
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian

    rows = rng.normal(size=(300, d))
    with pytest.raises(StatsFormatError, match="not symmetric"):
        se.fid(Gaussian(m1, np.triu(s1), None, "asym"), rows)
    with pytest.raises(StatsFormatError, match="not symmetric"):
        se.fid(Moments(10, m1, np.triu(s1) * 9), rows)


def test_rounding_asymmetry_within_the_files_tolerance_is_symmetrised(rng):
    # The tolerance is the statistics files' (1e-5 of the largest entry): a covariance that
    # was computed, then rounded, reads as its symmetric part.
    from shardeval.pipeline.io.statsio import SYMMETRY_RTOL

    d = 5
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    nudge = np.zeros((d, d))
    nudge[0, 1] = 0.1 * SYMMETRY_RTOL * np.abs(s1).max()
    got = float(se.frechet_distance(m1, s1 + nudge, m2, s2))
    sym = s1 + 0.5 * (nudge + nudge.T)
    assert got == pytest.approx(exact_fid(m1, sym, m2, s2), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# metrics named as the command line names them


def test_metrics_takes_the_command_lines_comma_separated_names(rng):
    a, b = _pair(rng, 200, 4)
    as_list = se.metrics(a, b, ["fid", "kid"])
    as_text = se.metrics(a, b, "fid,kid")
    assert list(as_text.results) == ["fid", "kid"]
    assert float(as_text) == float(as_list)
    assert as_text["kid"] == as_list["kid"]
    assert float(se.metrics(a, b, " fid , kid ")) == float(as_list)
    with pytest.raises(se.OptionError, match=r"'fid,kidd'.*kidd"):
        se.metrics(a, b, "fid,kidd")


# ---------------------------------------------------------------------------------------------
# options are checked at the API as the command line checks them


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x, w: se.nll(x, dims=-1), "dims: expected a positive integer, got -1"),
        (lambda x, w: se.nll(x, dims=0), "dims: expected a positive integer, got 0"),
        (lambda x, w: se.nll(x, dims=2.5), "dims: expected a positive integer, got 2.5"),
        (lambda x, w: se.nll(x, dims=True), "dims: expected a positive integer, got True"),
        (lambda x, w: se.ess(x, reff=0), "reff: expected a positive finite number, got 0"),
        (lambda x, w: se.ess(x, reff=-1), "reff: expected a positive finite number, got -1"),
        (lambda x, w: se.ess(x, reff=np.nan), "reff: expected a positive finite number, got nan"),
        (lambda x, w: se.nll(iw=w, reff=np.inf), "reff: expected a positive finite number"),
        (lambda x, w: se.ess(x, reff="1"), "reff: expected a positive finite number, got '1'"),
        (lambda x, w: se.ess(x, shard_rows=0), "shard_rows: expected a positive integer"),
        (lambda x, w: se.ess(x, split_every=1), "split_every: expected an integer of at least 2"),
        (lambda x, w: se.ess(x, threads=-2), "threads: expected a positive integer"),
        (lambda x, w: se.ess(x, nonfinite="skip"), "nonfinite: expected one of error, drop"),
        (lambda x, w: se.ess(x, device="gpu"), "device: expected one of auto, cpu, cuda"),
        (lambda x, w: se.kid(w, w, precision="fp16"), "precision: expected one of fp32, fp64"),
        (lambda x, w: se.nll(w, parzen=w, bandwidth=-1.0), "bandwidth: expected a positive"),
        (lambda x, w: se.fid(w, w, batch_size=0), "batch_size: expected a positive integer"),
        (lambda x, w: se.metrics(w, w, "fid", shard_rows=1.5), "shard_rows: expected a positive"),
    ],
)
def test_options_are_checked_as_the_command_line_checks_them(call, match):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=50), rng.normal(size=(40, 6))
    with pytest.raises(se.OptionError, match=match):
        call(x, w)


@pytest.mark.parametrize("sigma", [np.inf, -np.inf, np.nan, float("inf")])
def test_a_float_option_that_is_not_finite_is_refused(sigma):
    # σ = inf passed "must be positive" and gave CMMD 0 for different sets (every kernel
    # value exp(0) = 1).
    from shardeval.pipeline.metrics.base import MetricOptionError

    w = np.random.default_rng(1).normal(size=(40, 6))
    with pytest.raises(MetricOptionError, match="'sigma': expected a positive finite number, got"):
        se.cmmd(w, w + 1, sigma=sigma)
    with pytest.raises(MetricOptionError, match="'sigma': expected a positive finite number, got"):
        se.metrics(w, w + 1, "cmmd", sigma=sigma)


def test_the_command_line_and_the_api_refuse_with_the_same_words(capsys):
    from shardeval.workflows.cli import main

    for flag, value, option in (("--reff", "-2", "reff"), ("--split-every", "1", "split_every")):
        with pytest.raises(SystemExit):
            main(["ess", "x.npy", flag, value])
        cli = capsys.readouterr().err
        with pytest.raises(se.OptionError) as caught:
            se.ess(np.zeros(3), **{option: int(value)})
        assert str(caught.value).split(": ", 1)[1].rsplit(",", 1)[0] in cli


# ---------------------------------------------------------------------------------------------
# inputs of every kind: they work, or one line says why


def test_dask_arrays_with_columns_split_across_chunks_are_read_whole(rng):
    import dask.array as da

    a, b = _pair(rng, 300, 8)
    expected = exact_fid(*np_stats(a), *np_stats(b))
    split = da.from_array(a, chunks=(100, 4))
    assert float(se.fid(split, b)) == pytest.approx(expected, rel=1e-12)
    assert float(se.kid(split, b)) == float(se.kid(a, b))


def test_dask_arrays_of_unknown_chunk_sizes_are_refused_in_words(rng):
    import dask.array as da

    a, b = _pair(rng, 300, 8)
    x = da.from_array(a, chunks=(100, 8))
    filtered = x[x[:, 0] > -10]
    with pytest.raises(se.ShapeError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        se.fid(filtered, b)
    assert float(se.fid(filtered.compute_chunk_sizes(), b)) == pytest.approx(
        exact_fid(*np_stats(a), *np_stats(b)), rel=1e-12
    )


def test_an_xarray_dataset_gives_its_variable(rng):
    import xarray as xr

    a, b = _pair(rng, 300, 8)
    expected = exact_fid(*np_stats(a), *np_stats(b))
    one = xr.Dataset({"f": (("sample", "feature"), a)})
    assert float(se.fid(one, b)) == pytest.approx(expected, rel=1e-12)
    transposed = xr.Dataset({"f": (("feature", "sample"), a.T)})
    assert float(se.fid(transposed, b)) == pytest.approx(expected, rel=1e-12)
    two = xr.Dataset({"f": (("sample", "feature"), a), "g": (("sample", "feature"), b)})
    with pytest.raises(se.StoreError, match=r"holding \['f', 'g'\].*array=NAME"):
        se.fid(two, b)
    other = xr.Dataset({"f": (("sample", "feature"), b)})
    assert float(se.fid(two, other, array="f")) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(se.StoreError, match="no variable 'h'"):
        se.fid(two, other, array="h")


def test_array_picks_the_variable_of_the_inputs_that_hold_several(tmp_path, rng):
    """«array» applies to every input that holds variables (a Dataset, a group, an .npz); an
    input of one array has nothing to pick, and is read as it is beside them. Before, a
    Dataset beside an array said "choose the features with array=NAME", and then
    «array='features'» was refused on the array ("this is an array"). Given where no input
    holds variables, it is refused naming what works."""
    import xarray as xr
    import zarr

    a, b = _pair(rng, 300, 8)
    expected = exact_fid(*np_stats(a), *np_stats(b))
    dims = ("sample", "feature")
    ds = xr.Dataset({"features": (dims, a), "other": (("sample", "k"), b[:, :3])})
    with pytest.raises(se.StoreError, match=r"choose one with array=NAME") as caught:
        se.fid(ds, b)
    assert "['NAME']" in str(caught.value)  # or pass the variable itself
    assert float(se.fid(ds, b, array="features")) == pytest.approx(expected, rel=1e-12)
    assert float(se.fid(b, ds, array="features")) == pytest.approx(expected, rel=1e-12)
    # Stores alike: a group beside a .npy (the command line's --array).
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("features", shape=a.shape, dtype="f8", dimension_names=dims)[...] = a
    group.create_array("other", shape=a.shape, dtype="f8", dimension_names=dims)[...] = -a
    np.save(tmp_path / "b.npy", b)
    g, npy = str(tmp_path / "g.zarr"), str(tmp_path / "b.npy")
    assert float(se.fid(g, npy, array="features")) == pytest.approx(expected, rel=1e-12)
    assert se.kid(g, npy, array="features").to_dict()["kid"]["kid"] == pytest.approx(
        se.kid(a, b).to_dict()["kid"]["kid"], rel=1e-12
    )
    got = se.metrics(g, npy, ["fid"], array="features").to_dict()["fid"]["fid"]
    assert got == pytest.approx(expected, rel=1e-12)
    # Where no input holds variables, «array» would apply to nothing: refused in words.
    with pytest.raises(se.ShapeError, match=r"array='features'.*one array.*leave array out"):
        se.fid(a, b, array="features")
    with pytest.raises(se.StoreError, match=r"holds one array.*leave array out"):
        se.fid(npy, npy, array="features")


def test_moments_count_rows_in_integers(rng):
    """Moments(2.0, ...) was taken and then refused as "Moments of 2.0 row(s); a covariance
    needs at least 2 rows": a count of rows is an integer, and the message says so."""
    from shardeval.pipeline.core.states import Moments

    x = rng.normal(size=(10, 3))
    mean, m2 = x.mean(axis=0), (x - x.mean(axis=0)).T @ (x - x.mean(axis=0))
    for n in (2.0, 10.0, True, "10", np.float64(10), None):
        with pytest.raises(StatsFormatError, match=r"integer") as caught:
            Moments(n, mean, m2)
        assert repr(n) in str(caught.value)
    m = Moments(np.int64(10), mean, m2)  # numpy's integers are counts too, kept as int
    assert type(m.n) is int
    assert m.n == 10
    assert float(se.fid(m, x + 1.0)) == pytest.approx(
        exact_fid(*np_stats(x), *np_stats(x + 1.0)), rel=1e-12
    )


def test_merge_stats_takes_a_list_of_paths(tmp_path, rng):
    """A bare path is a string, i.e. a sequence of characters: merge_stats("sA.zarr", out)
    looked for a file 's' ("'s' does not exist"); [1, 2] raised a raw TypeError. Both are
    refused in words naming what merge_stats takes."""
    x = rng.normal(size=(100, 3))
    paths = [str(tmp_path / f"s{i}.zarr") for i in range(2)]
    se.stats(x[:40], paths[0])
    se.stats(x[40:], paths[1])
    out = str(tmp_path / "out.zarr")
    for one in (paths[0], tmp_path / "s0.zarr"):
        with pytest.raises(StatsFormatError, match=r"one path.*statistics files.*a list"):
            se.merge_stats(one, out)
    from shardeval.pipeline.core.states import Moments

    for bad in ([1, 2], [paths[0], None], [paths[0], Moments.from_rows(x[40:])]):
        with pytest.raises(StatsFormatError, match=r"paths of statistics files"):
            se.merge_stats(bad, out)
    assert not (tmp_path / "out.zarr").exists()
    merged = se.merge_stats(paths, out)["moments"]
    assert merged.n == 100
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)


def test_statistics_are_told_from_features_in_words(rng):
    from shardeval.pipeline.core.states import Moments

    a, b = _pair(rng, 300, 8)
    with pytest.raises(StatsFormatError, match=r"is not statistics.*real_is_statistics"):
        se.fid(a, b, real_is_statistics=True)
    exact = exact_fid(*np_stats(a), *np_stats(b))
    assert float(se.fid(Moments.from_rows(a), b)) == pytest.approx(exact, rel=1e-10)
    for n in (1, 0):
        with pytest.raises(StatsFormatError, match=f"Moments of {n} row"):
            se.fid(Moments(n, a.mean(axis=0), np.zeros((8, 8))), b)
    with pytest.raises(se.StoreError, match=r"holds statistics, but kid needs the reference"):
        se.kid(Moments.from_rows(a), b)


def test_rows_without_features_are_refused_in_words(rng):
    with pytest.raises(se.ShapeError, match=r"\(10, 0\); its rows are empty"):
        se.fid(np.empty((10, 0)), rng.normal(size=(10, 3)))


def test_two_arrays_are_two_sources_whatever_their_id(tmp_path, rng):
    # Python reuses a freed object's id(): statistics of two arrays made one after the other
    # must not read as statistics of the same source when merged.
    import warnings

    paths = [str(tmp_path / f"s{i}.zarr") for i in range(2)]
    rows = rng.normal(size=(50, 3))
    se.stats(rows, paths[0])
    rows += 1.0  # other rows in the same object (the same id(), as a freed one's can be)
    se.stats(rows, paths[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        se.merge_stats(paths, str(tmp_path / "all.zarr"))
    # One array's statistics made twice are of the same rows: that warning stays.
    rows = rng.normal(size=(50, 3))
    se.stats(rows, str(tmp_path / "a.zarr"))
    se.stats(rows.copy(), str(tmp_path / "b.zarr"))
    with pytest.warns(UserWarning, match="record the same source"):
        se.merge_stats([str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")], str(tmp_path / "c"))


def test_kid_and_cmmd_of_identical_rows_do_not_depend_on_how_they_arrive(tmp_path, rng):
    # An array and its copy in memory (one content digest: one store) gave KID 0, a file and
    # its byte-identical copy the two-sample estimator (−0.31 here): one estimator whatever
    # the route, the unbiased two-sample one.
    import shutil

    from tests.reference import mp_cmmd

    x = rng.normal(size=(50, 4))
    a, b = str(tmp_path / "a.npy"), str(tmp_path / "b.npy")
    np.save(a, x)
    shutil.copy(a, b)
    k = (x @ x.T / 4 + 1) ** 3  # float64 numpy: K_xx = K_yy = K_xy, the cross sum with its diagonal
    float64 = 2 * (k.sum() - np.trace(k)) / (50 * 49) - 2 * k.sum() / 50**2
    kid = float(exact_kid(x, x))  # < 0: identical rows are no two independent samples
    assert kid == pytest.approx(float64, rel=1e-12)
    assert kid < 0
    cmmd_u = mp_cmmd(x, x, unbiased=True)
    routes = [(x, x.copy()), (x, x), (a, b), (a, a), (x, b)]
    for real, gen in routes:
        assert float(se.kid(real, gen)) == pytest.approx(kid, rel=1e-9)
        # subsets of every row: each a permutation of the set, so the same estimator
        assert float(se.kid(real, gen, subsets=2, subset_size=50)) == pytest.approx(kid, rel=1e-9)
        assert float(se.cmmd(real, gen, unbiased=True)) == pytest.approx(cmmd_u, rel=1e-6)
        with warnings.catch_warnings():  # 0 is right to its bound, not to 1e-5 of itself
            warnings.simplefilter("ignore", se.RoundingWarning)
            v = se.cmmd(real, gen).to_dict()["cmmd"]
        assert abs(v["cmmd"]) <= v["cmmd_rounding_bound"]  # the V-statistic of identical sets is 0
    with se.KID() as streamed:  # rows fed batch by batch: two work stores
        streamed.update(x, real=True)
        streamed.update(x)
        assert float(streamed.compute()) == pytest.approx(kid, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# reports and messages say what was done


def test_kid_and_cmmd_record_the_float64_products_they_take(rng):
    a, b = _pair(rng, 120, 4)
    assert se.kid(a, b).to_dict()["settings"]["precision"] == "fp64"
    assert se.cmmd(a, b).to_dict()["settings"]["precision"] == "fp64"
    assert se.prdc(a, b).to_dict()["settings"]["precision"] == "fp32"
    assert se.metrics(a, b, "kid,cmmd").to_dict()["settings"]["precision"] == "fp64"
    mixed = se.metrics(a, b, "fid,kid,prdc", precision="fp64").to_dict()["settings"]
    assert mixed["precision"] == {"fid": "fp64", "kid": "fp64", "prdc": "fp64"}
    mixed = se.metrics(a, b, "fid,kid,prdc").to_dict()["settings"]
    assert mixed["precision"] == {"fid": "fp32", "kid": "fp64", "prdc": "fp32"}


def test_a_seed_goes_to_the_metrics_it_means_something_to(rng, capsys, tmp_path):
    a, b = _pair(rng, 2000, 4)
    both = se.metrics(a, b, "fid_inf,kid", seed=3)
    assert both["fid_inf"]["fid_inf"] == float(se.fid_infinity(a, b, seed=3))
    assert both["fid_inf"]["fid_inf"] != float(se.fid_infinity(a, b, seed=4))
    assert both["kid"]["kid"] == float(se.kid(a, b))  # exact: no subsets, no seed
    subsets = {"subsets": 3, "subset_size": 100}
    drawn = se.metrics(a, b, "fid_inf,kid", seed=3, **subsets)
    assert drawn["kid"]["kid"] == float(se.kid(a, b, seed=3, **subsets))
    assert drawn["fid_inf"]["fid_inf"] == both["fid_inf"]["fid_inf"]
    with pytest.raises(se.ShardevalError, match="seed applies with subsets"):
        se.metrics(a, b, "fid,kid", seed=3)  # KID's alone: and it means nothing there
    from shardeval.workflows.cli import main

    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    argv = ["metrics", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--metrics"]
    assert main([*argv, "fid_inf,kid", "--seed", "3", "-q"]) == 0
    assert "FID" in capsys.readouterr().out


def test_encoder_options_without_images_say_what_images_are(rng):
    x = rng.integers(0, 256, (30, 3)).astype(np.uint8)  # features that happen to be uint8
    with pytest.raises(se.OptionError, match=r"weights applies to image inputs.*4-D.*no input"):
        se.fid(x, x, weights="inception.pth")


def test_a_report_reads_short_in_a_notebook_and_statistics_have_no_headline(tmp_path, rng):
    a, b = _pair(rng, 300, 8)
    stats = se.stats(a, str(tmp_path / "s.zarr"))
    text = repr(stats)
    assert "array" not in text
    assert len(text) < 200
    assert "metric='stats'" in text
    assert "n=300" in text
    with pytest.raises(TypeError, match=r"no headline number.*report\['moments'\]"):
        float(stats)
    assert stats["moments"].n == stats.to_dict()["n"] == 300
    fid = se.fid(a, b)
    assert repr(fid).startswith(f"Report(metric='fid', value={float(fid):.6g}")
    assert "n_real=300" in repr(fid)


def test_dir_lists_the_public_names_only():
    assert dir(se) == sorted(se.__all__)
    for name in dir(se):
        assert getattr(se, name) is not None


def test_a_folder_that_is_not_a_store_is_named_as_given(tmp_path, rng):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not features")
    with pytest.raises(se.StoreError) as caught:
        se.fid(str(folder), rng.normal(size=(20, 3)))
    message = str(caught.value)
    assert str(folder) in message
    assert "StorePath" not in message
    assert "is a folder, not a feature store" in message


@pytest.mark.filterwarnings("ignore::shardeval.pipeline.errors.SingularCovarianceWarning")
def test_eigenvalues_clamped_where_n_is_at_most_d_are_said_to_be_expected(rng):
    from shardeval.pipeline.fid.metrics import FID, rank_deficit

    d = 64
    a, b = rng.normal(size=(10, d)), rng.normal(size=(12, d))
    report = se.fid(a, b)
    # Σ_g's factor and the product matrix hold d − min(rank Σ_r, rank Σ_g) zeros together:
    # the larger side deficit, d − 10 + 1, and no clamping count can exceed it.
    expected = d - 10 + 1
    assert report.to_dict()["fid"]["fid_rank_deficit"] == expected
    count = report["fid"]["fid_eigenvalues_clamped"]
    assert count <= expected
    if count:  # how many of the zeros rounding puts below zero is the BLAS's business
        assert f"expected: n ≤ d leaves d − n + 1 zero eigenvalues ({expected:,} here)" in (
            report.summary()
        )
    assert rank_deficit(2000, 30, d) == d - 30 + 1
    assert rank_deficit(2000, 90, d) == 0

    def clamped_line(clamped, zeros):
        figures = dict.fromkeys(
            ("fid", "fid_mean_term", "fid_trace_term", "fid_trace_real", "fid_trace_gen"), 1.0
        )
        outputs = {
            **figures,
            "fid_trace_sqrt_product": 0.75,
            "fid_eigenvalues_clamped": clamped,
            "fid_clamped_max": 1e-12 if clamped else 0.0,
            "fid_rank_deficit": zeros,
        }
        return FID({}).summary_lines(outputs)[-1]

    assert "expected" in clamped_line(20, rank_deficit(2000, 30, d))
    assert "expected" not in clamped_line(20, rank_deficit(2000, 90, d))
    assert clamped_line(0, rank_deficit(2000, 30, d)) == "  eigenvalues clamped: 0"


@pytest.mark.filterwarnings("ignore:FID∞ is:UserWarning")
def test_fid_infinity_below_zero_is_published_with_its_reason(rng):
    # Identical sets: FID of the whole set is 0, with no k/N bias for the fit to remove, so
    # the intercept is about −slope/N. The number is the fit's (the paper's code does not
    # clip it either); the report says why it is below zero.
    same = rng.normal(size=(200, 8))
    report = se.fid_infinity(same, same)
    inf = report["fid_inf"]
    assert float(report) < 0
    assert inf["fid_inf_fid"] == pytest.approx(0.0, abs=1e-9)
    sizes, fids = np.array(inf["fid_inf_sizes"]), inf["fid_inf_fids"]
    intercept, slope = np.polynomial.polynomial.polyfit(1.0 / sizes, fids, 1)
    assert float(report) == pytest.approx(intercept, rel=1e-9)
    assert slope > 0
    (note,) = [w for w in report.to_dict()["warnings"] if "below 0" in w]
    assert "shares rows with REAL" in note
    assert "below 0" in report.summary()
    a, b = _pair(rng, 2000, 4)
    apart = se.fid_infinity(a, b + 1.0)
    assert float(apart) > 0
    assert not [w for w in apart.to_dict()["warnings"] if "below 0" in w]
