"""Extraction to Zarr with the random-weights Inception (small images, small batches, CPU):
the store and its completion mark, resuming after an interruption (also a real SIGKILL),
settings that must match, outputs never replaced, --skip-bad, and a 2-worker cluster."""

import hashlib
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

import shardeval.pipeline.images.extract as ex
from shardeval.kernels.encoders import load_encoder
from shardeval.kernels.encoders.inception import random_state_dict
from shardeval.pipeline.core.engine import Engine
from shardeval.pipeline.errors import StoreError
from shardeval.pipeline.images.extract import EncoderSetupError, ExtractionError, extract_features
from shardeval.pipeline.images.sources import ImageError, open_images
from shardeval.pipeline.io.atomic import OutputExistsError
from shardeval.pipeline.io.stores import INCOMPLETE_ATTR, open_features


def _folder(root, n, rng, size=(40, 40)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img-{i:03d}.png")
    return str(root)


@pytest.fixture
def images(tmp_path, rng):
    return _folder(tmp_path / "images", 8, rng)


def _chunk_files(store):
    folder = os.path.join(store, "features", "c")
    return sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, _, files in os.walk(folder)
        for f in files
        if not f.endswith(".partial")
    )


def _count_chunks(monkeypatch):
    calls = []
    original = ex.extract_chunk

    def counted(job, chunk, refs):
        calls.append(chunk)
        return original(job, chunk, refs)

    monkeypatch.setattr(ex, "extract_chunk", counted)
    return calls


def test_extraction_writes_a_complete_store(tmp_path, images, weights):
    out = str(tmp_path / "features.zarr")
    seen = []
    result = extract_features(
        images, out, weights=weights, batch_size=2, progress=lambda d, t: seen.append((d, t))
    )
    assert (result.images, result.rows, result.dim, result.chunks) == (8, 8, 2048, 4)
    assert (result.computed, result.present, result.already_complete) == (4, 0, False)
    assert seen[-1] == (8, 8)  # images
    group = zarr.open_group(out, mode="r")
    attrs = dict(group.attrs)
    assert INCOMPLETE_ATTR not in attrs
    assert attrs["complete"] is True
    assert attrs["format"] == "shardeval.features"
    assert attrs["feature_extractor"] == "inception-2015-12-05/pool3"
    assert attrs["encoder"] == "inception"
    assert attrs["resize"] == "legacy-pytorch"
    assert attrs["image_count"] == 8
    assert attrs["source_fingerprint"] == open_images(images).fingerprint
    with open(weights, "rb") as fh:  # the digest family fetch pins
        assert attrs["weights_digest"] == "sha256:" + hashlib.sha256(fh.read()).hexdigest()
    assert attrs["weights_file"] == weights
    assert attrs["weights_status"] == "not published"  # random weights
    features = group["features"]
    assert features.dtype == np.float32
    assert features.chunks == (2, 2048)
    assert tuple(features.metadata.dimension_names) == ("sample", "feature")
    assert list(group["names"][:]) == [f"img-{i:03d}.png" for i in range(8)]
    source = open_features(out)
    assert (source.n, source.d, source.feature_extractor) == (8, 2048, attrs["feature_extractor"])
    # The rows are the encoder's features of the images, in order.
    encoder = load_encoder("inception", weights)
    decoded = open_images(images).refs(range(8)).read()
    np.testing.assert_allclose(features[:], encoder.encode(decoded, 2), rtol=1e-5, atol=1e-5)
    again = extract_features(images, out, weights=weights)
    assert (again.already_complete, again.computed, again.present) == (True, 0, 4)


def test_resume_computes_only_missing_chunks(tmp_path, images, weights, monkeypatch):
    out = str(tmp_path / "features.zarr")
    extract_features(images, out, weights=weights, batch_size=2)
    before = zarr.open_group(out, mode="r")["features"][:]
    # Simulate an interruption: the mark back, two chunks gone.
    group = zarr.open_group(out, mode="r+")
    group.attrs.put({**dict(group.attrs), INCOMPLETE_ATTR: ex.INCOMPLETE_NOTE, "complete": False})
    for chunk in ("1/0", "3/0"):
        os.remove(os.path.join(out, "features", "c", *chunk.split("/")))
    with pytest.raises(StoreError, match="incomplete extraction"):
        open_features(out)
    calls = _count_chunks(monkeypatch)
    result = extract_features(images, out, weights=weights)  # the store's batch size is kept
    assert sorted(calls) == [1, 3]
    assert (result.computed, result.present, result.resumed) == (2, 2, True)
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["features"][:], before)
    assert open_features(out).n == 8


