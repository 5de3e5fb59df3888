"""``--per-sample OUT`` (prdc, authpct, metrics) and ``se.save_per_sample``: each generated
row's values as a Zarr group, row for row with the generated store, its names copied in, with
what each array is and how it was made; an OUT that exists or holds something else refused in
one line, exit code 2, nothing written."""

import json
import os

import numpy as np
import pytest
import zarr
from scipy.spatial.distance import cdist

import shardeval as se
from shardeval.workflows.cli import main
from tests.pipeline.test_realism import realism_reference


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A reference (.npy) and a generated set in a Zarr group with ``names``, as an extraction
    store holds them: the image of each row."""
    tmp = tmp_path_factory.mktemp("per-sample")
    rng = np.random.default_rng(12)
    real = rng.normal(size=(400, 6)).astype(np.float32)
    gen = (rng.normal(size=(300, 6)) * 1.4).astype(np.float32)
    gen[:20] = real[:20]  # copies of reference rows
    np.save(tmp / "real.npy", real)
    group = zarr.create_group(str(tmp / "gen.zarr"))
    group.create_array(
        "features", shape=gen.shape, dtype="float32", chunks=(70, 6),
        dimension_names=("sample", "feature"),
    )[...] = gen  # fmt: skip
    names = np.array([f"sample-{i:05d}.png" for i in rng.permutation(300)])
    group.create_array(
        "names", shape=(300,), dtype=str, chunks=(300,), dimension_names=("sample",)
    )[...] = names.astype(object)
    return {"tmp": tmp, "real": tmp / "real.npy", "gen": tmp / "gen.zarr", "x": real, "y": gen,
            "names": names}  # fmt: skip


def test_prdc_writes_each_rows_realism_beside_its_name(capsys, stores):
    out = stores["tmp"] / "realism.zarr"
    code, _, err = _run(capsys, "prdc", stores["real"], stores["gen"], "--per-sample", out)
    assert code == 0, err
    assert f"per-sample values written to {out}" in err
    group = zarr.open_group(str(out), mode="r")
    assert sorted(group) == ["names", "prdc_realism"]
    assert group["names"][:].tolist() == stores["names"].tolist()
    want = realism_reference(stores["x"], stores["y"])
    np.testing.assert_allclose(group["prdc_realism"][:], want, rtol=1e-13)
    # The least realistic rows, by name: the lookup docs/metrics.md shows.
    order = np.argsort(group["prdc_realism"][:])[:5]
    assert group["names"][:][order].tolist() == stores["names"][np.argsort(want)[:5]].tolist()
    attrs = group.attrs
    assert attrs["format"] == "shardeval-per-sample"
    assert attrs["rows"] == 300
    assert attrs["metric"] == "prdc"
    assert attrs["options"]["prdc"]["pr_k"] == 3
    assert attrs["inputs"]["gen"]["source"] == str(stores["gen"])
    assert "features_made_by" in attrs
    assert "versions" in attrs
    assert attrs["names_from"] == f"{stores['gen']} (its names array)"
    array = group["prdc_realism"].attrs
    assert array["metric"] == "prdc"
    assert "realism" in array["description"]


def test_authpct_writes_the_nearest_training_rows_and_the_flags(capsys, stores):
    out = stores["tmp"] / "nearest.zarr"
    report = stores["tmp"] / "authpct.json"
    argv = ["authpct", stores["real"], stores["gen"], "--per-sample", out, "--out", report]
    code, _, err = _run(capsys, *argv, "-q")
    assert code == 0, err
    group = zarr.open_group(str(out), mode="r")
    sq = cdist(stores["y"].astype(np.float64), stores["x"].astype(np.float64), "sqeuclidean")
    index = np.argmin(sq, axis=1)
    np.testing.assert_array_equal(group["authpct_nearest_index"][:], index)
    np.testing.assert_allclose(
        group["authpct_nearest_distance"][:], np.sqrt(sq[np.arange(300), index]), rtol=1e-13
    )
    authentic = group["authpct_authentic"][:]
    assert authentic.dtype == bool
    assert not authentic[:20].any()  # copies are never authentic
    written = json.loads(report.read_text())
    assert written["authpct"]["authpct"] == pytest.approx(100 * authentic.mean())
    assert written["authpct"]["authpct_authentic"] == authentic.tolist()
    assert group["names"][:].tolist() == stores["names"].tolist()


def _refused(capsys, *argv, match):
    code, out, err = _run(capsys, *argv, "-q")
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith("shardeval: error: "), err
    assert match in err, err
    assert out == ""


def _listing(path):
    found = (os.path.join(d, f) for d, _, files in os.walk(path) for f in files)
    return sorted(os.path.relpath(p, path) for p in found)


@pytest.mark.parametrize("command", ["prdc", "authpct"])
def test_an_output_that_exists_or_is_something_else_is_refused_and_nothing_written(
    capsys, stores, command
):
    tmp = stores["tmp"]
    base = [command, stores["real"], stores["gen"]]
    report = tmp / f"refused-{command}.json"
    # Something else: a file, a feature store, a folder of other files.
    other = tmp / f"notes-{command}.txt"
    other.write_text("mine\n")
    folder = tmp / f"folder-{command}"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    for target in (other, folder, stores["gen"]):
        before = _listing(target) if target.is_dir() else target.read_text()
        _refused(
            capsys, *base, "--per-sample", target, "--out", report, "--overwrite",
            match="is not a shardeval per-sample group",
        )  # fmt: skip
        assert (_listing(target) if target.is_dir() else target.read_text()) == before
    # Its own kind, without --overwrite.
    ours = tmp / f"ours-{command}.zarr"
    assert _run(capsys, *base, "--per-sample", ours, "-q")[0] == 0
    before = _listing(ours)
    _refused(capsys, *base, "--per-sample", ours, "--out", report, match="pass --overwrite")
    assert _listing(ours) == before
    # Inside an input, or where the report goes.
    _refused(
        capsys, *base, "--per-sample", stores["gen"] / "rows.zarr", match="is inside the input"
    )
    assert not (stores["gen"] / "rows.zarr").exists()
    twice = tmp / f"twice-{command}"
    _refused(capsys, *base, "--per-sample", twice, "--out", twice, match="both name")
    assert not report.exists()
    assert not twice.exists()
    # Replaced with --overwrite: the same values again.
    assert _run(capsys, *base, "--per-sample", ours, "--overwrite", "-q")[0] == 0
    assert _listing(ours) == before


def test_the_api_returns_and_writes_the_arrays(tmp_path, stores):
    report = se.prdc(str(stores["real"]), str(stores["gen"]), per_sample=True)
    arrays = se.per_sample_arrays(report)
    assert list(arrays) == ["prdc_realism"]
    assert arrays["prdc_realism"] is report["prdc"]["prdc_realism"]
    written = se.save_per_sample(report, tmp_path / "rows.zarr")
    group = zarr.open_group(written, mode="r")
    np.testing.assert_array_equal(group["prdc_realism"][:], arrays["prdc_realism"])
    assert group["names"][:].tolist() == stores["names"].tolist()
    with pytest.raises(se.ShardevalError, match="pass overwrite=True"):
        se.save_per_sample(report, tmp_path / "rows.zarr")
    plain = se.prdc(str(stores["real"]), str(stores["gen"]))
    assert se.per_sample_arrays(plain) == {}
    with pytest.raises(se.OptionError, match="holds no per-sample values"):
        se.save_per_sample(plain, tmp_path / "none.zarr")
    assert not (tmp_path / "none.zarr").exists()
