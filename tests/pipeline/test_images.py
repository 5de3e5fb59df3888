"""Image sources: listing order per kind, conversion to RGB as Pillow's convert("RGB"), decoding
errors that name the file, the --skip-bad check, fingerprints."""

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ShardevalError
from pipeline.images import ImageError, ImageSourceError, decode_image, open_images, to_rgb


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


@pytest.fixture
def pixels(rng):
    return [rng.integers(0, 256, (6 + i, 5, 3), dtype=np.uint8) for i in range(5)]


def test_folder_recursive_sorted_by_relative_path(tmp_path, pixels):
    names = ["b.png", "a/z.JPG", "a.png", "a-b/c.webp", "a/b/c.bmp"]
    for name, px in zip(names, pixels, strict=True):
        fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP"}[
            name.rsplit(".")[-1].lower()
        ]
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format=fmt)
        _write(str(tmp_path / "imgs" / name), buf.getvalue())
    _write(str(tmp_path / "imgs" / "notes.txt"), b"not an image")
    src = open_images(tmp_path / "imgs")
    assert src.kind == "folder"
    assert src.names == ("a-b/c.webp", "a.png", "a/b/c.bmp", "a/z.JPG", "b.png")  # code points
    got = src.refs(range(len(src))).read(threads=3)
    assert [g.shape for g in got] == [pixels[names.index(n)].shape for n in src.names]
    np.testing.assert_array_equal(got[1], pixels[2])  # a.png: lossless round trip
    np.testing.assert_array_equal(got[2], pixels[4])  # BMP too


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ImageSourceError, match="holds no images"):
        open_images(tmp_path / "empty")
    with pytest.raises(ImageSourceError, match="do not exist"):
        open_images(tmp_path / "missing")


def test_zip_members_sorted(tmp_path, pixels):
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, px in zip(["d/2.png", "c.png", "d/1.PNG", "a.png"], pixels, strict=False):
            zf.writestr(name, _png(px))
        zf.writestr("meta.json", "{}")
        zf.writestr("dir/", "")
    src = open_images(path)
    assert (src.kind, src.names) == ("zip", ("a.png", "c.png", "d/1.PNG", "d/2.png"))
    np.testing.assert_array_equal(src.refs([2]).read()[0], pixels[2])


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_arr_0_rows_in_order(tmp_path, rng, compressed):
    images = rng.integers(0, 256, (7, 4, 3, 3), dtype=np.uint8)
    labels = np.arange(7)
    path = str(tmp_path / "samples.npz")
    (np.savez_compressed if compressed else np.savez)(path, images, labels)  # arr_0, arr_1
    src = open_images(path)
    assert src.kind == "array"
    assert len(src) == 7
    assert src.names[:2] == ("arr_0[0]", "arr_0[1]")
    got = src.refs([0, 1, 2, 5, 6]).read()
    np.testing.assert_array_equal(np.stack(got), images[[0, 1, 2, 5, 6]])


def test_npy_grayscale_and_rgba_convert_like_pillow(tmp_path, rng):
    gray = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    rgba = rng.integers(0, 256, (3, 5, 4, 4), dtype=np.uint8)
    for name, arr in (("g.npy", gray), ("a.npy", rgba)):
        np.save(tmp_path / name, arr)
        src = open_images(tmp_path / name)
        got = src.refs(range(3)).read()
        for g, a in zip(got, arr, strict=True):
            expected = np.asarray(Image.fromarray(a).convert("RGB"))  # L and RGBA images
            np.testing.assert_array_equal(g, expected)
            assert g.dtype == np.uint8
            assert g.shape == (5, 4, 3)


