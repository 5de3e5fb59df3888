"""The feature cache (random-weights Inception, small images, CPU): its features equal an
extraction's, a second call runs no encoder whatever the batch size, changed images make a new
entry, where the cache is, what is refused, ``verify``; and telling images from stores."""

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
import zarr
from PIL import Image

import shardeval.kernels.encoders as encoders
import shardeval.pipeline.images.extract as ex
from shardeval.kernels.encoders import Encoder
from shardeval.pipeline.images.cache import (
    CACHE_ENV,
    CONTENT_ATTR,
    FEATURES_ARRAY,
    cache_key,
    cache_path,
    cached_features,
    default_cache_root,
    is_image_source,
)
from shardeval.pipeline.images.extract import (
    ExtractionError,
    extract_features,
    plan_extraction,
)
from shardeval.pipeline.images.sources import open_images
from shardeval.pipeline.io.atomic import OutputExistsError
from shardeval.pipeline.io.statsio import save_stats
from shardeval.pipeline.io.stores import INCOMPLETE_ATTR


def _png(path, pixels):
    """A PNG stored without compression: its size depends on the image's shape alone."""
    Image.fromarray(pixels).save(path, compress_level=0)


@pytest.fixture
def images(tmp_path, rng):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        _png(root / f"img-{i}.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return str(root)


def _features(path):
    group = zarr.open_group(str(path), mode="r")
    return np.asarray(group["features"][...]), list(group["names"][...])


@pytest.fixture
def no_encoder(monkeypatch):
    """Make any use of an encoder fail the test: loading one, running one, or a chunk task."""

    def refuse(*args, **kwargs):
        raise AssertionError("an encoder ran")

    def install():
        monkeypatch.setattr(encoders, "load_encoder", refuse)
        monkeypatch.setattr(ex, "cached_encoder", refuse)
        monkeypatch.setattr(ex, "extract_chunk", refuse)
        monkeypatch.setattr(Encoder, "encode", refuse)
        monkeypatch.setattr(Encoder, "forward", refuse)

    return install


def test_the_cache_holds_what_extraction_writes(tmp_path, images, weights):
    root = tmp_path / "cache"
    cached = cached_features(images, cache_root=root, weights=weights, batch_size=2)
    key = cache_key(open_images(images), plan_extraction(weights=weights))
    assert cached.key == key
    assert cached.path == cache_path(root, key) == str(root / f"features-{key}.zarr")
    assert (cached.reused, cached.stale, cached.content) == (False, False, None)
    assert (cached.extraction.rows, cached.extraction.computed) == (4, 2)
    fresh = str(tmp_path / "fresh.zarr")
    extract_features(images, fresh, weights=weights, batch_size=2)
    got, names = _features(cached.path)
    want, want_names = _features(fresh)
    assert names == want_names
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    opened = cached.open()
    assert (opened.n, opened.d, opened.name) == (4, 2048, FEATURES_ARRAY)


def test_a_second_call_runs_no_encoder_whatever_the_batch_size(
    tmp_path, images, weights, no_encoder
):
    root = tmp_path / "cache"
    first = cached_features(images, cache_root=root, weights=weights, batch_size=2)
    no_encoder()
    for batch_size in (None, 2, 4):
        again = cached_features(images, cache_root=root, weights=weights, batch_size=batch_size)
        assert (again.path, again.key, again.reused) == (first.path, first.key, True)
        assert (again.extraction.computed, again.extraction.present) == (0, 2)
    assert [p.name for p in root.glob("features-*.zarr")] == [os.path.basename(first.path)]


def test_an_unfinished_entry_is_finished_with_its_own_batch_size(
    tmp_path, images, weights, monkeypatch
):
    root = tmp_path / "cache"
    first = cached_features(images, cache_root=root, weights=weights, batch_size=2)
    before, _ = _features(first.path)
    # A killed run: the mark back, one chunk gone.
    group = zarr.open_group(first.path, mode="r+")
    group.attrs.put({**dict(group.attrs), INCOMPLETE_ATTR: ex.INCOMPLETE_NOTE, "complete": False})
    os.remove(os.path.join(first.path, "features", "c", "1", "0"))
    again = cached_features(images, cache_root=root, weights=weights, batch_size=4)
    assert (again.reused, again.extraction.computed, again.extraction.resumed) == (False, 1, True)
    assert zarr.open_group(again.path, mode="r").attrs["batch_size"] == 2
    np.testing.assert_allclose(_features(again.path)[0], before, rtol=1e-5, atol=1e-6)


def test_changed_images_or_settings_make_a_new_entry(tmp_path, images, weights, rng):
    root = tmp_path / "cache"
    first = cached_features(images, cache_root=root, weights=weights)
    _png(os.path.join(images, "img-1.png"), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    changed = cached_features(images, cache_root=root, weights=weights)
    assert changed.key != first.key
    assert not changed.reused
    clean = cached_features(images, cache_root=root, weights=weights, resize="clean")
    assert clean.key not in (first.key, changed.key)
    assert not clean.reused
    assert len(list(root.glob("features-*.zarr"))) == 3  # the old entries are kept
    assert _features(first.path)[1] == _features(changed.path)[1]
    assert not np.array_equal(_features(first.path)[0], _features(changed.path)[0])


def test_where_the_cache_is(tmp_path, images, weights, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == str(tmp_path / "home" / ".cache" / "shardeval")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == str(tmp_path / "xdg" / "shardeval")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_root() == str(tmp_path / "env")
    from_env = cached_features(images, weights=weights)
    assert os.path.dirname(from_env.path) == str(tmp_path / "env")
    given = cached_features(images, weights=weights, cache_root=tmp_path / "given")
    assert os.path.dirname(given.path) == str(tmp_path / "given")
    assert not given.reused  # another folder, another cache
    assert not (tmp_path / "xdg").exists()
    assert not (tmp_path / "home").exists()


def test_something_foreign_in_an_entrys_place_is_refused(tmp_path, images, weights, no_encoder):
    root = tmp_path / "cache"
    path = cache_path(root, cache_key(open_images(images), plan_extraction(weights=weights)))
    os.makedirs(path)
    (tmp_path / "cache" / os.path.basename(path) / "notes.txt").write_text("keep me")
    no_encoder()
    with pytest.raises(OutputExistsError, match=r"not a feature store written by extraction.*"):
        cached_features(images, cache_root=root, weights=weights)
    assert os.listdir(path) == ["notes.txt"]
    os.remove(os.path.join(path, "notes.txt"))
    os.rmdir(path)
    zarr.create_array(path, shape=(4, 2), dtype="f4")[:] = 1.0
    with pytest.raises(OutputExistsError, match="cache_root=FOLDER"):
        cached_features(images, cache_root=root, weights=weights)
    assert zarr.open_array(path, mode="r")[:].sum() == 8.0


def test_an_extraction_of_other_images_in_an_entrys_place_is_refused(
    tmp_path, images, weights, rng
):
    root = tmp_path / "cache"
    path = cache_path(root, cache_key(open_images(images), plan_extraction(weights=weights)))
    other = tmp_path / "other"
    other.mkdir()
    _png(other / "a.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    _png(other / "b.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    extract_features(str(other), path, weights=weights)
    with pytest.raises(OutputExistsError, match="records other source_fingerprint"):
        cached_features(images, cache_root=root, weights=weights)
    assert zarr.open_group(path, mode="r").attrs["source"] == str(other)


def test_the_cache_is_never_inside_the_images_nor_a_file_nor_a_url(
    tmp_path, images, weights, no_encoder
):
    no_encoder()
    inside = os.path.join(images, "cache")
    with pytest.raises(OutputExistsError, match="inside the images"):
        cached_features(images, cache_root=inside, weights=weights)
    assert not os.path.exists(inside)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="is not a folder"):
        cached_features(images, cache_root=tmp_path / "file", weights=weights)
    with pytest.raises(ExtractionError, match=r"cache_root='s3://b/c' is a URL"):
        cached_features(images, cache_root="s3://b/c", weights=weights)
    with pytest.raises(ExtractionError, match="cache_root is empty"):
        cached_features(images, cache_root="", weights=weights)


def test_verify_sees_an_image_rewritten_with_its_size_and_time(tmp_path, images, weights, rng):
    root = tmp_path / "cache"
    listed = cached_features(images, cache_root=root, weights=weights)
    first = cached_features(images, cache_root=root, weights=weights, verify=True)
    # An entry that recorded no bytes is extracted again once, then reused.
    assert (first.path, first.stale, first.reused) == (listed.path, True, False)
    assert zarr.open_group(first.path, mode="r").attrs[CONTENT_ATTR] == first.content
    again = cached_features(images, cache_root=root, weights=weights, verify=True)
    assert (again.stale, again.reused, again.content) == (False, True, first.content)
    image = os.path.join(images, "img-2.png")
    st = os.stat(image)
    _png(image, rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(image).st_size == st.st_size
    assert cached_features(images, cache_root=root, weights=weights).reused  # same listing
    changed = cached_features(images, cache_root=root, weights=weights, verify=True)
    assert (changed.path, changed.stale, changed.reused) == (first.path, True, False)
    assert changed.content != first.content
    fresh = str(tmp_path / "fresh.zarr")
    extract_features(images, fresh, weights=weights)
    np.testing.assert_allclose(
        _features(changed.path)[0], _features(fresh)[0], rtol=1e-5, atol=1e-6
    )


def test_an_entry_without_logits_is_made_again_not_refused(tmp_path, images, weights):
    """An entry made before extraction wrote logits holds features only: asked for the
    Inception's arrays (logits included), the cache extracts it again in its place, never
    refusing it nor handing it out as complete."""
    import shardeval as se
    from shardeval.pipeline.images.extract import LOGITS_ARRAY

    root = tmp_path / "cache"
    path = cache_path(root, cache_key(open_images(images), plan_extraction(weights=weights)))
    extract_features(images, path, weights=weights, logits=False)  # as entries were made
    assert LOGITS_ARRAY not in zarr.open_group(path, mode="r")
    report = se.inception_score(images, weights=weights, cache_root=str(root))
    assert LOGITS_ARRAY in zarr.open_group(path, mode="r")
    fresh = str(tmp_path / "fresh.zarr")
    extract_features(images, fresh, weights=weights)
    expected = se.inception_score(fresh)
    assert float(report) == float(expected)
    again = cached_features(images, cache_root=root, weights=weights)
    assert again.reused
    assert len(list(root.glob("features-*.zarr"))) == 1


# --- is_image_source ---------------------------------------------------------------------


def _png_bytes(rng):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tar(path, blobs):
    with tarfile.open(path, "w") as tf:
        for i, blob in enumerate(blobs):
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return str(path)


@pytest.fixture
def kinds(tmp_path, rng, images):
    """Every kind of input, named for what it is (the names say nothing of what they hold)."""
    blobs = [_png_bytes(rng) for _ in range(2)]
    out = {"image folder": images}
    nested = tmp_path / "nested" / "deep"
    nested.mkdir(parents=True)
    (nested / "a.PNG").write_bytes(blobs[0])
    out["nested image folder"] = str(tmp_path / "nested")
    with zipfile.ZipFile(tmp_path / "zip-of-images.bin", "w") as zf:
        for i, blob in enumerate(blobs):
            zf.writestr(f"x/{i}.png", blob)
    out["zip"] = str(tmp_path / "zip-of-images.bin")
    out["tar"] = _tar(tmp_path / "one.tar", blobs)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        _tar(shards / f"part-{i}.tar", blobs)
    out["glob of tars"] = str(shards / "part-*.tar")
    out["folder of tars"] = str(shards)
    uint8 = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    with open(tmp_path / "images-npy.dat", "wb") as fh:  # np.save would add ".npy" to a path
        np.save(fh, uint8)
    out["uint8 npy"] = str(tmp_path / "images-npy.dat")
    np.save(tmp_path / "gray.npy", uint8[..., 0])
    out["uint8 (N, H, W) npy"] = str(tmp_path / "gray.npy")
    np.savez(tmp_path / "samples.npz", uint8, np.arange(3))  # arr_0 images, arr_1 labels
    out["uint8 npz"] = str(tmp_path / "samples.npz")
    # Not images:
    features = rng.standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    out["float npy features"] = str(tmp_path / "features.npy")
    np.savez(tmp_path / "features.npz", feats=features)
    out["npz features"] = str(tmp_path / "features.npz")
    np.savez(tmp_path / "stats.npz", mu=features[0], sigma=np.eye(4))
    out["statistics npz"] = str(tmp_path / "stats.npz")
    zarr.create_array(str(tmp_path / "store.zarr"), shape=(5, 4), dtype="f4")[:] = features
    out["zarr array"] = str(tmp_path / "store.zarr")
    group = zarr.open_group(str(tmp_path / "group"), mode="w")
    group.create_array("features", data=features)
    (tmp_path / "group" / "cover.png").write_bytes(blobs[0])  # a folder that is a store
    out["folder that is a zarr store"] = str(tmp_path / "group")
    from shardeval.pipeline.core.states import Moments

    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    save_stats(str(tmp_path / "stats.zarr"), Moments(5, mean, (x - mean).T @ (x - mean)))
    out["statistics zarr"] = str(tmp_path / "stats.zarr")
    (tmp_path / "empty").mkdir()
    out["empty folder"] = str(tmp_path / "empty")
    out["missing path"] = str(tmp_path / "missing")
    out["glob matching nothing"] = str(tmp_path / "none-*.tar")
    out["url"] = "s3://bucket/features.zarr"
    return out


IMAGES = {
    "image folder",
    "nested image folder",
    "zip",
    "tar",
    "glob of tars",
    "folder of tars",
    "uint8 npy",
    "uint8 (N, H, W) npy",
    "uint8 npz",
}


def test_is_image_source_tells_each_kind(kinds):
    assert {name for name, path in kinds.items() if is_image_source(path)} == IMAGES


def test_what_is_image_source_opens_as_images(kinds):
    for name in IMAGES - {"zip", "uint8 npy"}:  # listing goes by the name's extension
        assert len(open_images(kinds[name])) > 0, name


def test_a_complete_entry_is_read_without_the_writers_lock(tmp_path, images, weights, no_encoder):
    """A cache others wrote, read where this process cannot write: the lock file beside a
    complete entry cannot be created (here a folder stands in its place, which no one, root
    included, can open as a file), and the entry is reused all the same, nothing written."""
    root = tmp_path / "cache"
    first = cached_features(images, cache_root=root, weights=weights)
    os.remove(first.path + ".lock")
    os.mkdir(first.path + ".lock")
    before = sorted(os.listdir(root))
    no_encoder()
    again = cached_features(images, cache_root=root, weights=weights)
    assert again.reused
    assert again.path == first.path
    np.testing.assert_array_equal(_features(again.path)[0], _features(first.path)[0])
    assert sorted(os.listdir(root)) == before
    assert again.extraction.rows == first.extraction.rows == 4


def _holding(lock_path):
    """Hold ``lock_path`` exclusively, as a writer does, until the returned event is set."""
    import fcntl
    import threading

    held, release = threading.Event(), threading.Event()

    def hold():
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            held.set()
            release.wait()
            fcntl.flock(fh, fcntl.LOCK_UN)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    held.wait()
    return release, thread


@pytest.mark.parametrize("complete", [False, True])
def test_a_run_that_waits_for_anothers_lock_says_so(tmp_path, images, weights, complete):
    import threading
    import time

    root = tmp_path / "cache"
    path = cache_path(root, cache_key(open_images(images), plan_extraction(weights=weights)))
    if complete:
        cached_features(images, cache_root=root, weights=weights)
    else:
        os.makedirs(root)
    release, holder = _holding(path + ".lock")
    said, done = [], []
    run = threading.Thread(
        target=lambda: done.append(
            cached_features(images, cache_root=root, weights=weights, log=said.append)
        ),
        daemon=True,
    )
    run.start()
    for _ in range(600):  # until the waiting run has said so (or a minute)
        if said:
            break
        time.sleep(0.1)
    assert not done  # it waits
    release.set()
    run.join(timeout=300)
    holder.join(timeout=60)
    assert done
    assert done[0].reused is complete
    (message,) = said
    assert "waiting" in message
    assert path + ".lock" in message
    assert images in message


def test_a_cache_root_that_is_not_a_feature_cache_is_refused(tmp_path, images, weights, no_encoder):
    """A Zarr store, a folder inside one, a run history, and a folder holding anything but
    a feature cache are refused before anything is written there; a new or empty folder
    becomes a cache and is marked as one, and an unmarked folder of cache entries (a cache
    made before the mark) is still one."""
    from shardeval.pipeline.images.cache import CACHE_MARKER, resolve_cache_root

    no_encoder()
    store = tmp_path / "victim.zarr"
    zarr.create_array(str(store), shape=(4, 2), dtype="f4")[:] = 1.0
    group = tmp_path / "group.zarr"
    zarr.open_group(str(group), mode="w").attrs["format"] = "shardeval.history"
    save_stats(tmp_path / "stats.zarr", _moments())
    versions = tmp_path / "history.zarr.versions"
    (versions / "v000001").mkdir(parents=True)
    zarr.open_group(str(versions / "v000001"), mode="w", zarr_format=2)
    os.symlink(versions / "v000001", tmp_path / "history.zarr")
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "notes.txt").write_text("keep me")
    cases = [
        (store, "is a Zarr store"),
        (store / "cache", "inside the Zarr store"),
        (group, r"is a Zarr store \(format 'shardeval.history'\)"),
        (tmp_path / "stats.zarr", "is a Zarr store"),
        (tmp_path / "history.zarr", "is a Zarr store"),
        (versions, "holds other files"),
        (tmp_path / "papers", r"holds other files \('notes.txt'\)"),
    ]
    for root, msg in cases:
        before = sorted(p for p in tmp_path.rglob("*"))
        with pytest.raises(OutputExistsError, match=msg) as info:
            cached_features(images, cache_root=root, weights=weights)
        assert "\n" not in str(info.value)
        assert "cache_root=FOLDER" in str(info.value)
        assert sorted(p for p in tmp_path.rglob("*")) == before, root
    # A new folder, and an empty one, become caches, marked as such.
    assert resolve_cache_root(tmp_path / "new") == str(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    assert resolve_cache_root(tmp_path / "empty") == str(tmp_path / "empty")
    # An unmarked folder of cache entries (made before the mark) is a cache.
    old = tmp_path / "old"
    (old / ("features-" + "0" * 32 + ".zarr")).mkdir(parents=True)
    (old / ("features-" + "0" * 32 + ".zarr.lock")).write_text("")
    assert resolve_cache_root(old) == str(old)
    assert not (old / CACHE_MARKER).exists()


def _moments():
    from shardeval.pipeline.core.states import Moments

    return Moments.from_rows(np.arange(12.0).reshape(4, 3) ** 2)


def test_a_new_cache_is_marked_and_found_again(tmp_path, images, weights, no_encoder):
    from shardeval.pipeline.images.cache import CACHE_MARKER

    root = tmp_path / "cache"
    first = cached_features(images, cache_root=root, weights=weights)
    assert (root / CACHE_MARKER).is_file()
    (root / "notes.txt").write_text("a file of the user's, beside the entries")
    no_encoder()
    assert cached_features(images, cache_root=root, weights=weights).path == first.path
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssertionError, match="an encoder ran"):
        cached_features(images, cache_root=empty, weights=weights)
    assert (empty / CACHE_MARKER).is_file()
