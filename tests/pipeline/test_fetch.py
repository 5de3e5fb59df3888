"""Downloads against pinned digests, from a server on 127.0.0.1: the right file lands (atomically,
beside nothing); a wrong digest, a truncated transfer or a server error is one line and leaves
nothing; an interrupted download resumes with HTTP Range; a file in place is verified, never
replaced; the Inception weights are pinned where extraction reads them."""

import hashlib
import os
import threading

import numpy as np
import pytest

import shardeval.pipeline.io.fetch as fetching
import shardeval.pipeline.io.fetch_partial as fetch_partial
from shardeval.kernels.encoders.weights import INCEPTION_FILE, inception_path
from shardeval.pipeline.io.fetch import (
    ARTIFACTS,
    INCEPTION,
    MIRROR_ENV,
    PART_SUFFIX,
    Artifact,
    DigestMismatchError,
    FetchError,
    TransferError,
    fetch,
    resolve_url,
)
from tests.pipeline.fetch_server import Behaviour, serving

BLOCK = 64 * 1024


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Small reads (so that a test file spans many) and no waiting between retries."""
    monkeypatch.setattr(fetching, "_CHUNK", BLOCK)
    monkeypatch.setattr(fetching, "_RETRY_DELAY", 0.0)


@pytest.fixture
def body():
    return np.random.default_rng(7).integers(0, 256, 5 * BLOCK + 123, dtype=np.uint8).tobytes()


def _artifact(folder, body, url, *, full=True):
    sha = hashlib.sha256(body).hexdigest()
    return Artifact(
        name="blob",
        title="a test file",
        file_name=f"blob-{sha[:8]}.bin",
        url=url,
        sha256=sha if full else sha[:8],
        size=len(body),
        digest_source="this test",
        folder=lambda: str(folder),
    )


def _left(folder):
    """Every file under ``folder`` (none when it does not exist)."""
    return sorted(
        os.path.relpath(os.path.join(root, f), folder)
        for root, _dirs, files in os.walk(folder)
        for f in files
    )


def _one_line(exc):
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_the_right_file_lands(tmp_path, body):
    b = Behaviour(body=body)
    seen = []
    with serving(b) as base:
        item = _artifact(tmp_path / "cache" / "deep", body, base + "/blob.bin")
        result = fetch(item, progress=lambda done, total: seen.append((done, total)))
        assert result.path == item.path()
        with open(result.path, "rb") as fh:
            assert fh.read() == body
        assert result.sha256 == hashlib.sha256(body).hexdigest()
        assert (result.verified, result.size, result.downloaded) == ("sha256", len(body), len(body))
        assert not result.already_present
        assert result.resumed_from == 0
        assert _left(tmp_path / "cache") == [os.path.join("deep", item.file_name)]
        assert seen[-1] == (len(body), len(body))
        assert len(seen) == 6
        assert b.requests == [("/blob.bin", None)]
        # A second call verifies the file in place and asks the server for nothing.
        again = fetch(item)
        assert again.already_present
        assert again.url is None
        assert again.downloaded == 0
        assert len(b.requests) == 1
        assert "already in place (SHA-256 verified)" in again.summary()


def test_only_the_prefix_in_the_name_is_pinned(tmp_path, body):
    with serving(Behaviour(body=body)) as base:
        item = _artifact(tmp_path, body, base + "/b", full=False)
        result = fetch(item)
    assert result.verified == "sha256-prefix"
    assert "SHA-256 prefix (in its name) verified" in result.summary()
    other = Artifact(
        "blob", "t", item.file_name, item.url, "0" * 8, len(body), "test", lambda: str(tmp_path)
    )
    os.remove(result.path)
    with serving(Behaviour(body=body)) as base, pytest.raises(DigestMismatchError) as info:
        fetch(other, url=base + "/b")
    assert "the prefix its name carries; no full digest is pinned" in _one_line(info)
    assert _left(tmp_path) == []


def test_a_wrong_digest_is_refused_and_nothing_is_left(tmp_path, body):
    with serving(Behaviour(body=body[:-1] + b"x")) as base:
        item = _artifact(tmp_path / "cache", body, base + "/blob.bin")
        with pytest.raises(DigestMismatchError) as info:
            fetch(item)
    text = _one_line(info)
    assert item.sha256 in text
    assert "refused, nothing was kept" in text
    assert _left(tmp_path) == []
    assert not os.path.exists(tmp_path / "cache")  # the folder it made is gone too


@pytest.mark.parametrize("retries", [0, 2])
def test_a_truncated_transfer_is_refused_keeping_what_arrived(tmp_path, body, retries):
    b = Behaviour(body=body, truncate=set(range(10)))
    with serving(b) as base:
        item = _artifact(tmp_path / "cache", body, base + "/blob.bin")
        with pytest.raises(TransferError) as info:
            fetch(item, retries=retries)
    text = _one_line(info)
    assert "truncated" in text
    assert f"after {retries + 1} attempt" in text
    assert info.value.operating_failure
    part = item.path() + PART_SUFFIX
    assert "is kept: fetch again to resume" in text
    assert _left(tmp_path) == [os.path.join("cache", os.path.basename(part))]
    kept = _bytes(part)
    assert len(b.requests[0][1] or "") == 0
    assert len(body) // 2 <= len(kept) < len(body)  # half, then half of each rest
    assert kept == body[: len(kept)]  # the file's first bytes, nothing else
    # Each retry asked for the rest only.
    assert len(b.requests) == retries + 1
    assert b.requests[0][1] is None
    assert all(r is not None and r.startswith("bytes=") for _p, r in b.requests[1:])


def test_a_connection_closed_early_without_a_length_is_a_cut_transfer(tmp_path, body):
    with serving(Behaviour(body=body, no_length=True, truncate={0})) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with pytest.raises(TransferError) as info:
            fetch(item, retries=0)
    text = _one_line(info)
    assert f"short of the pinned {fetching.size_text(len(body))}" in text
    assert "is kept" in text
    assert _bytes(item.path() + PART_SUFFIX) == body[: len(body) // 2]


def test_a_transfer_cut_once_is_taken_up_where_it_stopped(tmp_path, body):
    b = Behaviour(body=body, truncate={0})
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        notes = []
        result = fetch(item, retries=1, log=notes.append)
    with open(result.path, "rb") as fh:
        assert fh.read() == body
    half = (len(body) // 2) // BLOCK * BLOCK  # what arrived, in whole reads or not
    assert b.requests[1][1] is not None
    offset = int(b.requests[1][1].split("=")[1].rstrip("-"))
    assert half <= offset <= len(body) // 2
    assert any("trying again (1 of 1)" in n for n in notes)
    assert _left(tmp_path) == [item.file_name]


class _Stop(BaseException):
    """Stands for Ctrl-C (not an Exception, as KeyboardInterrupt is not)."""


def _interrupted(item, after):
    def progress(done, total):
        if done >= after:
            raise _Stop

    with pytest.raises(_Stop):
        fetch(item, progress=progress)


def test_an_interrupted_download_resumes_with_range(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        _interrupted(item, 2 * BLOCK)
        part = item.path() + PART_SUFFIX
        assert _left(tmp_path) == [os.path.basename(part)]  # kept for the next run
        kept = os.path.getsize(part)
        assert kept == 2 * BLOCK
        notes = []
        result = fetch(item, log=notes.append)
    assert b.requests[-1][1] == f"bytes={kept}-"
    assert result.resumed_from == kept
    assert result.downloaded == len(body) - kept
    assert result.sha256 == item.sha256
    with open(result.path, "rb") as fh:
        assert fh.read() == body
    assert _left(tmp_path) == [item.file_name]
    assert any("resuming" in n for n in notes)
    assert "resumed at" in result.summary()


def test_a_server_that_ignores_range_sends_it_whole(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        _interrupted(item, BLOCK)
        b.ranges = False
        result = fetch(item)
    assert b.requests[-1][1] == f"bytes={BLOCK}-"  # asked, and got 200 with everything
    assert result.sha256 == item.sha256
    assert result.downloaded == len(body)
    assert _left(tmp_path) == [item.file_name]


def test_a_partial_file_of_another_file_is_downloaded_whole_once(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with open(item.path() + PART_SUFFIX, "wb") as fh:
            fh.write(b"\0" * BLOCK)  # not the start of this file
        notes = []
        result = fetch(item, log=notes.append)
    # The rest does not make the file: asked for whole, it differs from the partial file from
    # its first byte, which is then discarded and said so.
    assert [r for _p, r in b.requests] == [f"bytes={BLOCK}-", None]
    assert result.sha256 == item.sha256
    assert result.resumed_from == 0
    assert result.discarded == BLOCK
    assert any("asking for it whole" in n for n in notes)
    assert any("differs from" in n and "from byte 0:" in n for n in notes), notes
    assert _left(tmp_path) == [item.file_name]


def test_a_whole_partial_file_is_checked_not_downloaded_again(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with open(item.path() + PART_SUFFIX, "wb") as fh:
            fh.write(body)  # complete, but the run was killed before the rename
        result = fetch(item)
        assert b.requests == []
        assert result.resumed_from == len(body)
        assert result.downloaded == 0
        assert _left(tmp_path) == [item.file_name]
        # One as long as the file but not it is proven not of it: discarded, said so, and the
        # file asked for whole.
        os.remove(item.path())
        with open(item.path() + PART_SUFFIX, "wb") as fh:
            fh.write(b"\0" * len(body))
        notes = []
        result = fetch(item, log=notes.append)
    assert [r for _p, r in b.requests] == [None]
    assert result.sha256 == item.sha256
    assert result.discarded == len(body)
    assert any("not of this file, discarded" in n for n in notes)
    assert "discarded" in result.summary()
    assert _left(tmp_path) == [item.file_name]


@pytest.mark.parametrize(("status", "operating", "requests"), [(500, True, 3), (404, False, 1)])
def test_server_errors_are_one_line(tmp_path, body, status, operating, requests):
    b = Behaviour(body=body, status=status)
    with serving(b) as base:
        item = _artifact(tmp_path / "cache", body, base + "/blob.bin")
        with pytest.raises(TransferError) as info:
            fetch(item, retries=2)
    text = _one_line(info)
    assert f"answered HTTP {status}" in text
    assert base in text
    assert info.value.operating_failure is operating
    assert len(b.requests) == requests  # a 5xx is asked again, a 4xx is not
    assert _left(tmp_path) == []


def test_an_unreachable_server_is_one_line(tmp_path, body):
    with serving(Behaviour()) as base:
        pass  # the port is closed now
    item = _artifact(tmp_path, body, base + "/blob.bin")
    with pytest.raises(TransferError) as info:
        fetch(item, retries=0)
    assert "cannot be reached" in _one_line(info)
    assert _left(tmp_path) == []


def test_a_file_in_place_with_another_digest_is_never_replaced(tmp_path, body):
    item = _artifact(tmp_path, body, "http://127.0.0.1:9/never-asked")
    with open(item.path(), "wb") as fh:
        fh.write(b"theirs")
    with pytest.raises(FetchError) as info:
        fetch(item)
    assert "it is not replaced" in _one_line(info)
    with open(item.path(), "rb") as fh:
        assert fh.read() == b"theirs"


def test_two_runs_at_once_download_it_once(tmp_path, body):
    b = Behaviour(body=body, delay=0.002)
    results, errors = [], []
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")

        def run():
            try:
                results.append(fetch(item))
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    assert sorted(r.already_present for r in results) == [False, True]
    assert len(b.requests) == 1
    assert _left(tmp_path) == [item.file_name]


def test_where_the_url_comes_from(tmp_path, body, monkeypatch):
    item = _artifact(tmp_path, body, "https://example.org/published.bin")
    assert resolve_url(item) == "https://example.org/published.bin"
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:1/mirror/")
    assert resolve_url(item) == f"http://127.0.0.1:1/mirror/{item.file_name}"
    monkeypatch.setenv("SHARDEVAL_FETCH_URL_BLOB", "http://127.0.0.1:1/one")
    assert resolve_url(item) == "http://127.0.0.1:1/one"
    assert resolve_url(item, "http://127.0.0.1:1/given") == "http://127.0.0.1:1/given"
    with pytest.raises(FetchError, match=r"not an http:// or https:// URL; give one with url=URL"):
        resolve_url(item, "file:///etc/passwd")
    with pytest.raises(FetchError, match="known: inception"):
        fetch("nonsense")
    with serving(Behaviour(body=body)) as base:
        monkeypatch.delenv("SHARDEVAL_FETCH_URL_BLOB")
        monkeypatch.setenv(MIRROR_ENV, base)
        assert fetch(item).url == f"{base}/{item.file_name}"


def test_the_inception_weights_are_pinned_where_extraction_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert ARTIFACTS["inception"] is INCEPTION
    assert INCEPTION.path() == inception_path()
    assert INCEPTION.path() == str(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE)
    assert INCEPTION.full_digest
    assert INCEPTION.verification == "sha256"
    # torch hub's check_hash convention: the name carries the digest's first 8 hex digits.
    prefix = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]
    assert INCEPTION.sha256.startswith(prefix)
    assert len(prefix) == 8
    assert INCEPTION.url == (
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
    )


def test_nothing_is_fetched_on_import():
    import subprocess
    import sys

    code = (
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('network')\n"
        "socket.socket.connect = refuse\n"
        "import shardeval, shardeval.pipeline.io.fetch, shardeval.api.fetching\n"
        "import shardeval.workflows.cli.fetch\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout == "ok\n", out.stderr


# ---------------------------------------------------------------------------------------------
# A partial file is kept unless it is proven wrong.


def _bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("then", ["unreachable", "500", "404", "truncated", "no-range-cut"])
def test_a_failed_resume_keeps_the_partial_file(tmp_path, body, then):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        _interrupted(item, 4 * BLOCK)
        part = item.path() + PART_SUFFIX
        kept = _bytes(part)
        assert kept == body[: 4 * BLOCK]
        b.status = {"500": 500, "404": 404}.get(then, 0)
        b.truncate = set(range(len(b.requests), len(b.requests) + 5))
        # A server that ignores Range sends from the first byte, and is cut before it passes
        # what the partial file holds: the partial file is not shortened.
        b.ranges = then != "no-range-cut"
        if then != "unreachable":
            with pytest.raises(TransferError) as info:
                fetch(item, retries=1)
    if then == "unreachable":  # the server is gone: connection refused
        with pytest.raises(TransferError) as info:
            fetch(item, retries=1)
    text = _one_line(info)
    assert f"the partial file {part} ({_size_words(os.path.getsize(part))}) is kept" in text
    now = _bytes(part)
    assert now[: len(kept)] == kept  # nothing of it was lost
    assert now == body[: len(now)]  # and what came since is the file's next bytes
    with serving(Behaviour(body=body)) as base:
        result = fetch(item, url=base + "/blob.bin")
    assert result.resumed_from == len(now)
    assert _bytes(result.path) == body
    assert _left(tmp_path) == [item.file_name]


def _size_words(n):
    return fetching.size_text(n)


def test_a_partial_file_longer_than_the_pinned_size_is_discarded_and_said(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with open(item.path() + PART_SUFFIX, "wb") as fh:
            fh.write(body + b"more")
        notes = []
        result = fetch(item, log=notes.append)
    assert [r for _p, r in b.requests] == [None]  # no Range asked past the file's end
    assert any("longer than" in n and "discarded" in n for n in notes)
    assert result.discarded == len(body) + 4
    assert _bytes(result.path) == body
    # Discarded, and then the server is unreachable: no empty partial file is left behind.
    os.remove(result.path)
    with open(item.path() + PART_SUFFIX, "wb") as fh:
        fh.write(body + b"more")
    with pytest.raises(TransferError) as info:
        fetch(item, retries=0)  # the server is gone
    assert "nothing was kept" in _one_line(info)
    assert _left(tmp_path) == []


def test_a_partial_file_that_disagrees_with_the_server_is_discarded_from_there(tmp_path, body):
    b = Behaviour(body=body, ranges=False)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with open(item.path() + PART_SUFFIX, "wb") as fh:
            fh.write(body[: 2 * BLOCK] + b"\0" * BLOCK)  # right, then wrong from 2 * BLOCK
        notes = []
        result = fetch(item, log=notes.append)
    assert any("differs from" in n and f"{2 * BLOCK:,}" in n for n in notes), notes
    assert result.resumed_from == 2 * BLOCK
    assert result.discarded == BLOCK
    assert _bytes(result.path) == body


# ---------------------------------------------------------------------------------------------
# The pinned size bounds what is written.


def test_a_server_streaming_without_end_is_stopped_at_the_pinned_size(tmp_path, body):
    b = Behaviour(body=body, no_length=True, endless=True, endless_cap=40 * len(body))
    seen = []
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with pytest.raises(fetching.SizeMismatchError) as info:
            fetch(item, progress=lambda done, total: seen.append(done))
    text = _one_line(info)
    assert f"more than the pinned {len(body):,} bytes" in text
    assert max(seen) <= len(body)  # never written past the pinned size
    assert len(b.requests) == 1  # refused, not asked again
    assert _left(tmp_path) == []


@pytest.mark.parametrize("change", [b"extra", -7])
def test_a_content_length_other_than_the_pinned_size_is_refused(tmp_path, body, change):
    served = body + change if isinstance(change, bytes) else body[:change]
    b = Behaviour(body=served)
    seen = []
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with pytest.raises(fetching.SizeMismatchError) as info:
            fetch(item, progress=lambda done, total: seen.append(done))
    text = _one_line(info)
    assert f"Content-Length {len(served):,}" in text
    assert f"pinned {len(body):,} bytes" in text
    assert seen == []  # nothing written
    assert len(b.requests) == 1
    assert _left(tmp_path) == []


def test_a_resume_from_a_file_of_another_size_is_refused_keeping_the_partial(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        _interrupted(item, 2 * BLOCK)
        b.body = body + b"a longer file"
        with pytest.raises(fetching.SizeMismatchError) as info:
            fetch(item)
        assert "Content-Range" in _one_line(info)
        assert _bytes(item.path() + PART_SUFFIX) == body[: 2 * BLOCK]
        b.body = body[: 2 * BLOCK]  # a shorter one: nothing past the partial file (416)
        with pytest.raises(fetching.SizeMismatchError) as info:
            fetch(item)
        assert "416" in _one_line(info)
        assert _bytes(item.path() + PART_SUFFIX) == body[: 2 * BLOCK]


def test_a_transfer_cut_without_a_length_resumes(tmp_path, body):
    b = Behaviour(body=body, no_length=True, truncate={0})
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        result = fetch(item, retries=1)
    assert b.requests[1][1] is not None  # the rest was asked for
    assert _bytes(result.path) == body


# ---------------------------------------------------------------------------------------------
# What is in place and not shardeval's is never written through, replaced or removed.


def test_a_folder_at_the_target_is_refused_before_downloading(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        os.makedirs(os.path.join(item.path(), "theirs"))
        with pytest.raises(FetchError) as info:
            fetch(item)
    assert "is a folder" in _one_line(info)
    assert b.requests == []
    assert os.path.isdir(os.path.join(item.path(), "theirs"))
    assert _left(tmp_path) == []


@pytest.mark.parametrize("points_to", ["nothing", "folder"])
def test_a_symlink_at_the_target_that_is_not_a_file_is_refused(tmp_path, body, points_to):
    b = Behaviour(body=body)
    elsewhere = tmp_path / "elsewhere"
    if points_to == "folder":
        elsewhere.mkdir()
    with serving(b) as base:
        item = _artifact(tmp_path / "cache", body, base + "/blob.bin")
        os.makedirs(tmp_path / "cache")
        os.symlink(elsewhere, item.path())
        with pytest.raises(FetchError) as info:
            fetch(item)
    assert "symbolic link" in _one_line(info)
    assert b.requests == []
    assert os.readlink(item.path()) == str(elsewhere)
    assert not os.path.exists(item.path() + PART_SUFFIX)


def test_a_symlink_to_the_pinned_file_is_verified_in_place(tmp_path, body):
    item = _artifact(tmp_path / "cache", body, "http://127.0.0.1:9/never-asked")
    os.makedirs(tmp_path / "cache")
    with open(tmp_path / "weights", "wb") as fh:
        fh.write(body)
    os.symlink(tmp_path / "weights", item.path())
    assert fetch(item).already_present


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "folder", "fifo"])
def test_a_partial_file_path_that_is_not_shardevals_is_not_touched(tmp_path, body, kind):
    b = Behaviour(body=body)
    theirs = tmp_path / "theirs.bin"
    theirs.write_bytes(b"their own bytes")
    with serving(b) as base:
        item = _artifact(tmp_path / "cache", body, base + "/blob.bin")
        os.makedirs(tmp_path / "cache")
        part = item.path() + PART_SUFFIX
        if kind == "symlink":
            os.symlink(theirs, part)
        elif kind == "hardlink":
            os.link(theirs, part)
        elif kind == "folder":
            os.makedirs(part)
        else:
            os.mkfifo(part)
        outcome = []

        def run():
            try:
                outcome.append(fetch(item))
            except Exception as exc:  # examined below
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(20)
    assert outcome, "fetch hung on the partial file's path"
    (exc,) = outcome
    assert isinstance(exc, FetchError), exc
    assert "\n" not in str(exc)
    assert "not touched" in str(exc)
    assert b.requests == []
    assert theirs.read_bytes() == b"their own bytes"
    assert not os.path.lexists(item.path())


@pytest.mark.parametrize("theirs_is_pinned", [False, True])
def test_a_target_that_appears_during_the_download_is_not_replaced(
    tmp_path, body, theirs_is_pinned
):
    b = Behaviour(body=body)
    theirs = body if theirs_is_pinned else b"written by another program"
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")

        def progress(done, total):
            if not os.path.exists(item.path()):
                with open(item.path(), "wb") as fh:
                    fh.write(theirs)

        if theirs_is_pinned:
            result = fetch(item, progress=progress)
            assert result.already_present
            assert _left(tmp_path) == [item.file_name]
        else:
            with pytest.raises(FetchError) as info:
                fetch(item, progress=progress)
            text = _one_line(info)
            assert "appeared" in text
            assert "not replaced" in text
            assert _bytes(item.path() + PART_SUFFIX) == body  # the checked download, kept
    assert _bytes(item.path()) == theirs


def test_a_server_sending_too_much_over_a_partial_file_keeps_the_partial_file(tmp_path, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        _interrupted(item, 2 * BLOCK)
        b.ranges, b.no_length, b.endless = False, True, True
        b.endless_cap = 10 * len(body)
        with pytest.raises(fetching.SizeMismatchError) as info:
            fetch(item)
    text = _one_line(info)
    assert "more than the pinned" in text
    assert f"the {fetching.size_text(len(body) - 2 * BLOCK)} it sent are discarded" in text
    assert f"({fetching.size_text(2 * BLOCK)}) is kept" in text
    assert _bytes(item.path() + PART_SUFFIX) == body[: 2 * BLOCK]


def test_without_hard_links_the_file_is_put_in_place_by_a_checked_rename(
    tmp_path, body, monkeypatch
):
    import errno

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fetching.os, "link", no_links)
    b = Behaviour(body=body)
    with serving(b) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        assert _bytes(fetch(item).path) == body
        os.remove(item.path())

        def progress(done, total):
            if not os.path.exists(item.path()):
                with open(item.path(), "wb") as fh:
                    fh.write(b"theirs")

        with pytest.raises(FetchError, match="appeared while this download ran"):
            fetch(item, progress=progress)
    assert _bytes(item.path()) == b"theirs"
    assert _bytes(item.path() + PART_SUFFIX) == body


def test_a_folder_removed_by_another_run_is_made_again(tmp_path, body, monkeypatch):
    """A run that made the checkpoint folder and failed removes it when it holds nothing; a
    second run that was waiting for the first then finds no folder for its partial file, and
    makes it again (here the first run's removal is played between the second's steps)."""
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    opened = fetch_partial._open_part
    removed = []

    def first_run_cleans_up(part):
        if not removed:  # the other run's cleanup: its folders, empty, go
            os.rmdir(folder)
            os.rmdir(folder.parent)
            removed.append(True)
        return opened(part)

    monkeypatch.setattr(fetch_partial, "_open_part", first_run_cleans_up)
    with serving(Behaviour(body=body)) as base:
        item = _artifact(folder, body, base + "/blob.bin")
        result = fetch(item)
    assert removed
    with open(result.path, "rb") as fh:
        assert fh.read() == body
    assert _left(tmp_path) == [os.path.join("torch", "hub", "checkpoints", item.file_name)]


def test_a_stalled_transfer_says_the_bytes_it_received_and_keeps_them(tmp_path, body):
    # The server sends one block of 4,096 bytes, then nothing for longer than the timeout:
    # the message said "cut at 0 bytes" and the block was lost.
    with serving(Behaviour(body=body, delay=5.0)) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with pytest.raises(TransferError) as info:
            fetch(item, timeout=0.5, retries=0)
    assert "cut at 4,096 bytes" in _one_line(info)
    with open(item.path() + PART_SUFFIX, "rb") as fh:
        assert fh.read() == body[:4096]  # kept for the next run to resume
