import numpy as np
import pytest
import xarray as xr
import zarr

from shardeval.pipeline import DtypeError, ShapeError, StoreError, check_same_dim, open_features
from tests.conftest import write_zarr


@pytest.fixture
def x(rng):
    return rng.standard_normal((50, 4)).astype(np.float32)


def test_zarr_v3_array_with_default_and_given_shards(tmp_path, x):
    path = write_zarr(tmp_path / "a.zarr", x, chunk_rows=8, feature_extractor="inception-v3")
    src = open_features(path)
    assert (src.n, src.d, src.dtype) == (50, 4, np.float32)
    assert src.feature_extractor == "inception-v3"
    assert src.shards == 1  # whole stored chunks per shard, ~32 MiB: all 50 rows here
    src = open_features(path, shard_rows=7)
    assert src.shards == 8
    assert src.shard_offsets[:3] == [0, 7, 14]
    np.testing.assert_array_equal(src.array.compute(), x)


def test_zarr_v2_is_readable(tmp_path, x):
    arr = zarr.create_array(
        str(tmp_path / "v2.zarr"), shape=x.shape, chunks=(16, 4), dtype=x.dtype, zarr_format=2
    )
    arr[...] = x
    np.testing.assert_array_equal(open_features(str(tmp_path / "v2.zarr")).array.compute(), x)


def test_xarray_dataset_variable_is_found_by_dims(tmp_path, x):
    ds = xr.Dataset(
        {"features": (("sample", "feature"), x), "labels": (("sample",), np.arange(50))}
    )
    ds.to_zarr(tmp_path / "ds.zarr", consolidated=False)
    src = open_features(str(tmp_path / "ds.zarr"))
    assert src.name == "features"
    np.testing.assert_array_equal(src.array.compute(), x)


def test_group_needs_array_name_when_ambiguous(tmp_path, x):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("a", data=x)
    g.create_array("b", data=x[:, :2])
    with pytest.raises(StoreError, match="array=NAME"):
        open_features(str(tmp_path / "g.zarr"))
    assert open_features(str(tmp_path / "g.zarr"), array_name="b").d == 2
    with pytest.raises(StoreError, match="no array 'c'"):
        open_features(str(tmp_path / "g.zarr"), array_name="c")


def test_npy_and_npz(tmp_path, x):
    np.save(tmp_path / "f.npy", x)
    np.savez(tmp_path / "f.npz", feats=x)
    np.testing.assert_array_equal(open_features(str(tmp_path / "f.npy")).array.compute(), x)
    assert open_features(str(tmp_path / "f.npz")).name == "feats"
    np.savez(tmp_path / "s.npz", mu=x[0], sigma=np.eye(4))
    with pytest.raises(StoreError, match="holds statistics"):
        open_features(str(tmp_path / "s.npz"))


def test_fsspec_url(x):
    arr = zarr.open("memory://feats.zarr", mode="w", shape=x.shape, chunks=(16, 4), dtype=x.dtype)
    arr[...] = x
    np.testing.assert_array_equal(open_features("memory://feats.zarr").array.compute(), x)


@pytest.mark.parametrize(
    ("data", "err", "msg"),
    [
        (np.zeros((4, 3, 2), np.float32), ShapeError, "must be 2-D"),
        (np.zeros(5, np.float32), ShapeError, "must be 2-D"),
        (np.zeros((1, 3), np.float32), ShapeError, "at least 2"),
        (np.zeros((4, 3), bool), DtypeError, "integer or floating"),
        (np.zeros((4, 3), complex), DtypeError, "integer or floating"),
        (np.array([["a", "b"], ["c", "d"]]), DtypeError, "integer or floating"),
    ],
)
def test_bad_stores(tmp_path, data, err, msg):
    np.save(tmp_path / "bad.npy", data)
    with pytest.raises(err, match=msg):
        open_features(str(tmp_path / "bad.npy"))


def test_missing_store_and_bad_shard_rows(tmp_path, x):
    with pytest.raises(StoreError, match="does not exist"):
        open_features(str(tmp_path / "nope.zarr"))
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match="is a folder, not a feature store"):
        open_features(str(tmp_path / "empty.zarr"))
    np.save(tmp_path / "f.npy", x)
    with pytest.raises(ShapeError, match="positive"):
        open_features(str(tmp_path / "f.npy"), shard_rows=0)


def test_dimensions_must_match(tmp_path, x):
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x[:, :3])
    a, b = open_features(str(tmp_path / "a.npy")), open_features(str(tmp_path / "b.npy"))
    with pytest.raises(ShapeError, match=r"d=4.*d=3"):
        check_same_dim(a, b)


def test_numpy_files_are_read_by_their_bytes_not_their_names(tmp_path, x):
    # A .npy named .npz (and the reverse) was an AttributeError traceback: the name chose
    # the reader. The bytes decide: "\x93NUMPY" is an array, "PK\x03\x04" a zip archive.
    np.save(tmp_path / "array.npy", x)
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    np.savez(tmp_path / "archive.npz", feats=x)
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    np.save(tmp_path / "unnamed.npy", x)
    (tmp_path / "unnamed.npy").rename(tmp_path / "unnamed")
    for name in ("array.npz", "archive.npy", "unnamed"):
        np.testing.assert_array_equal(open_features(str(tmp_path / name)).array.compute(), x)
    assert open_features(str(tmp_path / "archive.npy")).name == "feats"
    with pytest.raises(StoreError, match=r"is a \.npy file, which holds one array"):
        open_features(str(tmp_path / "array.npz"), array_name="feats")


@pytest.mark.parametrize(
    "content", [b"a,b\n1,2\n", b"\x89HDF\r\n\x1a\n" + bytes(64), b"", b"\x80\x04K\x01."]
)
def test_a_file_that_is_neither_npy_nor_npz_is_one_clear_error(tmp_path, content):
    (tmp_path / "f.npy").write_bytes(content)
    with pytest.raises(StoreError, match=r"is neither a \.npy array nor a \.npz archive"):
        open_features(str(tmp_path / "f.npy"))


@pytest.mark.parametrize("name", ["feats.npy", "feats.npz"])
def test_a_zarr_folder_named_like_a_numpy_file_is_read_as_zarr(tmp_path, x, name):
    # A directory is a directory: it was refused ("cannot read ... as a numpy file: Is a
    # directory").
    write_zarr(tmp_path / name, x, chunk_rows=16)
    source = open_features(str(tmp_path / name))
    assert source.shards == 1
    np.testing.assert_array_equal(source.array.compute(), x)
