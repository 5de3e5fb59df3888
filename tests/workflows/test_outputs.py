"""A command never replaces or deletes what it did not write: an existing output of another
kind is refused, one of its own kind only with --overwrite, and the refusal comes before any
compute."""

import hashlib
import json
import os

import numpy as np
import pytest

from tests.conftest import write_zarr
from workflows.cli import main


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
    from workflows.history import History, HistoryRow

    history = tmp_path / "h.zarr"
    from pipeline.metrics import METRICS

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
