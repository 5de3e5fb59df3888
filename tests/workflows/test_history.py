"""The history survives crashes and concurrency, refuses what it cannot hold, and reports
damage in one line."""

import json
import multiprocessing
import os
import shutil

import pytest
import xarray as xr

from shardeval.pipeline.metrics import METRICS
from shardeval.workflows.cli import main
from shardeval.workflows.history import History, HistoryError, HistoryRow

DECLARED = {"fid": METRICS["fid"].declaration()}


def _row(name, step=1):
    return HistoryRow(name, "x.zarr", step, "", "f", "o", "ref", "rf", "job", "{}", 0.1, "now")


def _append(history, name, value, step=1):
    history.append(_row(name, step), {"fid": value}, DECLARED, d=8)


def test_appends_switch_versions_and_keep_one_back(tmp_path):
    history = History(tmp_path / "h.zarr")
    for i in range(4):
        _append(history, f"e{i}", float(i), step=i)
    assert os.path.islink(history.path)
    versions = sorted(os.listdir(history.versions_dir))
    assert versions == ["v000003", "v000004"]  # the current one and the one before
    assert [r["fid"] for r in history.table()] == [0.0, 1.0, 2.0, 3.0]
    with xr.open_zarr(history.path, consolidated=False) as ds:  # plain xarray reads it too
        assert ds.sizes["entry"] == 4


def test_a_crash_between_the_steps_of_a_switch_loses_nothing(tmp_path):
    history = History(tmp_path / "h.zarr")
    _append(history, "a", 1.0)
    _append(history, "b", 2.0)
    # The switch is one rename; the worst a crash can leave is a complete new version and no
    # link (a history of the first format being moved aside). Both are recovered.
    os.unlink(history.path)
    assert [r["name"] for r in history.table()] == ["a", "b"]
    _append(history, "c", 3.0)
    assert [r["name"] for r in history.table()] == ["a", "b", "c"]
    # An unfinished version (a crash while writing it) is ignored and cleaned up.
    os.makedirs(os.path.join(history.versions_dir, ".tmp-v000099"))
    _append(history, "d", 4.0)
    assert not os.path.exists(os.path.join(history.versions_dir, ".tmp-v000099"))
    assert len(history.table()) == 4


def test_a_history_of_the_first_format_is_kept_as_version_zero(tmp_path):
    path = tmp_path / "old.zarr"
    ds = xr.Dataset(
        {
            "name": ("entry", ["old"]),
            "step": ("entry", [5]),
            "tags": ("entry", [""]),
            "created": ("entry", ["then"]),
            "fingerprint": ("entry", ["x"]),
            "fid": ("entry", [9.0]),
        },
        attrs={"format": "shardeval.history", "metrics": json.dumps(DECLARED)},
    )
    ds.to_zarr(path, zarr_format=2, consolidated=False)
    history = History(path)
    _append(history, "new", 1.0, step=6)
    assert [r["name"] for r in history.table()] == ["old", "new"]


def _writer(path, worker):
    history = History(path)
    for i in range(6):
        _append(history, f"w{worker}-{i}", float(i), step=i)


def test_concurrent_writers_and_a_polling_reader(tmp_path):
    path = str(tmp_path / "h.zarr")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(2)]
    for p in procs:
        p.start()
    history, reads = History(path), 0
    while any(p.is_alive() for p in procs):
        rows = history.table()  # a whole version every time, never a half-written one
        assert all(isinstance(r["fid"], float) for r in rows)
        reads += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert reads > 0
    assert len(history.table()) == 12


def test_history_of_another_dimension_is_refused_before_compute(tmp_path):
    history = History(tmp_path / "h.zarr")
    _append(history, "a", 1.0)
    with pytest.raises(HistoryError, match="d=8 features; this job's features have d=16"):
        history.check(16)


def test_a_trailing_slash_names_the_same_history(tmp_path):
    _append(History(str(tmp_path / "h.zarr") + "/"), "a", 1.0)
    assert History(tmp_path / "h.zarr").table()[0]["name"] == "a"


def _edit_attrs(current, **changes):
    path = os.path.join(current, ".zattrs")
    with open(path) as fh:
        attrs = json.load(fh)
    attrs.update(changes)
    with open(path, "w") as fh:
        json.dump(attrs, fh)