def test_other_settings_are_refused(tmp_path, images, weights, rng):
    out = str(tmp_path / "features.zarr")
    extract_features(images, out, weights=weights, batch_size=4)
    with pytest.raises(ExtractionError, match="finished extraction with other settings") as info:
        extract_features(images, out, weights=weights, resize="clean")
    assert "resize 'legacy-pytorch' there, 'clean' asked" in str(info.value)
    group = zarr.open_group(out, mode="r+")
    group.attrs.put({**dict(group.attrs), INCOMPLETE_ATTR: ex.INCOMPLETE_NOTE})
    other = tmp_path / "other.pth"
    torch.save(random_state_dict(4), other)
    with pytest.raises(ExtractionError, match=r"unfinished extraction.*weights_digest"):
        extract_features(images, out, weights=other)
    with pytest.raises(ExtractionError, match="unfinished extraction started with batch_size=4"):
        extract_features(images, out, weights=weights, batch_size=2)
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(
        os.path.join(images, "new.png")
    )
    with pytest.raises(ExtractionError, match="source_fingerprint"):
        extract_features(images, out, weights=weights)
    result = extract_features(images, out, weights=weights, resize="clean", overwrite=True)
    assert (result.rows, result.computed) == (9, 1)
    assert zarr.open_group(out, mode="r").attrs["resize"] == "clean"


