"""Image sources: listing order per kind, conversion to RGB as Pillow's convert("RGB"), decoding
errors that name the file, the --skip-bad check, fingerprints."""

import contextlib
import io
import os
import tarfile
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from shardeval.pipeline.errors import ShardevalError
from shardeval.pipeline.images.sources import (
    ImageError,
    ImageSourceError,
    decode_image,
    open_images,
    to_rgb,
)


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
    assert "skip_bad=True" in message  # a Python argument: the CLI words it as its flag
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


# --- hostile inputs: repeated archive names, linked folders, macOS metadata, dangling links --


@contextlib.contextmanager
def _quiet_duplicates():
    """zipfile warns when it writes a second member of one name, which these tests mean to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        yield


def test_zip_members_of_one_name_are_each_read_by_their_own_entry(tmp_path, pixels):
    # A read by name returned the last 'a.png' for both rows and never the first.
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf, _quiet_duplicates():
        for name, px in (("a.png", pixels[0]), ("b.png", pixels[1]), ("a.png", pixels[2])):
            zf.writestr(name, _png(px))
    src = open_images(path)
    assert src.names == ("a.png", "a.png#2", "b.png")  # archive order among one name
    got = src.refs(range(3)).read(threads=2)
    for g, px in zip(got, [pixels[0], pixels[2], pixels[1]], strict=True):
        np.testing.assert_array_equal(g, px)
    np.testing.assert_array_equal(src.refs([1]).read()[0], pixels[2])  # one entry alone too


def test_a_changed_entry_of_a_repeated_name_changes_the_fingerprint(tmp_path, pixels):
    def fingerprint(first, second):
        path = tmp_path / "dup.zip"
        path.unlink(missing_ok=True)
        with zipfile.ZipFile(path, "w") as zf, _quiet_duplicates():
            zf.writestr("a.png", _png(first))
            zf.writestr("a.png", _png(second))
        return open_images(path).fingerprint

    base = fingerprint(pixels[0], pixels[1])
    assert fingerprint(pixels[0], pixels[1]) == base
    assert fingerprint(pixels[3], pixels[1]) != base  # the first entry changed
    assert fingerprint(pixels[0], pixels[3]) != base  # the second entry changed
    assert fingerprint(pixels[1], pixels[0]) != base  # the two swapped


def test_a_bad_member_of_a_repeated_name_is_named_as_found_in_the_zip(tmp_path, pixels):
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf, _quiet_duplicates():
        zf.writestr("x/a.png", _png(pixels[0]))
        zf.writestr("x/a.png", b"not a png")
    src = open_images(path)
    [(index, problem)] = src.refs(range(2)).check()
    assert src.names[index] == "x/a.png#2"
    assert "'x/a.png#2' (member 2 of those named 'x/a.png') in " in problem
    assert "dup.zip" in problem


def test_tar_members_of_one_name_stay_distinct(tmp_path, pixels):
    _tar(tmp_path / "s.tar", [("a.png", _png(pixels[0])), ("a.png", _png(pixels[1]))])
    src = open_images(tmp_path / "s.tar")
    assert src.names == ("s.tar/a.png", "s.tar/a.png#2")
    got = src.refs(range(2)).read()
    np.testing.assert_array_equal(got[0], pixels[0])
    np.testing.assert_array_equal(got[1], pixels[1])


def _linked_samples(tmp_path, pixels):
    """samples/own.png and samples/more -> ../pool, a folder of 4 images outside samples."""
    for i in range(4):
        _write(str(tmp_path / "pool" / f"{i}.png"), _png(pixels[i]))
    _write(str(tmp_path / "samples" / "own.png"), _png(pixels[4]))
    os.symlink(os.path.join("..", "pool"), tmp_path / "samples" / "more")
    return tmp_path / "samples"


def test_linked_folders_are_followed(tmp_path, pixels):
    # The linked folder was skipped without a word: 1 image of 5.
    src = open_images(_linked_samples(tmp_path, pixels))
    assert src.names == ("more/0.png", "more/1.png", "more/2.png", "more/3.png", "own.png")
    got = src.refs(range(5)).read()
    for g, px in zip(got, pixels, strict=True):
        np.testing.assert_array_equal(g, px)


def test_links_back_to_a_walked_folder_are_not_entered_again(tmp_path, pixels):
    samples = _linked_samples(tmp_path, pixels)
    os.symlink(".", samples / "loop")  # an ancestor: would loop forever
    os.symlink(tmp_path, samples / "up")  # the parent: holds samples and pool, both walked
    os.symlink(os.path.join("..", "pool"), samples / "again")  # a second path to pool
    src = open_images(samples)
    # Each real folder once, named by the first path of the sorted walk that reaches it.
    assert src.names == (
        "again/0.png",
        "again/1.png",
        "again/2.png",
        "again/3.png",
        "own.png",
    )


def test_macos_metadata_is_not_an_image(tmp_path, pixels):
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # an AppleDouble header
    zpath = tmp_path / "mac.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("imgs/a.png", _png(pixels[0]))
        zf.writestr("__MACOSX/imgs/._a.png", junk)
        zf.writestr("imgs/._b.png", junk)
    _write(str(tmp_path / "dir" / "a.png"), _png(pixels[0]))
    _write(str(tmp_path / "dir" / "._a.png"), junk)
    _write(str(tmp_path / "dir" / "__MACOSX" / "a.png"), _png(pixels[1]))
    _tar(
        tmp_path / "t.tar",
        [("a.png", _png(pixels[0])), ("._a.png", junk), ("__MACOSX/._a.png", junk)],
    )
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "s.tar", [("a.png", _png(pixels[0]))])
    _write(str(shards / "._s.tar"), junk)
    for location, names in (
        (zpath, ("imgs/a.png",)),
        (tmp_path / "dir", ("a.png",)),
        (tmp_path / "t.tar", ("t.tar/a.png",)),
        (shards, ("s.tar/a.png",)),
    ):
        src = open_images(location)
        assert src.names == names
        np.testing.assert_array_equal(src.refs([0]).read()[0], pixels[0])


def test_a_dangling_link_is_a_bad_image_not_a_broken_source(tmp_path, pixels):
    # The listing stopped on it ("cannot be read"), with or without skipping bad images.
    _write(str(tmp_path / "f" / "a.png"), _png(pixels[0]))
    _write(str(tmp_path / "f" / "c.png"), _png(pixels[1]))
    os.symlink(tmp_path / "gone.png", tmp_path / "f" / "b.png")
    src = open_images(tmp_path / "f")
    assert src.names == ("a.png", "b.png", "c.png")
    [(index, problem)] = src.unreadable
    assert index == 1
    assert "b.png" in problem
    assert "symbolic link to" in problem
    assert "gone.png" in problem
    refs = src.refs(range(3))
    assert refs.check() == [(1, problem)]
    with pytest.raises(ImageError, match=r"b\.png' cannot be read \(a symbolic link"):
        refs.read()
    first = src.fingerprint
    _write(str(tmp_path / "gone.png"), _png(pixels[2]))  # the target is back: a change
    mended = open_images(tmp_path / "f")
    assert (mended.unreadable, mended.fingerprint != first) == ((), True)


def test_a_folder_that_cannot_be_listed_is_an_error(tmp_path, pixels, monkeypatch):
    # os.walk skipped it without a word (as it did a linked folder).
    _write(str(tmp_path / "f" / "a.png"), _png(pixels[0]))
    _write(str(tmp_path / "f" / "locked" / "b.png"), _png(pixels[1]))
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(ImageSourceError, match=r"locked' under .* cannot be listed"):
        open_images(tmp_path / "f")


def test_reasons_name_the_image_and_are_readable(tmp_path, pixels):
    # A reason read "cannot identify image file <_io.BytesIO object at 0x7f...>".
    _write(str(tmp_path / "f" / "a.png"), _png(pixels[0]))
    _write(str(tmp_path / "f" / "junk.png"), b"garbage")
    _write(str(tmp_path / "f" / "cut.png"), _png(pixels[1])[:80])
    src = open_images(tmp_path / "f")
    problems = dict(src.refs(range(3)).check())
    assert set(problems) == {1, 2}  # a.png, cut.png, junk.png in order
    for index, problem in problems.items():
        assert str(tmp_path / "f" / src.names[index]) in problem
        assert " object at 0x" not in problem
    assert "not in an image format Pillow can identify" in problems[2]
    with pytest.raises(ImageError) as info:
        decode_image(b"garbage", "'x.png'")
    assert " object at 0x" not in str(info.value)


def test_a_fifo_named_like_an_image_is_a_bad_image_never_opened(tmp_path, pixels):
    # Opening it waited for a writer for ever, even with skip_bad (the extraction hung).
    _write(str(tmp_path / "f" / "a.png"), _png(pixels[0]))
    os.mkfifo(tmp_path / "f" / "p.png")
    src = open_images(tmp_path / "f")
    [(index, problem)] = src.unreadable
    assert index == 1
    assert "p.png' cannot be read (a FIFO, not a regular file)" in problem
    refs = src.refs(range(2))
    assert refs.check() == [(1, problem)]  # returns: nothing was opened


def test_a_loop_of_links_is_named_as_a_loop(tmp_path):
    os.makedirs(tmp_path / "f")
    os.symlink("c.png", tmp_path / "f" / "b.png")
    os.symlink("b.png", tmp_path / "f" / "c.png")
    src = open_images(tmp_path / "f")
    assert len(src.unreadable) == 2
    assert all("a loop of symbolic links" in problem for _, problem in src.unreadable)


def _png16_rgb(pixels):
    """A 16-bit RGB PNG of ``pixels`` ((H, W, 3) uint16), written by hand: Pillow cannot
    write one."""
    import struct
    import zlib

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))


def test_sixteen_bit_pngs_and_exif_orientation_are_decoded_as_pytorch_fid_does():
    """pytorch-fid and clean-fid read images as ``Image.open(path).convert("RGB")``, and so do
    we, so that features compare with theirs: a 16-bit grayscale PNG is clipped at 255, a
    16-bit RGB PNG keeps the high byte of each value, and an EXIF orientation is not applied
    (the pixels as stored)."""
    gray = np.array([[0, 200, 255, 256, 1000, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), "gray16.png")
    expected = np.minimum(gray, 255).astype(np.uint8)
    np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=2))
    rgb = np.array([[[0, 256, 65535], [1000, 300, 12345]]], dtype=np.uint16)
    decoded = decode_image(_png16_rgb(rgb), "rgb16.png")
    np.testing.assert_array_equal(decoded, (rgb >> 8).astype(np.uint8))
    # A JPEG stored 2 x 3 with orientation 6 ("rotate 90° to view"): read as stored.
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif)
    assert Image.open(io.BytesIO(buffer.getvalue())).getexif()[0x0112] == 6
    assert decode_image(buffer.getvalue(), "rotated.jpg").shape == (2, 3, 3)
