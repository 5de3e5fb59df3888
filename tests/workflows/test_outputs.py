"""A command never replaces or deletes what it did not write: an existing output of another
kind is refused, one of its own kind only with --overwrite, and the refusal comes before any
compute."""

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from shardeval.workflows.cli import main
from tests.conftest import write_zarr


def _tree_digest(path):
    """Digest of every file under ``path`` (names and bytes)."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()


def _state(victim):
    if os.path.isdir(victim):
        return _tree_digest(victim)
    with open(victim, "rb") as fh:
        return fh.read()


def _refused(capsys, argv, victim):
    before = _state(victim)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    after = _state(victim)
    assert code == 2, err
    assert err.count("\n") == 1
    assert before == after
    return err


@pytest.fixture
def store(tmp_path, rng):
    return write_zarr(tmp_path / "x.zarr", rng.normal(size=(300, 4)).astype(np.float32))


def test_stats_refuses_a_feature_store_a_history_and_a_directory(tmp_path, capsys, store, rng):
    victim = write_zarr(tmp_path / "victim.zarr", rng.normal(size=(50, 4)).astype(np.float32))
    err = _refused(capsys, ["stats", store, "-o", victim, "-q"], victim)
    assert "is not a statistics file" in err
    _refused(capsys, ["stats", store, "-o", victim, "--overwrite", "-q"], victim)
    somedir = tmp_path / "somedir"
    somedir.mkdir()
    (somedir / "notes.txt").write_text("mine")
    _refused(capsys, ["stats", store, "-o", somedir, "--overwrite", "-q"], somedir)


def test_stats_replaces_its_own_kind_only_when_asked(tmp_path, capsys, store):
    out = tmp_path / "s.zarr"
    assert main(["stats", store, "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    err = _refused(capsys, ["stats", store, "-o", out, "-q"], out)
    assert "--overwrite" in err
    assert main(["stats", store, "-o", str(out), "--overwrite", "-q"]) == 0


def test_synth_refuses_foreign_stores(tmp_path, capsys, store):
    _refused(capsys, ["synth", store, "--n", "10", "--d", "4"], store)
    out = tmp_path / "synth.zarr"
    assert main(["synth", str(out), "--n", "10", "--d", "4"]) == 0
    capsys.readouterr()
    _refused(capsys, ["synth", out, "--n", "20", "--d", "4"], out)
    assert main(["synth", str(out), "--n", "20", "--d", "4", "--overwrite"]) == 0


def test_report_never_replaces_a_readme(tmp_path, capsys, store):
    from shardeval.workflows.history import History, HistoryRow

    history = tmp_path / "h.zarr"
    from shardeval.pipeline.metrics import METRICS

    row = HistoryRow("e", "x", 1, "", "f", "o", "r", "rf", "j", "{}", 0.1, "now")
    History(history).append(row, {"fid": 1.0}, {"fid": METRICS["fid"].declaration()}, d=4)
    readme = tmp_path / "README.md"
    readme.write_text("# my project\n")
    _refused(capsys, ["report", history, "-o", tmp_path / "README.html"], readme)
    assert main(["report", str(history), "-o", str(tmp_path / "r.html")]) == 0
    capsys.readouterr()
    _refused(capsys, ["report", history, "-o", tmp_path / "r.html"], tmp_path / "r.md")
    assert main(["report", str(history), "-o", str(tmp_path / "r.html"), "--overwrite"]) == 0


def test_json_report_refused_before_compute(tmp_path, capsys, store):
    foreign = tmp_path / "data.json"
    foreign.write_text(json.dumps({"mine": 1}))
    _refused(capsys, ["fid", store, store, "--out", foreign, "-q"], foreign)
    _refused(capsys, ["fid", store, store, "--out", foreign, "--overwrite", "-q"], foreign)
    ours = tmp_path / "fid.json"
    assert main(["fid", store, store, "--out", str(ours), "-q"]) == 0
    capsys.readouterr()
    _refused(capsys, ["fid", store, store, "--out", ours, "-q"], ours)
    assert main(["fid", store, store, "--out", str(ours), "--overwrite", "-q"]) == 0


def test_stats_refuses_an_output_inside_its_input(tmp_path, capsys, store):
    # `stats x.zarr -o x.zarr/stats` wrote a statistics group into the feature store.
    err = _refused(capsys, ["stats", store, "-o", os.path.join(store, "stats"), "-q"], store)
    assert "is inside the input" in err
    one = tmp_path / "one.zarr"
    assert main(["stats", store, "-o", str(one), "-q"]) == 0
    two = tmp_path / "two.zarr"
    assert main(["stats", store, "-o", str(two), "-q"]) == 0
    capsys.readouterr()
    inside = ["stats", "merge", one, two, "-o", one / "merged.zarr"]
    assert "is inside the input" in _refused(capsys, inside, one)


def test_synth_never_replaces_a_npy_it_cannot_tell_it_wrote(tmp_path, capsys, rng):
    # Any 2-D float32 .npy passed as "a synthetic feature store": --overwrite replaced a
    # user's feature dump.
    victim = tmp_path / "features.npy"
    np.save(victim, rng.random((50, 4), dtype=np.float32))
    _refused(capsys, ["synth", victim, "--n", "4", "--d", "2", "--overwrite"], victim)


def test_outputs_get_the_permissions_of_any_new_file(tmp_path, capsys, store):
    # Written through a temporary file: reports and .npz came out 0600, Zarr groups 0700.
    old = os.umask(0o022)
    try:
        assert main(["stats", store, "-o", str(tmp_path / "s.npz"), "-q"]) == 0
        assert main(["stats", store, "-o", str(tmp_path / "s.zarr"), "-q"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    assert os.stat(tmp_path / "s.npz").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "s.zarr").st_mode & 0o777 == 0o755


# -- outputs that are pipes, FIFOs and devices ---------------------------------------------------
# `--out /dev/stdout | cat` hung for ever: the check for an existing report opened the path to
# read it, and /dev/stdout is the command's own pipe (a named FIFO waited for a writer). Such an
# output is written in place, never read, renamed onto or replaced.

EXE = os.path.join(os.path.dirname(sys.executable), "shardeval")
#: Every subprocess here ends within this many seconds, or the test fails (a hang is a failure).
DEADLINE = 120


def _run(argv, **kwargs):
    return subprocess.run([EXE, *(str(a) for a in argv)], timeout=DEADLINE, check=False, **kwargs)


def _expected_fid(feature_pair):
    from tests.reference import exact_fid, np_stats

    _, real, _, gen = feature_pair
    return exact_fid(*np_stats(real), *np_stats(gen))


def test_json_report_to_dev_stdout_through_a_pipe(feature_pair):
    real, _, gen, _ = feature_pair
    done = _run(["fid", real, gen, "--out", "/dev/stdout", "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the report alone: the summary went to stderr
    assert report["fid"]["fid"] == pytest.approx(_expected_fid(feature_pair), rel=1e-6)
    assert done.stderr.startswith("FID ")
    again = _run(
        ["fid", real, gen, "--out", "/dev/stdout", "--json", "-q"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["fid"]["fid"] == report["fid"]["fid"]  # once, not twice


def test_json_report_to_dev_stderr_through_a_pipe(feature_pair):
    real, _, gen, _ = feature_pair
    done = _run(["fid", real, gen, "--out", "/dev/stderr", "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stderr)
    assert report["fid"]["fid"] == pytest.approx(_expected_fid(feature_pair), rel=1e-6)
    assert done.stdout.startswith("FID ")


def test_json_report_to_dev_stdout_redirected_to_a_file_keeps_what_it_holds(tmp_path, feature_pair):
    # `>> log`: /dev/stdout is then a regular file the shell opened; it is written where the
    # shell's descriptor points (appended), never truncated, renamed onto or refused.
    real, _, gen, _ = feature_pair
    log = tmp_path / "ci.log"
    log.write_text("earlier line\n")
    with open(log, "a") as fh:
        done = _run(["fid", real, gen, "--out", "/dev/stdout", "--json", "-q"], stdout=fh)
    assert done.returncode == 0
    first, rest = log.read_text().split("\n", 1)
    assert first == "earlier line"
    assert json.loads(rest)["fid"]["fid"] == pytest.approx(_expected_fid(feature_pair), rel=1e-6)
    assert os.path.islink("/dev/stdout")  # the system's link was not replaced


@contextlib.contextmanager
def _fifo_reader(path):
    """A FIFO at ``path`` and a process reading it to its end (as `| jq` would); yields a
    function that returns what it read. The reader is ended however the test ends."""
    os.mkfifo(path)
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)

    def read_all():
        return reader.communicate(timeout=DEADLINE)[0]

    try:
        yield read_all
    finally:
        reader.kill()
        reader.communicate()


def test_json_report_to_a_named_fifo(tmp_path, feature_pair):
    real, _, gen, _ = feature_pair
    fifo = tmp_path / "report.fifo"
    with _fifo_reader(fifo) as read_all:
        done = _run(["fid", real, gen, "--out", fifo, "-q"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        report = json.loads(read_all())
    assert report["fid"]["fid"] == pytest.approx(_expected_fid(feature_pair), rel=1e-6)
    assert done.stdout.startswith("FID ")  # stdout is not the output: the summary stays there
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, not replaced


def test_statistics_to_a_named_fifo_are_npz_bytes(tmp_path, feature_pair):
    from shardeval.pipeline.io.statsio import load_stats
    from tests.reference import np_stats

    real, x, _, _ = feature_pair
    fifo = tmp_path / "stats.fifo"
    with _fifo_reader(fifo) as read_all:
        done = _run(["stats", real, "-o", fifo, "-q"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        (tmp_path / "copy.npz").write_bytes(read_all())
    stats = load_stats(tmp_path / "copy.npz")
    mu, sigma = np_stats(x)
    np.testing.assert_allclose(stats.mean, mu, rtol=1e-6)
    np.testing.assert_allclose(stats.covariance(), sigma, rtol=1e-5, atol=1e-7)


def test_html_report_to_dev_stdout_writes_no_markdown_beside_it(tmp_path, capsys):
    from shardeval.pipeline.metrics import METRICS
    from shardeval.workflows.history import History, HistoryRow

    history = tmp_path / "h.zarr"
    row = HistoryRow("e", "x", 1, "", "f", "o", "r", "rf", "j", "{}", 0.1, "now")
    History(history).append(row, {"fid": 1.0}, {"fid": METRICS["fid"].declaration()}, d=4)
    done = _run(["report", history, "-o", "/dev/stdout"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<!DOCTYPE html>")
    assert done.stdout.rstrip().endswith("</html>")
    assert "no Markdown" in done.stderr
    assert not os.path.exists("/dev/stdout.md")


def test_dev_null_is_written_and_a_folder_output_refuses_a_pipe(tmp_path, capsys, store):
    assert main(["fid", store, store, "--out", "/dev/null", "-q"]) == 0
    assert main(["stats", store, "-o", "/dev/null", "-q"]) == 0
    capsys.readouterr()
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    from shardeval.pipeline.io.atomic import OutputExistsError, atomic_dir, claim_output

    refused = "is a pipe, FIFO or device"
    with pytest.raises(OutputExistsError, match=refused):
        claim_output("/dev/null", "feature store", lambda p: True, overwrite=True)
    with pytest.raises(OutputExistsError, match=refused), atomic_dir("/dev/null"):
        pass


def test_synthetic_features_through_a_pipe_are_npy_bytes():
    import io

    from shardeval.pipeline.io.synthetic import gaussian_features

    argv = ["synth", "/dev/stdout", "--n", "50", "--d", "3", "--seed", "4"]
    done = _run(argv, capture_output=True)
    assert done.returncode == 0, done.stderr
    got = np.load(io.BytesIO(done.stdout), allow_pickle=False)
    expected = gaussian_features(50, 3, shard_rows=4096, seed=4).compute()
    np.testing.assert_array_equal(got, expected)
    assert done.stderr.startswith(b"wrote 50 x 3 synthetic features")
