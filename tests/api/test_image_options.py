"""The options of the metric commands and functions that take images: where the feature cache
is (an empty value is refused, never read as the default), ``verify`` (the images' bytes, not
their listing, decide reuse; the report says which decided), and bad images."""

import numpy as np
import pytest
from PIL import Image

import shardeval as se
from shardeval.pipeline.errors import ShardevalError
from shardeval.workflows.cli import main

pytestmark = pytest.mark.filterwarnings(
    "ignore::shardeval.pipeline.errors.SingularCovarianceWarning"
)


def _folder(root, n, seed, size=24):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / f"{i:02d}.png", compress_level=0
        )
    return str(root)


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
    assert main(["fid", real, gen, "--weights", weights, "--cache-root", "", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--cache-root" in err
    assert "empty" in err
    assert len(err.strip().splitlines()) == 1
    assert not home.exists()
    monkeypatch.setenv("SHARDEVAL_CACHE", "")
    assert main(["kid", real, gen, "--weights", weights, "-q"]) == 2
    err = capsys.readouterr().err
    assert "SHARDEVAL_CACHE" in err
    assert "empty" in err
    assert len(err.strip().splitlines()) == 1
    assert not home.exists()