def test_foreign_outputs_are_never_replaced(tmp_path, images, weights):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    zarr.create_array(str(tmp_path / "theirs.zarr"), shape=(4, 2), dtype="f4")[:] = 1.0
    for out in (folder, tmp_path / "theirs.zarr"):
        with pytest.raises(OutputExistsError, match="not a feature store written by"):
            extract_features(images, str(out), weights=weights, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert zarr.open_array(str(tmp_path / "theirs.zarr"), mode="r")[:].sum() == 8.0


def test_missing_weights_before_any_work(tmp_path, images, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EncoderSetupError, match=r"pt_inception-2015-12-05-6726825d\.pth"):
        extract_features(images, str(tmp_path / "out.zarr"))
    assert not os.path.exists(tmp_path / "out.zarr")


def test_bad_image_stops_or_is_skipped(tmp_path, images, weights):
    data = (tmp_path / "images" / "img-005.png").read_bytes()
    (tmp_path / "images" / "img-005.png").write_bytes(data[: len(data) // 3])
    out = str(tmp_path / "stopped.zarr")
    with pytest.raises(ImageError, match=r"img-005\.png.*skip_bad=True"):
        extract_features(images, out, weights=weights, batch_size=2, engine=Engine("sync"))
    with pytest.raises(StoreError, match="incomplete extraction"):
        open_features(out)
    with pytest.raises(ExtractionError, match="skip_bad"):
        extract_features(images, out, weights=weights, skip_bad=True)
    kept = str(tmp_path / "kept.zarr")
    result = extract_features(images, kept, weights=weights, batch_size=2, skip_bad=True)
    assert (result.images, result.rows, result.chunks) == (8, 7, 4)
    assert [name for name, _ in result.skipped] == ["img-005.png"]
    group = zarr.open_group(kept, mode="r")
    assert "img-005.png" not in list(group["names"][:])
    assert len(group["names"][:]) == 7
    assert group.attrs["skipped"][0]["name"] == "img-005.png"
    assert group.attrs["skipped"][0]["reason"]
    assert open_features(kept).n == 7


def test_a_store_without_any_chunk_is_started_afresh(tmp_path, images, weights):
    # One chunk, which fails: the unfinished store it left behind made the retry with
    # --skip-bad a refused "unfinished extraction with other settings".
    data = (tmp_path / "images" / "img-000.png").read_bytes()
    (tmp_path / "images" / "img-000.png").write_bytes(data[:100])
    out = tmp_path / "f.zarr"
    with pytest.raises(ImageError, match=r"img-000\.png"):
        extract_features(images, str(out), weights=weights, batch_size=8)
    with pytest.raises(StoreError, match="incomplete extraction"):
        open_features(str(out))
    result = extract_features(images, str(out), weights=weights, batch_size=8, skip_bad=True)
    assert (result.rows, [name for name, _ in result.skipped]) == (7, ["img-000.png"])


def _extract_in_child(images, out, weights):
    """A child process extracting one chunk at a time, slowly enough to be killed mid-way."""
    script = f"""
import time
import shardeval.pipeline.images.extract as ex
from shardeval.pipeline.core.engine import Engine

original = ex.extract_chunk

def slow(*args):
    result = original(*args)
    time.sleep(0.4)
    return result

ex.extract_chunk = slow
ex.extract_features({images!r}, {out!r}, weights={weights!r}, batch_size=2, engine=Engine("sync"))
"""
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_sigkill_half_way_then_resume_is_identical(tmp_path, rng, weights, monkeypatch):
    images = _folder(tmp_path / "images", 12, rng, size=(36, 44))
    out = str(tmp_path / "killed.zarr")
    child = _extract_in_child(images, out, weights)
    deadline = time.monotonic() + 120
    try:
        while len(_chunk_files(out)) < 2:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child wrote no chunk in 120 s"
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    present = _chunk_files(out)
    assert 2 <= len(present) < 6
    with pytest.raises(StoreError, match="incomplete extraction"):
        open_features(out)
    calls = _count_chunks(monkeypatch)
    result = extract_features(images, out, weights=weights)
    assert len(calls) == 6 - len(present)
    assert (result.computed, result.present, result.resumed) == (len(calls), len(present), True)
    monkeypatch.undo()
    whole = str(tmp_path / "whole.zarr")
    extract_features(images, whole, weights=weights, batch_size=2)
    a, b = zarr.open_group(out, mode="r"), zarr.open_group(whole, mode="r")
    np.testing.assert_array_equal(a["features"][:], b["features"][:])
    np.testing.assert_array_equal(a["names"][:], b["names"][:])
    drop = {"created"}
    assert {k: v for k, v in a.attrs.items() if k not in drop} == {
        k: v for k, v in b.attrs.items() if k not in drop
    }
    assert _chunk_files(out) == _chunk_files(whole)


def test_two_worker_cluster_equals_threads(tmp_path, rng, weights):
    from distributed import LocalCluster

    path = str(tmp_path / "samples.npz")
    np.savez(path, rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    threaded = str(tmp_path / "threads.zarr")
    extract_features(path, threaded, weights=weights, batch_size=2)
    spread = str(tmp_path / "cluster.zarr")
    seen = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        result = extract_features(
            path,
            spread,
            weights=weights,
            batch_size=2,
            engine=Engine(cluster.scheduler_address),
            progress=lambda d, t: seen.append((d, t)),
        )
    assert (result.computed, result.devices) == (5, ("cpu",))
    assert seen[-1] == (10, 10)  # images
    a = zarr.open_group(threaded, mode="r")["features"][:]
    b = zarr.open_group(spread, mode="r")["features"][:]
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    assert list(zarr.open_group(spread, mode="r")["names"][:2]) == ["arr_0[0]", "arr_0[1]"]


def test_zip_and_tar_sources(tmp_path, rng, weights):
    import tarfile
    import zipfile

    blobs = []
    for _ in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for i, blob in enumerate(blobs):
            zf.writestr(f"x/{i}.png", blob)
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for i, blob in enumerate(blobs):
            info = tarfile.TarInfo(f"x/{i}.png")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    z = extract_features(str(tmp_path / "a.zip"), str(tmp_path / "z.zarr"), weights=weights)
    t = extract_features(str(tmp_path / "a.tar"), str(tmp_path / "t.zarr"), weights=weights)
    assert (z.rows, t.rows) == (3, 3)
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["features"][:],
        zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["features"][:],
    )


def test_tf32_in_the_worker_is_refused_before_any_work(tmp_path, images, weights, monkeypatch):
    from shardeval.kernels.encoders import Encoder

    monkeypatch.setattr(Encoder, "fp32_products", property(lambda self: "tf32"))
    out = str(tmp_path / "f.zarr")
    with pytest.raises(
        EncoderSetupError, match=r"round to TF32 .* --preload shardeval.pipeline.core.ieee_fp32"
    ):
        extract_features(images, out, weights=weights, batch_size=2)
    assert _chunk_files(out) == []


def test_the_extract_command_sets_ieee_products_in_its_process(
    tmp_path, images, weights, fp32_flags
):
    from shardeval.kernels._dispatch import tf32_convolutions
    from shardeval.workflows.cli import main

    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default
    out = str(tmp_path / "f.zarr")
    assert (
        main(["extract", images, "-o", out, "--weights", weights, "--batch-size", "4", "-q"]) == 0
    )
    assert not tf32_convolutions()


def test_a_second_extraction_of_one_store_waits_for_the_first(
    tmp_path, images, weights, monkeypatch
):
    # Without a lock, a second run could find the first's store still without a chunk and
    # start it afresh under the first's feet; now it waits, then finds it finished.
    import threading

    original = ex.extract_chunk
    started = threading.Event()

    def slow(*args):
        started.set()
        time.sleep(0.5)
        return original(*args)

    monkeypatch.setattr(ex, "extract_chunk", slow)
    out = str(tmp_path / "f.zarr")
    first = {}
    worker = threading.Thread(
        target=lambda: first.update(r=extract_features(images, out, weights=weights, batch_size=4))
    )
    worker.start()
    assert started.wait(30)
    second = extract_features(images, out, weights=weights, batch_size=4)
    worker.join()
    assert (first["r"].computed, second.computed, second.already_complete) == (2, 0, True)


# --- hostile sources and re-runs --------------------------------------------------------------


def _png_bytes(rng, size=(30, 30)):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _rows(store):
    group = zarr.open_group(store, mode="r")
    return group["features"][:], list(group["names"][:])


def _reference(tmp_path, weights, files, batch_size=4):
    """Rows extracted from ``files`` ({name: bytes}) written as separate files of a folder."""
    folder = tmp_path / f"reference-{len(os.listdir(tmp_path))}"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    out = str(folder) + ".zarr"
    extract_features(str(folder), out, weights=weights, batch_size=batch_size)
    return _rows(out)[0]


def test_every_member_of_a_zip_is_extracted_though_two_share_a_name(tmp_path, rng, weights):
    # Both 'a.png' rows held the last a.png's features (exit 0); the first was never read.
    import warnings
    import zipfile

    first, other, second = (_png_bytes(rng) for _ in range(3))
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        for name, data in (("a.png", first), ("b.png", other), ("a.png", second)):
            zf.writestr(name, data)
    out = str(tmp_path / "dup.zarr")
    result = extract_features(str(path), out, weights=weights, batch_size=4)
    features, names = _rows(out)
    assert (result.rows, names) == (3, ["a.png", "a.png#2", "b.png"])
    expected = _reference(tmp_path, weights, {"a1.png": first, "a2.png": second, "b.png": other})
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_a_bad_member_of_a_repeated_name_is_the_only_one_left_out(tmp_path, rng, weights):
    import warnings
    import zipfile

    good, other = _png_bytes(rng), _png_bytes(rng)
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        for name, data in (("a.png", good), ("b.png", other), ("a.png", b"garbage")):
            zf.writestr(name, data)
    out = str(tmp_path / "dup.zarr")
    result = extract_features(str(path), out, weights=weights, batch_size=4, skip_bad=True)
    assert [name for name, _ in result.skipped] == ["a.png#2"]
    features, names = _rows(out)
    assert names == ["a.png", "b.png"]
    expected = _reference(tmp_path, weights, {"a.png": good, "b.png": other})
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_linked_folders_and_macos_metadata(tmp_path, rng, weights):
    # The linked folder was skipped ("extracted 1 images"); '._own.png' stopped the run.
    blobs = {f"{i}.png": _png_bytes(rng) for i in range(3)}
    own = _png_bytes(rng)
    (tmp_path / "pool").mkdir()
    for name, data in blobs.items():
        (tmp_path / "pool" / name).write_bytes(data)
    samples = tmp_path / "samples"
    (samples / "__MACOSX").mkdir(parents=True)
    (samples / "own.png").write_bytes(own)
    (samples / "._own.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (samples / "__MACOSX" / "._own.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    os.symlink(os.path.join("..", "pool"), samples / "more")
    os.symlink(".", samples / "loop")
    out = str(tmp_path / "linked.zarr")
    result = extract_features(str(samples), out, weights=weights, batch_size=4)
    features, names = _rows(out)
    assert (result.images, names) == (4, ["more/0.png", "more/1.png", "more/2.png", "own.png"])
    expected = _reference(
        tmp_path, weights, {**{f"m{n}": d for n, d in blobs.items()}, "z.png": own}
    )
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_a_dangling_link_is_a_bad_image(tmp_path, rng, weights):
    # It stopped the listing, with skip_bad too.
    a, c = _png_bytes(rng), _png_bytes(rng)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.png").write_bytes(a)
    (folder / "c.png").write_bytes(c)
    os.symlink(tmp_path / "gone.png", folder / "b.png")
    out = str(tmp_path / "f.zarr")
    with pytest.raises(ImageError, match=r"b\.png' cannot be read \(a symbolic link to .*gone"):
        extract_features(str(folder), out, weights=weights, batch_size=4)
    assert not os.path.exists(out)  # refused before anything was written
    result = extract_features(str(folder), out, weights=weights, batch_size=4, skip_bad=True)
    [(name, reason)] = result.skipped
    assert name == "b.png"
    assert str(folder / "b.png") in reason
    assert "symbolic link" in reason
    features, names = _rows(out)
    assert (result.images, result.rows, names) == (3, 2, ["a.png", "c.png"])
    expected = _reference(tmp_path, weights, {"a.png": a, "c.png": c})
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)


def test_skipped_reasons_name_the_image_readably(tmp_path, images, weights):
    (tmp_path / "images" / "img-002.png").write_bytes(b"garbage")
    (tmp_path / "images" / "img-006.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = extract_features(
        images, str(tmp_path / "k.zarr"), weights=weights, batch_size=4, skip_bad=True
    )
    assert (result.images, result.rows) == (8, 6)
    assert [name for name, _ in result.skipped] == ["img-002.png", "img-006.png"]
    for name, reason in result.skipped:
        assert os.path.join(images, name) in reason
        assert " object at 0x" not in reason
    stored = zarr.open_group(str(tmp_path / "k.zarr"), mode="r").attrs["skipped"]
    assert [(s["name"], s["reason"]) for s in stored] == list(result.skipped)


def test_a_finished_store_is_reused_whatever_the_batch_size(tmp_path, images, weights, monkeypatch):
    # It was refused: "was started with batch size 2; re-run with --batch-size 2 to finish it".
    out = str(tmp_path / "f.zarr")
    extract_features(images, out, weights=weights, batch_size=2)
    before = _rows(out)
    calls = _count_chunks(monkeypatch)
    for batch_size, chunk_rows in ((4, None), (3, None), (1, 8)):
        again = extract_features(
            images, out, weights=weights, batch_size=batch_size, chunk_rows=chunk_rows
        )
        assert (again.already_complete, again.computed, again.present) == (True, 0, 4)
    assert calls == []
    after = _rows(out)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1] == before[1]


def test_an_unfinished_store_is_finished_with_its_own_batch_size_only(
    tmp_path, images, weights, monkeypatch
):
    out = str(tmp_path / "f.zarr")
    extract_features(images, out, weights=weights, batch_size=2)
    before = _rows(out)[0]
    group = zarr.open_group(out, mode="r+")
    group.attrs.put({**dict(group.attrs), INCOMPLETE_ATTR: ex.INCOMPLETE_NOTE, "complete": False})
    os.remove(os.path.join(out, "features", "c", "2", "0"))
    with pytest.raises(ExtractionError) as info:
        extract_features(images, out, weights=weights, batch_size=4)
    assert "started with batch_size=2" in str(info.value)
    assert "re-run with batch_size=2 to finish it" in str(info.value)
    with pytest.raises(ExtractionError, match="re-run with chunk_rows=2 to finish it"):
        extract_features(images, out, weights=weights, chunk_rows=4)
    calls = _count_chunks(monkeypatch)
    result = extract_features(images, out, weights=weights, batch_size=2)
    assert (calls, result.resumed) == ([2], True)
    np.testing.assert_array_equal(_rows(out)[0], before)
