"""A store is read only as it is: complete, decodable, decoded as xarray decodes it, rows by
dimension name, any byte order. Every case here printed a wrong FID with exit 0, or a
traceback, before the reader checked it."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from shardeval.pipeline import StoreError, open_features
from shardeval.pipeline.errors import SuspectStoreWarning
from shardeval.workflows.cli import main
from tests.conftest import write_zarr
from tests.reference import exact_fid, np_stats


def _fid_cli(capsys, a, b, *extra):
    code = main(["fid", str(a), str(b), "--json", "-q", *map(str, extra)])
    out, err = capsys.readouterr()
    return code, (json.loads(out)["fid"]["fid"] if code == 0 else None), err


def _set_rows(path, rows):
    """Edit the declared row count in a Zarr v3 array's metadata, as a hand edit would."""
    meta_path = os.path.join(path, "zarr.json")
    with open(meta_path) as fh:
        meta = json.load(fh)
    meta["shape"][0] = rows
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)


@pytest.fixture
def pair(tmp_path, rng):
    real = (rng.standard_normal((1000, 8)) + 1).astype(np.float32)
    gen = (rng.standard_normal((1000, 8)) * 1.3).astype(np.float32)
    return real, gen, write_zarr(tmp_path / "gen.zarr", gen, chunk_rows=100)


def test_deleted_chunk_is_an_error_naming_it(tmp_path, capsys, pair):
    real, _, gen = pair
    path = write_zarr(tmp_path / "real.zarr", real, chunk_rows=100)
    os.remove(os.path.join(path, "c", "3", "0"))
    code, fid, err = _fid_cli(capsys, path, gen)
    assert (code, fid) == (2, None)
    assert err.count("\n") == 1
    assert "1 of 10 chunks are missing" in err
    assert "'c/3/0', rows 300-399" in err


def test_declared_larger_than_written_is_an_error(tmp_path, capsys, pair):
    real, _, gen = pair
    arr = zarr.create_array(
        str(tmp_path / "short.zarr"), shape=(1600, 8), chunks=(100, 8), dtype="float32"
    )
    arr[:1000] = real  # an interrupted writer: rows 1000-1599 never written
    code, _, err = _fid_cli(capsys, tmp_path / "short.zarr", gen)
    assert code == 2
    assert "6 of 16 chunks are missing" in err


def test_shape_enlarged_in_metadata_is_an_error(tmp_path, capsys, pair):
    real, _, gen = pair
    path = write_zarr(tmp_path / "real.zarr", real, chunk_rows=100)
    _set_rows(path, 1500)
    code, _, err = _fid_cli(capsys, path, gen)
    assert code == 2
    assert "5 of 15 chunks are missing" in err


