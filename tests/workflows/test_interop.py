"""Statistics on either side of `fid`, pytorch-fid files included, and merging statistics."""

import json

import numpy as np
import pytest

from shardeval.pipeline import Moments, load_stats, save_stats
from shardeval.workflows.cli import main
from tests.conftest import write_zarr
from tests.reference import exact_fid, np_stats, pytorch_fid_formula


def _fid(capsys, *inputs):
    code = main(["fid", *map(str, inputs), "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def data(rng):
    a = (rng.normal(size=(1500, 6)) @ rng.normal(size=(6, 6)) + 1).astype(np.float32)
    b = (rng.normal(size=(1200, 6)) * 1.4).astype(np.float32)
    return a, b


def test_two_pytorch_fid_files(tmp_path, capsys, data):
    a, b = data
    stats = [np_stats(a), np_stats(b)]
    for name, (mu, sigma) in zip(("a", "b"), stats, strict=True):
        np.savez(tmp_path / f"{name}.npz", mu=mu, sigma=sigma)  # no n: their layout
    report = _fid(capsys, tmp_path / "a.npz", tmp_path / "b.npz")
    assert report["fid"]["fid"] == pytest.approx(
        pytorch_fid_formula(*stats[0], *stats[1]), rel=1e-6
    )
    assert report["inputs"]["real"]["statistics"] == str(tmp_path / "a.npz")
    assert report["inputs"]["gen"]["statistics"] == str(tmp_path / "b.npz")
    assert report["engine"] == {"scheduler": "none (statistics only)"}


def test_any_mix_of_features_and_statistics(tmp_path, capsys, data):
    a, b = data
    pa, pb = write_zarr(tmp_path / "a.zarr", a), write_zarr(tmp_path / "b.zarr", b)
    save_stats(tmp_path / "a-stats.zarr", Moments.from_rows(a))
    save_stats(tmp_path / "b-stats.npz", Moments.from_rows(b))
    expected = exact_fid(*np_stats(a), *np_stats(b))
    for real, gen in [
        (pa, pb),
        (tmp_path / "a-stats.zarr", pb),
        (pa, tmp_path / "b-stats.npz"),
        (tmp_path / "a-stats.zarr", tmp_path / "b-stats.npz"),
    ]:
        assert _fid(capsys, real, gen)["fid"]["fid"] == pytest.approx(expected, rel=1e-6)


def test_options_that_cannot_apply_to_two_statistics_files(tmp_path, capsys, data):
    a, b = data
    save_stats(tmp_path / "a.npz", Moments.from_rows(a))
    save_stats(tmp_path / "b.npz", Moments.from_rows(b))
    code = main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--shard-rows", "9"])
    assert code == 2
    assert "--shard-rows applies to feature stores" in capsys.readouterr().err


def test_stats_merge(tmp_path, capsys, data):
    a, _ = data
    parts = [a[:400], a[400:1100], a[1100:]]
    paths = []
    for i, part in enumerate(parts):
        path = tmp_path / f"p{i}.zarr"
        assert (
            main(["stats", write_zarr(tmp_path / f"x{i}.zarr", part), "-o", str(path), "-q"]) == 0
        )
        paths.append(str(path))
    assert main(["stats", "merge", *paths, "-o", str(tmp_path / "all.npz")]) == 0
    merged = load_stats(tmp_path / "all.npz")
    mean, cov = np_stats(a)
    assert merged.n == 1500
    np.testing.assert_allclose(merged.mean, mean, rtol=1e-6)  # fp32 products per shard
    np.testing.assert_allclose(merged.covariance(), cov, rtol=1e-6, atol=1e-9)
    capsys.readouterr()


@pytest.mark.parametrize("problem", ["no n", "twice", "extractors", "dims", "engine option"])
def test_stats_merge_refuses(tmp_path, capsys, data, problem):
    a, b = data
    one = save_stats(tmp_path / "one.zarr", Moments.from_rows(a[:500]), {"feature_extractor": "A"})
    if problem == "no n":
        other = str(tmp_path / "bare.npz")
        np.savez(other, mu=a.mean(0), sigma=np.cov(a, rowvar=False))
    elif problem == "twice":
        other = one
    elif problem == "extractors":
        other = save_stats(
            tmp_path / "o.zarr", Moments.from_rows(a[500:]), {"feature_extractor": "B"}
        )
    elif problem == "dims":
        other = save_stats(tmp_path / "o.zarr", Moments.from_rows(b[:, :4]))
    else:
        other = save_stats(tmp_path / "o.zarr", Moments.from_rows(a[500:]))
    extra = ["--shard-rows", "10"] if problem == "engine option" else []
    code = main(["stats", "merge", one, other, "-o", str(tmp_path / "m.zarr"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1
    assert not (tmp_path / "m.zarr").exists()


def test_merging_statistics_of_one_source_twice_warns(tmp_path, capsys, data):
    # Two statistics of the same store (one copied): the merge counted its rows twice, silently.
    import shutil

    a, _ = data
    store = write_zarr(tmp_path / "x.zarr", a)
    assert main(["stats", store, "-o", str(tmp_path / "s.zarr"), "-q"]) == 0
    shutil.copytree(tmp_path / "s.zarr", tmp_path / "copy.zarr")
    capsys.readouterr()
    argv = [
        "stats",
        "merge",
        tmp_path / "s.zarr",
        tmp_path / "copy.zarr",
        "-o",
        tmp_path / "m.zarr",
    ]
    assert main([str(p) for p in argv]) == 0
    err = capsys.readouterr().err
    assert "record the same source" in err
    assert "counts those rows twice" in err


def test_a_summary_of_two_statistics_files_says_nothing_ran_on_an_engine(tmp_path, capsys, data):
    # It said "on none (statistics only) scheduler (None threads)".
    a, b = data
    save_stats(tmp_path / "a.npz", Moments.from_rows(a))
    save_stats(tmp_path / "b.zarr", Moments.from_rows(b))
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.zarr"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "s (statistics only: nothing computed on an engine)" in out
    assert "None threads" not in out
