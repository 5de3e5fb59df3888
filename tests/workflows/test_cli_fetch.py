"""``shardeval fetch``: the right file lands where ``extract`` reads it; a wrong digest, a
truncated transfer or a server error is one line, exit non-zero, nothing left; ``--help`` and
``--list`` explain; ``extract`` without weights names the command that brings them."""

import hashlib
import json
import os

import numpy as np
import pytest

import shardeval.pipeline.io.fetch as fetching
from shardeval.kernels.encoders.weights import INCEPTION_FILE
from shardeval.workflows.cli import main
from tests.pipeline.fetch_server import Behaviour, serving


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setattr(fetching, "_RETRY_DELAY", 0.0)
    monkeypatch.delenv(fetching.MIRROR_ENV, raising=False)
    monkeypatch.delenv("SHARDEVAL_FETCH_URL_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture
def body():
    return np.random.default_rng(3).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


@pytest.fixture
def blob(tmp_path, body, monkeypatch):
    """A test artifact beside the Inception, pinned to ``body``'s SHA-256."""
    sha = hashlib.sha256(body).hexdigest()
    item = fetching.Artifact(
        "blob",
        "a test file",
        f"blob-{sha[:8]}.bin",
        "http://127.0.0.1:9/x",
        sha,
        len(body),
        "this test",
        lambda: str(tmp_path / "blobs"),
    )
    monkeypatch.setitem(fetching.ARTIFACTS, "blob", item)
    return item


def _files(folder):
    return sorted(f for _r, _d, files in os.walk(folder) for f in files)


def _fails(capsys, argv, code, *words):
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.err.startswith("shardeval: error:"), captured.err
    assert captured.err.count("\n") == 1, captured.err
    for word in words:
        assert word in captured.err, captured.err
    return captured.err


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fetch", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for words in ("SHA-256", "HTTP Range", "TORCH_HOME", "SHARDEVAL_FETCH_MIRROR", INCEPTION_FILE):
        assert words in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "shardeval fetch" in capsys.readouterr().out


def test_list_names_the_url_digest_and_place(capsys, torch_home):
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert fetching.INCEPTION.sha256 in out
    assert fetching.INCEPTION.url in out
    assert str(torch_home / "hub" / "checkpoints" / INCEPTION_FILE) in out
    assert "(missing)" in out
    assert "full SHA-256" in out
    assert main(["fetch", "inception", "--list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["fetchable"]
    assert (row["name"], row["present"], row["verified"]) == ("inception", False, "sha256")


def _place(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def test_list_says_whether_the_file_in_place_is_the_pinned_one(capsys, torch_home, blob, body):
    inception = str(torch_home / "hub" / "checkpoints" / INCEPTION_FILE)
    _place(inception, b"an Inception of another layout")  # another size: no hashing needed
    _place(blob.path(), body[::-1])  # the pinned size, other bytes: hashed
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"{INCEPTION_FILE} (present, not the pinned file:" in out
    assert f"{blob.file_name} (present, not the pinned file:" in out
    assert hashlib.sha256(body[::-1]).hexdigest() in out  # what it is, for the user to compare
    assert "(present)" not in out
    assert main(["fetch", "--list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["fetchable"]}
    assert (rows["inception"]["present"], rows["inception"]["pinned_in_place"]) == (True, False)
    assert rows["blob"]["found_sha256"] == hashlib.sha256(body[::-1]).hexdigest()
    # The pinned file: said so, with what the check cost.
    _place(blob.path(), body)
    assert main(["fetch", "blob", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"{blob.file_name} (present, the pinned file: SHA-256 of {len(body):,} bytes" in out
    assert main(["fetch", "blob", "--list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["fetchable"]
    assert (row["present"], row["pinned_in_place"]) == (True, True)
    assert row["found_sha256"] == blob.sha256
    # Something that is not a file.
    os.remove(blob.path())
    os.makedirs(blob.path())
    assert main(["fetch", "blob", "--list"]) == 0
    assert f"{blob.file_name} (present, not a file: a folder)" in capsys.readouterr().out


def test_the_right_file_lands(capsys, blob, body):
    b = Behaviour(body=body)
    with serving(b) as base:
        assert main(["fetch", "blob", "--url", base + "/f", "-q"]) == 0
        out = capsys.readouterr().out
        assert blob.path() in out
        assert "SHA-256 verified" in out
        with open(blob.path(), "rb") as fh:
            assert fh.read() == body
        assert main(["fetch", "blob", "--json", "-q"]) == 0
        (done,) = json.loads(capsys.readouterr().out)["fetched"]
    assert done["already_present"]
    assert done["sha256"] == blob.sha256
    assert len(b.requests) == 1


def test_progress_and_the_mirror(capsys, blob, body, monkeypatch):
    with serving(Behaviour(body=body)) as base:
        monkeypatch.setenv(fetching.MIRROR_ENV, base)
        assert main(["fetch", "blob"]) == 0
    captured = capsys.readouterr()
    assert f"{base}/{blob.file_name}" in captured.out
    assert "blob: 0.3/0.3 MiB" in captured.err  # the bar, in a log's words (not a terminal)


@pytest.mark.parametrize(
    ("behaviour", "code", "words", "left"),
    [
        (lambda body: Behaviour(body=body[::-1]), 2, ("SHA-256", "refused, nothing was kept"), 0),
        (lambda body: Behaviour(body=body, truncate={0, 1}), 1, ("truncated", "2 attempts"), 1),
        (lambda body: Behaviour(status=500), 1, ("HTTP 500", "nothing was kept"), 0),
        (lambda body: Behaviour(status=404), 2, ("HTTP 404", "nothing was kept"), 0),
    ],
    ids=["wrong-digest", "truncated", "500", "404"],
)
def test_failures_are_one_line(capsys, tmp_path, blob, body, behaviour, code, words, left):
    with serving(behaviour(body)) as base:
        err = _fails(
            capsys,
            ["fetch", "blob", "--url", base + "/w.pth", "--retries", "1", "-q"],
            code,
            "blob: ",
            *words,
        )
    # What arrived of a cut transfer is kept for the next run; nothing else is left.
    assert _files(tmp_path / "blobs") == [blob.file_name + ".part"] * left
    if left:
        assert "is kept: fetch again to resume" in err


def test_a_file_of_another_size_is_refused_before_it_is_written(capsys, torch_home, body):
    with serving(Behaviour(body=body)) as base:
        _fails(
            capsys,
            ["fetch", "inception", "--url", base + "/w.pth", "-q"],
            2,
            f"Content-Length {len(body):,}",
            f"pinned {fetching.INCEPTION.size:,} bytes",
        )
    assert _files(torch_home) == []


def test_a_failure_after_a_drawn_bar_is_still_one_line(capsys, blob, body):
    with serving(Behaviour(body=body[::-1])) as base:
        assert main(["fetch", "blob", "--url", base + "/w.pth"]) == 2
    err = capsys.readouterr().err
    assert "blob: 0.3/0.3 MiB" in err  # the bar was drawn
    assert err.splitlines()[-1].startswith("shardeval: error: blob: ")


def test_usage_errors(capsys):
    _fails(capsys, ["fetch", "nonsense"], 2, "'nonsense'", "known: inception")
    _fails(capsys, ["fetch", "inception", "--list", "--url", "http://127.0.0.1:9/"], 2, "--list")
    _fails(capsys, ["fetch", "inception", "--url", "ftp://x/y"], 2, "--url URL")
    _fails(capsys, ["fetch", "inception", "--retries", "-1"], 2, "--retries")


def test_extract_without_weights_names_the_fetch_command(capsys, tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((2, 8, 8, 3), np.uint8))
    err = _fails(
        capsys,
        ["extract", str(images), "-o", str(tmp_path / "out.zarr"), "-q"],
        2,
        INCEPTION_FILE,
        "`shardeval fetch inception`",
        "--weights PATH",
    )
    assert "weights=PATH" not in err
    assert not os.path.exists(tmp_path / "out.zarr")


# ---------------------------------------------------------------------------------------------
# Every option of `fetch` changes something or is refused (tests/workflows/test_options.py
# takes these into its table: `**FETCH_CHECKS`). Each check has that table's signature.


def _fetch_env(monkeypatch):
    import tempfile

    folder = tempfile.mkdtemp(prefix="fetch-check-")
    monkeypatch.setattr(fetching, "_RETRY_DELAY", 0.0)
    monkeypatch.delenv(fetching.MIRROR_ENV, raising=False)
    monkeypatch.delenv("SHARDEVAL_FETCH_URL_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", folder)
    return folder


def _code(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check_fetch_url(capsys, files, command, monkeypatch):
    folder = _fetch_env(monkeypatch)
    b = Behaviour(body=b"not the weights")
    with serving(b) as base:
        code, _, err = _code(capsys, "fetch", "inception", "--url", f"{base}/w.pth", "-q")
    assert code == 2, err
    assert b.requests == [("/w.pth", None)]  # downloaded from there, and refused
    assert _files(folder) == []


def check_fetch_list(capsys, files, command, monkeypatch):
    folder = _fetch_env(monkeypatch)
    b = Behaviour(body=b"x")
    with serving(b) as base:
        monkeypatch.setenv(fetching.MIRROR_ENV, base)
        code, out, _ = _code(capsys, "fetch", "--list")
    assert code == 0
    assert f"{base}/{INCEPTION_FILE}" in out
    assert b.requests == []  # listed, not downloaded
    assert _files(folder) == []


def check_fetch_retries(capsys, files, command, monkeypatch):
    _fetch_env(monkeypatch)
    counts = []
    for retries in ("0", "2"):
        b = Behaviour(status=503)
        with serving(b) as base:
            code, _, err = _code(
                capsys, "fetch", "inception", "--url", f"{base}/w", "--retries", retries, "-q"
            )
        assert code == 1, err
        counts.append(len(b.requests))
    assert counts == [1, 3]


def check_fetch_timeout(capsys, files, command, monkeypatch):
    _fetch_env(monkeypatch)
    b = Behaviour(body=b"x" * 100_000, no_length=True, delay=0.5)
    with serving(b) as base:
        argv = ["fetch", "inception", "--url", f"{base}/w", "--retries", "0", "-q"]
        code, _, err = _code(capsys, *argv, "--timeout", "0.1")
    assert code == 1, err
    assert "cut" in err or "cannot be reached" in err


def check_fetch_json(capsys, files, command, monkeypatch):
    _fetch_env(monkeypatch)
    code, out, _ = _code(capsys, "fetch", "--list", "--json")
    assert code == 0
    assert json.loads(out)["fetchable"][0]["name"] == "inception"


def check_fetch_quiet(capsys, files, command, monkeypatch):
    errs = []
    for quiet in ([], ["-q"]):
        _fetch_env(monkeypatch)  # a fresh place: no partial file of the run before
        with serving(Behaviour(body=b"y" * 50_000, no_length=True)) as base:
            argv = ["fetch", "inception", "--url", f"{base}/w", "--retries", "0", *quiet]
            code, _, err = _code(capsys, *argv)
        assert code == 1
        errs.append(err)
    assert "inception: " in errs[0].splitlines()[0]  # the progress bar
    assert errs[1].count("\n") == 1  # the error alone


FETCH_CHECKS = {
    ("fetch", "url"): check_fetch_url,
    ("fetch", "list"): check_fetch_list,
    ("fetch", "retries"): check_fetch_retries,
    ("fetch", "timeout"): check_fetch_timeout,
    ("fetch", "json"): check_fetch_json,
    ("fetch", "quiet"): check_fetch_quiet,
}


def test_fetch_has_a_check_for_every_option():
    from shardeval.workflows.cli.parser import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    options = {
        ("fetch", a.dest)
        for a in sub.choices["fetch"]._actions
        if a.option_strings and a.dest != "help"
    }
    assert options == set(FETCH_CHECKS)


@pytest.mark.parametrize("key", sorted(FETCH_CHECKS))
def test_fetch_option_changes_something_or_is_refused(capsys, monkeypatch, key):
    FETCH_CHECKS[key](capsys, {}, key[0], monkeypatch)