@pytest.mark.parametrize(
    "damage",
    ["bytes", "missing name", "chunk deleted", "metrics json", "d", "outputs"],
)
def test_damaged_history_is_one_line(tmp_path, capsys, damage):
    # "chunk deleted" read as fill values with exit 0 (every step 0, every FID missing, and
    # every entry "already done"); the attribute damages were tracebacks.
    history = History(tmp_path / "h.zarr")
    _append(history, "a", 1.0)
    current = os.path.realpath(history.path)
    if damage == "bytes":
        chunk = os.path.join(current, "fid", "0")
        with open(chunk, "wb") as fh:
            fh.write(os.urandom(64))
    elif damage == "missing name":
        shutil.rmtree(os.path.join(current, "name"))
    elif damage == "chunk deleted":
        os.remove(os.path.join(current, "step", "0"))
    elif damage == "metrics json":
        with open(os.path.join(current, ".zattrs")) as fh:
            metrics = json.load(fh)["metrics"]
        _edit_attrs(current, metrics=metrics[:-5])
    elif damage == "d":
        _edit_attrs(current, d="x32")
    else:
        _edit_attrs(current, metrics=json.dumps({"fid": {"title": "FID"}}))
    code = main(["history", str(tmp_path / "h.zarr")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "damaged" in err


def test_a_path_that_is_not_a_history(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["history", str(tmp_path / "notes.txt")]) == 2
    assert "not a history" in capsys.readouterr().err


def test_json_history_writes_null_for_missing_values(tmp_path, capsys):
    history = History(tmp_path / "h.zarr")
    _append(history, "a", 1.0)
    declared = {"nll_gaussian": METRICS["nll_gaussian"].declaration()}
    row = _row("b", 2)
    history.append(row, {"nll_gaussian": 3.0}, declared, d=8)  # 'a' has no NLL, 'b' no FID
    assert main(["history", str(tmp_path / "h.zarr"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # strict JSON: no bare NaN
    assert rows[0]["nll_gaussian"] is None
    assert rows[1]["fid"] is None


@pytest.mark.parametrize("target", ["history", "file"])
def test_a_symbolic_link_of_the_users_is_never_replaced(tmp_path, capsys, target):
    # A link to a history elsewhere (or to a file) was taken as the history's own version
    # link, replaced by a new one, and the linked history never got the entry.
    real = History(tmp_path / "real.zarr")
    _append(real, "a", 1.0)
    (tmp_path / "notes.txt").write_text("mine")
    link = tmp_path / "alias.zarr"
    os.symlink(real.path if target == "history" else tmp_path / "notes.txt", link)
    with pytest.raises(HistoryError, match="is a symbolic link to"):
        _append(History(link), "b", 2.0)
    assert os.readlink(link) == (real.path if target == "history" else str(tmp_path / "notes.txt"))
    assert [r["name"] for r in real.table()] == ["a"]


def test_markdown_report_escapes_bars_in_names(tmp_path):
    from shardeval.workflows.htmlreport import write_report

    history = History(tmp_path / "h.zarr")
    _append(history, "a|b", 1.0)
    _, md = write_report(history.path, str(tmp_path / "r.html"))
    with open(md) as fh:
        rows = [line for line in fh.read().splitlines() if line.startswith("|")]
    header, row = rows[0], rows[2]
    assert "a\\|b" in row
    assert row.replace("\\|", "").count("|") == header.count("|")


@pytest.mark.parametrize("command", ["history", "report"])
@pytest.mark.parametrize("layout", ["array", "group"])
def test_a_feature_store_is_called_a_feature_store_not_a_damaged_history(
    tmp_path, capsys, command, layout
):
    # It said "history ... cannot be read (ContainsArrayError ...); it is damaged: move it
    # aside", advice that moves the user's features.
    import numpy as np

    from tests.conftest import write_zarr

    x = np.zeros((10, 3), np.float32)
    if layout == "array":
        store = write_zarr(tmp_path / "feats.zarr", x)
    else:
        store = str(tmp_path / "feats.zarr")
        xr.Dataset({"features": (("sample", "feature"), x)}).to_zarr(store, consolidated=False)
    argv = [command, store] + (["-o", str(tmp_path / "r.html")] if command == "report" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is a feature store, not a history" in err
    assert "damaged" not in err
    assert "shardeval run" in err
    assert not (tmp_path / "r.html").exists()
