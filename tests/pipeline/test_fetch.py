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
    other = Artifact("blob", "t", item.file_name, item.url, "0" * 8, "test", lambda: str(tmp_path))
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
def test_a_truncated_transfer_is_refused_and_nothing_is_left(tmp_path, body, retries):
    b = Behaviour(body=body, truncate=set(range(10)))
    with serving(b) as base:
        item = _artifact(tmp_path / "cache", body, base + "/blob.bin")
        with pytest.raises(TransferError) as info:
            fetch(item, retries=retries)
    text = _one_line(info)
    assert "truncated" in text
    assert f"after {retries + 1} attempt" in text
    assert info.value.operating_failure
    assert _left(tmp_path) == []
    # Each retry asked for the rest only.
    assert len(b.requests) == retries + 1
    assert b.requests[0][1] is None
    assert all(r is not None and r.startswith("bytes=") for _p, r in b.requests[1:])


def test_a_connection_closed_without_a_length_fails_the_digest(tmp_path, body):
    with serving(Behaviour(body=body, no_length=True, truncate={0})) as base:
        item = _artifact(tmp_path, body, base + "/blob.bin")
        with pytest.raises(DigestMismatchError) as info:
            fetch(item)
    assert "sent" in _one_line(info)
    assert _left(tmp_path) == []


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
    assert [r for _p, r in b.requests] == [f"bytes={BLOCK}-", None]
    assert result.sha256 == item.sha256
    assert result.resumed_from == 0
    assert any("downloading it whole" in n for n in notes)
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
        # One as long as the file but not it: 416 (nothing past its end), then all again.
        os.remove(item.path())
        with open(item.path() + PART_SUFFIX, "wb") as fh:
            fh.write(b"\0" * len(body))
        result = fetch(item)
    assert [r for _p, r in b.requests] == [f"bytes={len(body)}-", None]
    assert result.sha256 == item.sha256
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
