"""The options of the metric commands and functions that take images: where the feature cache
is (an empty value is refused, never read as the default), ``verify`` (the images' bytes, not
their listing, decide reuse; the report says which decided), and bad images."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import shardeval as se
from shardeval.pipeline.errors import ShardevalError
from shardeval.workflows.cli import main
from tests.conftest import png_folder

pytestmark = pytest.mark.filterwarnings(
    "ignore::shardeval.pipeline.errors.SingularCovarianceWarning"
)


def _folder(root, n, seed, size=24):
    return png_folder(root, n, seed, size, compress_level=0)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home and XDG cache of this test's own, so that a default cache is seen if used."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("SHARDEVAL_CACHE", raising=False)
    return tmp_path / "home" / ".cache" / "shardeval"


def test_an_empty_cache_root_is_refused(tmp_path, weights, home, capsys, monkeypatch):
    real, gen = _folder(tmp_path / "r", 3, 1), _folder(tmp_path / "g", 3, 2)
    with pytest.raises(ShardevalError, match=r"cache_root.*empty"):
        se.fid(real, gen, weights=weights, cache_root="")
    assert not home.exists()
    # the flag is refused as the command line is read: argparse exits 2
    with pytest.raises(SystemExit) as exited:
        main(["fid", real, gen, "--weights", weights, "--cache-root", "", "-q"])
    assert exited.value.code == 2
    flag_err = capsys.readouterr().err
    assert "--cache-root" in flag_err
    assert "empty" in flag_err
    assert not home.exists()
    monkeypatch.setenv("SHARDEVAL_CACHE", "")
    assert main(["kid", real, gen, "--weights", weights, "-q"]) == 2
    err = capsys.readouterr().err
    assert "SHARDEVAL_CACHE" in err
    assert "empty" in err
    assert len(err.strip().splitlines()) == 1
    assert not home.exists()
    # as every refused flag value: the command's usage, then the error naming the flag
    assert (
        flag_err.strip().splitlines()[-1].startswith("shardeval fid: error: argument --cache-root")
    )


def _rewrite_keeping_size_and_time(path, seed):
    """Another image in the file's place, of the same size and modification time: a listing
    (names, sizes, times) cannot tell."""
    st = os.stat(path)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path, compress_level=0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size


def _cache_entries(report):
    return {e["images"]: e for e in report.to_dict()["feature_cache"]}


def test_verify_on_the_metric_commands(tmp_path, weights, home, capsys):
    real, gen = _folder(tmp_path / "r", 4, 1), _folder(tmp_path / "g", 4, 2)
    options = {"weights": weights, "cache_root": str(tmp_path / "cache")}
    first = se.fid(real, gen, **options)
    assert {e["reused"] for e in _cache_entries(first).values()} == {False}
    _rewrite_keeping_size_and_time(os.path.join(gen, "02.png"), 99)
    fresh = str(tmp_path / "fresh.zarr")
    se.extract(gen, fresh, weights=weights)
    expected = float(se.fid(_cache_entries(first)[real]["entry"], fresh))
    # On its listing alone the stale entry is reused, and the report says so.
    listed = se.fid(real, gen, **options)
    assert float(listed) == float(first) != expected
    entry = _cache_entries(listed)[gen]
    assert (entry["reused"], entry["checked"]) == (True, "listing")
    assert "listing alone" in listed.summary()
    # verify: the bytes decide; the entry is extracted again, and the report says that too.
    verified = se.fid(real, gen, verify=True, **options)
    assert float(verified) == pytest.approx(expected, rel=1e-6)
    entry = _cache_entries(verified)[gen]
    assert (entry["checked"], entry["extracted_again"]) == ("bytes", True)
    assert "listing alone" not in verified.summary()
    argv = ["fid", real, gen, "--weights", weights, "--cache-root", options["cache_root"]]
    assert main([*argv, "--verify", "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fid"]["fid"] == pytest.approx(expected, rel=1e-6)
    assert {e["checked"] for e in data["feature_cache"]} == {"bytes"}
    assert {e["reused"] for e in data["feature_cache"]} == {True}
    # Every function that takes images takes it.
    for report in (
        se.kid(real, gen, verify=True, **options),
        se.cmmd(real, gen, verify=True, **options),
        se.prdc(real, gen, verify=True, k=2, pr_k=2, **options),
        se.metrics(real, gen, ["kid"], verify=True, **options),
        se.inception_score(gen, verify=True, **options),
    ):
        assert {e["checked"] for e in report.to_dict()["feature_cache"]} == {"bytes"}
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ShardevalError, match="verify applies to image inputs"):
        se.fid(x, x + 1, verify=True)


def _truncated_png(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_bad_images_in_the_metric_commands(tmp_path, weights, home, capsys):
    """A truncated image stops a metric command with the advice it can follow there
    (--skip-bad), and --skip-bad leaves it out, names it in the report, and is a cache entry
    of its own."""
    real, gen = _folder(tmp_path / "r", 4, 1), _folder(tmp_path / "g", 4, 2)
    _truncated_png(tmp_path / "g" / "01.png")
    cache = str(tmp_path / "cache")
    argv = ["fid", real, gen, "--weights", weights, "--cache-root", cache, "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "01.png" in err
    assert "--skip-bad" in err
    assert main([*argv, "--skip-bad", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fid"]["fid_n"] == 3
    (skipped,) = [e for e in data["feature_cache"] if e["skipped"]]
    assert [s["name"] for s in skipped["skipped"]] == ["01.png"]
    assert any("01.png" in w for w in data["warnings"])
    for name in ("real", "gen"):
        out = str(tmp_path / f"{name}.zarr")
        se.extract(str(tmp_path / name[0]), out, weights=weights, skip_bad=True)
    expected = float(se.fid(str(tmp_path / "real.zarr"), str(tmp_path / "gen.zarr")))
    assert data["fid"]["fid"] == pytest.approx(expected, rel=1e-9)
    report = se.kid(real, gen, weights=weights, cache_root=cache, skip_bad=True)
    assert "01.png" in report.summary()


def test_too_few_decodable_images_are_named_by_the_images(tmp_path, weights, home, capsys):
    # With --skip-bad and one decodable image, the message named the cache entry
    # ('…/features-8ccb….zarr' has 1 row(s)), not the images.
    real, gen = _folder(tmp_path / "r", 4, 1), _folder(tmp_path / "g", 3, 2)
    for name in ("01.png", "02.png"):
        _truncated_png(tmp_path / "g" / name)
    cache = str(tmp_path / "cache")
    argv = ["fid", real, gen, "--weights", weights, "--cache-root", cache, "--skip-bad", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"the images {gen!r} gave 1 decodable image (2 left out as unreadable with --skip-bad)"
    ) in err
    with pytest.raises(ShardevalError, match=r"with skip_bad\); at least 2 are needed"):
        se.fid(real, gen, weights=weights, cache_root=cache, skip_bad=True)