def test_files_convert_to_rgb(tmp_path, rng):
    gray = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).quantize(8)
    _write(str(tmp_path / "f" / "g.png"), _png(gray))
    _write(str(tmp_path / "f" / "r.png"), _png(rgba))
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    _write(str(tmp_path / "f" / "p.png"), buf.getvalue())
    src = open_images(tmp_path / "f")
    g, p, r = src.refs(range(3)).read()
    np.testing.assert_array_equal(g, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(r, rgba[:, :, :3])
    np.testing.assert_array_equal(p, np.asarray(palette.convert("RGB")))


def test_array_shapes_refused(tmp_path, rng):
    np.save(tmp_path / "f.npy", rng.random((2, 4, 4, 3)).astype(np.float32))
    np.save(tmp_path / "chw.npy", np.zeros((2, 3, 4, 5), np.uint8))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4, 3), np.uint8), b=np.zeros(2))
    with pytest.raises(ImageSourceError, match="uint8"):
        open_images(tmp_path / "f.npy")
    with pytest.raises(ImageSourceError, match=r"\(N, H, W, 3\)"):
        open_images(tmp_path / "chw.npy")
    with pytest.raises(ImageSourceError, match="arr_0 or the only array"):
        open_images(tmp_path / "two.npz")
    np.save(tmp_path / "cut.npy", np.zeros((4, 8, 8, 3), np.uint8))
    cut = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(cut[: len(cut) - 10])
    with pytest.raises(ImageSourceError, match="truncated"):
        open_images(tmp_path / "cut.npy")


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))


def test_tar_shards_by_shard_then_member(tmp_path, pixels):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "s-001.tar", [("b.png", _png(pixels[0])), ("a.png", _png(pixels[1]))])
    _tar(shards / "s-000.tar", [("z.png", _png(pixels[2])), ("x.json", b"{}")])
    expected = ("s-000.tar/z.png", "s-001.tar/a.png", "s-001.tar/b.png")
    for given in (shards, str(shards / "s-*.tar")):
        src = open_images(given)
        assert (src.kind, src.names) == ("tar", expected)
    got = src.refs([0, 1, 2]).read()
    for g, px in zip(got, [pixels[2], pixels[1], pixels[0]], strict=True):
        np.testing.assert_array_equal(g, px)
    single = open_images(shards / "s-001.tar")
    assert single.names == ("s-001.tar/a.png", "s-001.tar/b.png")
    with pytest.raises(ImageSourceError, match=r"matches no \.tar"):
        open_images(str(tmp_path / "none-*.tar"))


def test_folder_of_images_and_tars_is_ambiguous(tmp_path, pixels):
    _write(str(tmp_path / "m" / "a.png"), _png(pixels[0]))
    _tar(tmp_path / "m" / "s.tar", [("b.png", _png(pixels[1]))])
    with pytest.raises(ImageSourceError, match=r"both images and \.tar"):
        open_images(tmp_path / "m")


def test_truncated_image_names_the_file(tmp_path, pixels):
    data = _png(pixels[0])
    _write(str(tmp_path / "t" / "good.png"), _png(pixels[1]))
    _write(str(tmp_path / "t" / "sub" / "bad.png"), data[: len(data) // 2])
    src = open_images(tmp_path / "t")
    refs = src.refs(range(len(src)))
    with pytest.raises(ImageError) as info:
        refs.read(threads=2)
    message = str(info.value)
    assert "sub/bad.png" in message
    assert "--skip-bad" in message
    assert "\n" not in message
    assert isinstance(info.value, ShardevalError)
    bad = refs.check(threads=2)
    assert [src.names[i] for i, _ in bad] == ["sub/bad.png"]
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"garbage", "'not an image'")


def test_fingerprint_follows_names_and_sizes(tmp_path, pixels):
    for i in range(3):
        _write(str(tmp_path / "f" / f"{i}.png"), _png(pixels[i]))
    first = open_images(tmp_path / "f").fingerprint
    assert open_images(tmp_path / "f").fingerprint == first
    _write(str(tmp_path / "f" / "1.png"), _png(pixels[3]))  # another size
    assert open_images(tmp_path / "f").fingerprint != first


def test_to_rgb_shapes():
    assert to_rgb(np.zeros((2, 3), np.uint8)).shape == (2, 3, 3)
    assert to_rgb(np.zeros((2, 3, 1), np.uint8)).shape == (2, 3, 3)
    assert to_rgb(np.zeros((2, 3, 4), np.uint8)).shape == (2, 3, 3)


def test_damaged_zip_member_is_an_image_error(tmp_path, pixels):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", _png(pixels[0]))
        zf.writestr("b.png", _png(pixels[1]))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"IDAT", raw.index(b"b.png")) + 8  # inside b.png's pixel data
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    src = open_images(path)
    refs = src.refs(range(2))
    with pytest.raises(ImageError, match=r"'b\.png' in .*d\.zip.*cannot be read"):
        refs.read()
    assert [src.names[i] for i, _ in refs.check()] == ["b.png"]