def test_shape_enlarged_inside_the_last_chunk_warns(tmp_path, pair):
    # A listing cannot see it (the last chunk exists); the last row reads as the fill value.
    real, _, _ = pair
    path = write_zarr(tmp_path / "real.zarr", real[:950], chunk_rows=100)
    _set_rows(path, 1000)
    with pytest.warns(SuspectStoreWarning, match="last row .* equals the fill value"):
        open_features(path)


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_damaged_chunk_fails_naming_its_rows(tmp_path, capsys, pair, damage):
    real, _, gen = pair
    arr = zarr.create_array(
        str(tmp_path / "z.zarr"),
        shape=real.shape,
        chunks=(100, 8),
        dtype="float32",
        compressors=zarr.codecs.ZstdCodec(),
    )
    arr[...] = real
    chunk = tmp_path / "z.zarr" / "c" / "4" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    code, _, err = _fid_cli(capsys, tmp_path / "z.zarr", gen)
    assert code == 2
    assert err.count("\n") == 1
    assert "the chunk holding rows 400-499 cannot be read or decoded" in err


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_cf_packed_xarray_variable_is_decoded(tmp_path, capsys, pair, zarr_format):
    real, gen, gen_path = pair
    x = real.astype(np.float64)
    x[7, 3] = np.nan  # becomes _FillValue on disk, NaN again on read
    ds = xr.Dataset({"feat": (("sample", "feature"), x)})
    path = str(tmp_path / f"packed{zarr_format}.zarr")
    encoding = {
        "feat": {"dtype": "int16", "scale_factor": 1e-3, "add_offset": 1.0, "_FillValue": -32768}
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", zarr_format=zarr_format, encoding=encoding)
    decoded = xr.open_zarr(path)["feat"].values
    finite = np.isfinite(decoded).all(axis=1)
    code, _, err = _fid_cli(capsys, path, gen_path)
    assert code == 2
    assert "1 row(s) with NaN" in err
    code, fid, _ = _fid_cli(capsys, path, gen_path, "--nonfinite", "drop")
    assert code == 0
    assert fid == pytest.approx(exact_fid(*np_stats(decoded[finite]), *np_stats(gen)), rel=1e-6)


def test_variable_stored_feature_by_sample_is_read_by_dim_name(tmp_path, capsys, pair):
    real, gen, gen_path = pair
    ds = xr.Dataset({"feat": (("feature", "sample"), real.T.copy())})
    ds.to_zarr(str(tmp_path / "t.zarr"), mode="w", zarr_format=3, consolidated=False)
    source = open_features(str(tmp_path / "t.zarr"))
    assert (source.n, source.d) == (1000, 8)
    np.testing.assert_array_equal(source.array.compute(), real)
    _code, fid, _ = _fid_cli(capsys, tmp_path / "t.zarr", gen_path)
    assert fid == pytest.approx(exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6)


def test_big_endian_npy_and_zarr_v2_are_read(tmp_path, capsys, pair):
    real, gen, gen_path = pair
    np.save(tmp_path / "be.npy", real.astype(">f4"))
    arr = zarr.create_array(
        str(tmp_path / "be.zarr"), shape=real.shape, chunks=(100, 8), dtype=">f4", zarr_format=2
    )
    arr[...] = real
    expected = exact_fid(*np_stats(real), *np_stats(gen))
    for path in (tmp_path / "be.npy", tmp_path / "be.zarr"):
        code, fid, err = _fid_cli(capsys, path, gen_path)
        assert code == 0, err
        assert fid == pytest.approx(expected, rel=1e-6)


def test_wide_integers_are_not_cast_to_fp32(tmp_path, capsys, rng):
    # 1e10 + noise: fp32 keeps 7 digits, so a cast left tr Σ = 0 and FID = the mean term.
    base = 10**10
    a = base + rng.integers(-1000, 1000, (2000, 4))
    b = base + 50 + rng.integers(-1500, 1500, (2000, 4))
    np.save(tmp_path / "a.npy", a.astype(np.int64))
    np.save(tmp_path / "b.npy", b.astype(np.int64))
    code, fid, err = _fid_cli(capsys, tmp_path / "a.npy", tmp_path / "b.npy")
    assert code == 0, err
    assert fid == pytest.approx(exact_fid(*np_stats(a), *np_stats(b)), rel=1e-9)


@pytest.mark.parametrize("where", ["features", "ref"])
def test_truncated_npz_is_one_line(tmp_path, capsys, pair, where):
    real, _, gen = pair
    if where == "features":
        np.savez(tmp_path / "x.npz", features=real)
    else:
        np.savez(tmp_path / "x.npz", mu=real.mean(0), sigma=np.cov(real, rowvar=False))
    data = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "x.npz").write_bytes(data[: len(data) // 2])
    code, _, err = _fid_cli(capsys, tmp_path / "x.npz", gen)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("shardeval: error:")


def test_missing_chunk_in_a_group_member_is_found(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = group.create_array("x", shape=(300, 4), chunks=(100, 4), dtype="float32")
    arr[...] = 1.0
    shutil.rmtree(tmp_path / "g.zarr" / "x" / "c" / "1")
    with pytest.raises(StoreError, match="1 of 3 chunks are missing"):
        open_features(str(tmp_path / "g.zarr"), array_name="x")


def _sharded(path, shape, index_location="end", index_codecs=None):
    """A float32 Zarr v3 array of 100-row chunks in 400-row shards."""
    codecs = index_codecs or [zarr.codecs.BytesCodec(), zarr.codecs.Crc32cCodec()]
    return zarr.create_array(
        str(path),
        shape=shape,
        dtype="float32",
        chunks=(400, shape[1]),
        serializer=zarr.codecs.ShardingCodec(
            chunk_shape=(100, shape[1]),
            codecs=[zarr.codecs.BytesCodec(), zarr.codecs.ZstdCodec()],
            index_codecs=codecs,
            index_location=index_location,
        ),
        compressors=None,
    )


def test_chunks_never_written_inside_a_shard_are_an_error(tmp_path, capsys, pair):
    # The shard file exists once any of its chunks is written, so a listing sees a complete
    # store; rows 600-999 read as zeros and gave a wrong FID with exit 0 (and a warning).
    real, _, gen = pair
    arr = _sharded(tmp_path / "s.zarr", real.shape)
    arr[:600] = real[:600]  # an interrupted writer
    code, fid, err = _fid_cli(capsys, tmp_path / "s.zarr", gen)
    assert (code, fid) == (2, None)
    assert err.count("\n") == 1
    assert "4 of 10 chunks are missing (first: chunk (2, 0) of shard 'c/1/0', rows 600-699" in err


def test_a_shard_file_never_written_is_an_error_and_no_result(tmp_path, capsys, pair):
    # Shards 0 and 2 whole, shard 1 (rows 400-799) absent: read through, its rows are 400 rows
    # of the fill value inside a plausible FID. The API raises StoreError naming the shard and
    # returns nothing; the CLI prints one line and no report, exit 2.
    import shardeval as se

    real, _, gen = pair
    _sharded(tmp_path / "s.zarr", real.shape)[...] = real
    os.remove(tmp_path / "s.zarr" / "c" / "1" / "0")
    results = []
    with pytest.raises(StoreError) as info:
        results.append(se.fid(str(tmp_path / "s.zarr"), gen))
    assert results == []
    assert "4 of 10 chunks are missing (first: 'c/1/0', rows 400-499" in str(info.value)
    code, fid, err = _fid_cli(capsys, tmp_path / "s.zarr", gen)
    assert (code, fid) == (2, None)
    assert err.count("\n") == 1


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_complete_sharded_arrays_are_read_whatever_their_index_layout(
    tmp_path, capsys, pair, index_location, endian
):
    real, gen, gen_path = pair
    rows = 950  # the last shard runs past the array's edge: its chunks 10 and 11 never exist
    codecs = [zarr.codecs.BytesCodec(endian=endian)]
    arr = _sharded(tmp_path / "s.zarr", (rows, 8), index_location, codecs)
    arr[...] = real[:rows]
    code, fid, err = _fid_cli(capsys, tmp_path / "s.zarr", gen_path)
    assert code == 0, err
    assert fid == pytest.approx(exact_fid(*np_stats(real[:rows]), *np_stats(gen)), rel=1e-6)
    arr[400:500] = 0.0  # now a chunk of fill values inside a shard: zarr does not store it
    code, _, err = _fid_cli(capsys, tmp_path / "s.zarr", gen_path)
    assert code == 2
    assert "1 of 10 chunks are missing (first: chunk (0, 0) of shard 'c/1/0'" in err


def test_shard_shorter_than_its_index_is_an_error(tmp_path, capsys, pair):
    real, _, gen = pair
    _sharded(tmp_path / "s.zarr", real.shape)[...] = real
    (tmp_path / "s.zarr" / "c" / "2" / "0").write_bytes(b"\0" * 10)
    code, _, err = _fid_cli(capsys, tmp_path / "s.zarr", gen)
    assert code == 2
    assert err.count("\n") == 1
    assert "shard 'c/2/0' holds 10 bytes where its index alone takes" in err


def test_stale_consolidated_metadata_is_not_trusted(tmp_path, capsys, pair):
    # Consolidated when the array held 600 rows, then resized and filled: the consolidated copy
    # says 600, and reading through it gave the FID of the first 600 rows with exit 0.
    real, gen, gen_path = pair
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    group.create_array("features", shape=(600, 8), chunks=(100, 8), dtype="float32")[...] = real[
        :600
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Zarr notes consolidation is not in the v3 spec
        zarr.consolidate_metadata(str(tmp_path / "c.zarr"))
    arr = zarr.open_array(str(tmp_path / "c.zarr" / "features"), mode="a")
    arr.resize((1000, 8))
    arr[600:] = real[600:]
    code, fid, err = _fid_cli(capsys, tmp_path / "c.zarr", gen_path)
    assert code == 0, err
    assert fid == pytest.approx(exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6)


@pytest.mark.parametrize(
    ("dims", "transposed"),
    [(("feature", "row"), True), (("Embedding", "image"), True), (("n", "d"), False)],
)
def test_sample_axis_is_found_by_common_dimension_names(tmp_path, capsys, pair, dims, transposed):
    real, gen, gen_path = pair
    data = real.T.copy() if transposed else real
    xr.Dataset({"f": (dims, data)}).to_zarr(str(tmp_path / "t.zarr"), mode="w", consolidated=False)
    source = open_features(str(tmp_path / "t.zarr"))
    assert (source.n, source.d) == (1000, 8)
    _code, fid, _ = _fid_cli(capsys, tmp_path / "t.zarr", gen_path)
    assert fid == pytest.approx(exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6)


def test_dimension_names_that_point_both_ways_are_refused(tmp_path, pair):
    real, _, _ = pair
    xr.Dataset({"f": (("sample", "row"), real)}).to_zarr(
        str(tmp_path / "t.zarr"), mode="w", consolidated=False
    )
    with pytest.raises(StoreError, match="do not say which axis holds the samples"):
        open_features(str(tmp_path / "t.zarr"), array_name="f")


def test_other_variables_of_a_dataset_do_not_stand_in_the_way(tmp_path, pair):
    # A projection (component, feature) and labels (sample, class) beside the features: the
    # features are still found without --array.
    real, _, _ = pair
    ds = xr.Dataset(
        {
            "features": (("sample", "feature"), real),
            "pca": (("component", "feature"), real[:3]),
            "onehot": (("sample", "class"), np.zeros((1000, 2), np.float32)),
        }
    )
    ds.to_zarr(str(tmp_path / "ds.zarr"), mode="w", consolidated=False)
    source = open_features(str(tmp_path / "ds.zarr"))
    assert (source.name, source.n, source.d) == ("features", 1000, 8)
