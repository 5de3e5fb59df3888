"""What `history` and `report` show: provenance of synthetic features, plots that draw what the
numbers mean, counts as integers, inf apart from missing, each result's own time, and results
that no longer describe their store."""

import csv
import io
import json
import math

import numpy as np
import pytest

from shardeval.pipeline.metrics import METRICS
from shardeval.workflows import htmlreport
from shardeval.workflows.cli import main
from shardeval.workflows.history import History, HistoryRow
from shardeval.workflows.htmlreport import write_report
from shardeval.workflows.jobs import load_job, run_job


def _job(path, entries, metrics=("fid",), history="runs/h.zarr", reference="real.npy"):
    """A job file: entries (name, store, step or None)."""
    listed = "".join(
        f'[[entries]]\nname = "{name}"\nstore = "{store}"\n'
        + (f"step = {step}\n" if step is not None else "")
        for name, store, step in entries
    )
    path.write_text(
        f'[job]\nname = "t"\nhistory = "{history}"\n[reference]\nstore = "{reference}"\n'
        + listed
        + "".join(f"[metrics.{m}]\n" for m in metrics)
    )
    return load_job(path)


def _save(path, x):
    np.save(path, np.asarray(x, dtype=np.float32))
    return path


@pytest.fixture
def data(tmp_path, rng):
    sets = {
        "real": rng.normal(size=(500, 6)),
        "e-1": 1.1 * rng.normal(size=(400, 6)) + 0.2,
        "e-2": 0.9 * rng.normal(size=(450, 6)) - 0.1,
    }
    for name, x in sets.items():
        _save(tmp_path / f"{name}.npy", x)
    return tmp_path, sets


def _figures(monkeypatch):
    """Every figure the report draws, kept open for the test to read."""
    drawn = []
    monkeypatch.setattr(htmlreport, "_png", lambda fig: drawn.append(fig) or "")
    return drawn


def _text(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _captioned(html, title):
    start = html.index(f'alt="{title}"')
    return html[html.index("<figcaption>", start) : html.index("</figcaption>", start)]


# -- provenance of synthetic features ----------------------------------------------------------


def test_the_report_says_how_synthetic_features_were_made(tmp_path, capsys):
    # It said "features made by: not recorded (feature stores of other tools)".
    for name, extra in (("real", ["--seed", "1"]), ("gen", ["--seed", "2", "--mean", "0.05"])):
        argv = ["synth", str(tmp_path / f"{name}.zarr"), "--n", "300", "--d", "6", *extra]
        assert main([*argv, "--scale", "1.1"]) == 0
    job = _job(tmp_path / "job.toml", [("gen", "gen.zarr", 1)], reference="real.zarr")
    run_job(job)
    _, md = write_report(job.history, str(tmp_path / "report.html"))
    made = next(line for line in _text(md).splitlines() if "features made by" in line)
    for words in ("synthetic Gaussian", "seed 2", "n 300", "d 6", "mean 0.05", "scale 1.1"):
        assert words in made, made
    assert "not recorded" not in made
    capsys.readouterr()


# -- plots -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:generated set has n=4 <= d=6")
@pytest.mark.filterwarnings("ignore:with fp32 products 1 eigenvalues fell below zero")
def test_the_spectrum_plot_cuts_numerically_zero_eigenvalues_and_says_so(data, monkeypatch):
    # With N < d the covariance has rank N − 1; the rest of the spectrum is rounding noise,
    # which the log axis drew down to 1e-281.
    tmp, sets = data
    _save(tmp / "tiny.npy", sets["e-1"][:4])  # N = 4 < d = 6: rank 3
    job = _job(tmp / "job.toml", [("tiny", "tiny.npy", 1)])
    run_job(job)
    drawn = _figures(monkeypatch)
    page, _ = write_report(job.history, str(tmp / "report.html"))
    (spectra,) = [f for f in drawn if f.axes[0].get_yscale() == "log"]
    lines = {line.get_label().split(" ")[0]: line for line in spectra.axes[0].get_lines()}
    entry = np.asarray(lines["fid_spectrum"].get_ydata())
    assert entry.size == 3  # the rank, N − 1: every eigenvalue of the data, none of the noise
    expected = np.sort(np.linalg.eigvalsh(np.cov(sets["e-1"][:4].astype(np.float32).T)))[::-1]
    np.testing.assert_allclose(entry, expected[:3], rtol=1e-6)
    assert np.asarray(lines["fid_reference_spectrum"].get_ydata()).size == 6
    caption = _captioned(_text(page), "Covariance eigen-spectra (latest entry and reference)")
    assert "numerically zero" in caption
    assert "3 of fid_spectrum" in caption


def test_the_steps_plot_joins_only_entries_of_one_series(data, monkeypatch):
    # The demo job's `gen` (step 1) and `real-again` (step 2) were joined by one line, as if
    # one training run had moved from one to the other.
    tmp, _ = data
    entries = [
        ("ckpt-100", "e-1.npy", 100),
        ("ckpt-200", "e-2.npy", 200),
        ("ckpt-300", "e-1.npy", 300),
        ("gen", "e-2.npy", 1),
        ("real-again", "real.npy", 2),
    ]
    job = _job(tmp / "job.toml", entries)
    run_job(job)
    drawn = _figures(monkeypatch)
    write_report(job.history, str(tmp / "report.html"))
    steps = next(f for f in drawn if f.axes[0].get_xlabel() == "training step")
    joined = [ln for ln in steps.axes[0].get_lines() if ln.get_linestyle() not in ("None", "")]
    alone = [ln for ln in steps.axes[0].get_lines() if ln.get_linestyle() in ("None", "")]
    assert len(joined) == 1
    assert list(joined[0].get_xdata()) == [100, 200, 300]
    assert sorted(tuple(ln.get_xdata()) for ln in alone) == [(1,), (2,)]
    assert "gen" in " ".join(ln.get_label() for ln in alone)


# -- values: counts, inf, missing ----------------------------------------------------------------


def test_counts_are_integers_in_every_format(data, capsys):
    # The CSV said fid_n 400.0.
    tmp, sets = data
    job = _job(tmp / "job.toml", [("e-1", "e-1.npy", 1)])
    run_job(job)
    assert main(["history", job.history, "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["fid_n"] == str(len(sets["e-1"]))
    assert row["fid_nonfinite_dropped"] == "0"
    assert main(["history", job.history, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["fid_n"] == len(sets["e-1"])
    assert isinstance(row["fid_n"], int)
    assert isinstance(row["fid"], float)


DECLARED = {m: METRICS[m].declaration() for m in ("fid", "kid")}


def _row(name, created="2026-01-01T00:00:00+00:00", step=1):
    return HistoryRow(name, "x.npy", step, "t", "f", "o", "r", "rf", "job", "{}", 0.1, created)


def test_inf_is_shown_as_inf_and_a_missing_value_as_a_dash(tmp_path, capsys):
    # Both were "–".
    history = History(tmp_path / "h.zarr")
    values = {"fid": math.inf, "fid_mean_term": 1.0, "fid_trace_term": -math.inf}
    history.append(_row("a"), values, DECLARED, d=4, computed={"fid": "x"})
    history.append(_row("b", step=2), {"kid": 0.5}, DECLARED, d=4, computed={"kid": "y"})
    assert main(["history", str(history.path)]) == 0
    table = capsys.readouterr().out.splitlines()
    head = table[0].split()
    a = dict(zip(head, table[1].split(), strict=False))
    assert a["fid"] == "inf"
    assert a["fid_trace_term"] == "-inf"
    assert a["kid"] == "–"  # never computed for a
    assert main(["history", str(history.path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["fid"] == "inf"
    assert rows[0]["fid_trace_term"] == "-inf"
    assert rows[0]["kid"] is None
    _, md = write_report(str(history.path), str(tmp_path / "r.html"))
    entries = [line for line in _text(md).splitlines() if line.startswith("| a |")]
    assert "| inf |" in entries[0]
    assert "| – |" in entries[0]


# -- each result's own time ----------------------------------------------------------------------


def _times(monkeypatch, *stamps):
    import shardeval.workflows.jobs as jobs

    it = iter(stamps)
    monkeypatch.setattr(jobs, "now_iso", lambda: next(it))


def test_results_kept_from_an_earlier_run_keep_their_time(data, monkeypatch, capsys):
    # After a second job added KID, FID's `created` showed the second run's time.
    tmp, _ = data
    first, second = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"
    _times(monkeypatch, first, first, second, second)
    run_job(_job(tmp / "a.toml", [("e-1", "e-1.npy", 1), ("e-2", "e-2.npy", 2)]))
    job = _job(tmp / "b.toml", [("e-1", "e-1.npy", 1), ("e-2", "e-2.npy", 2)], ("fid", "kid"))
    assert run_job(job).metrics == {"e-1": ["kid"], "e-2": ["kid"]}
    for metric, when in (("fid", first), ("kid", second)):
        assert main(["history", job.history, "--metric", metric, "--format", "json"]) == 0
        assert [r["created"] for r in json.loads(capsys.readouterr().out)] == [when, when]
    assert main(["history", job.history, "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["fid.created"] == first
    assert row["kid.created"] == second
    _, md = write_report(job.history, str(tmp / "r.html"))
    assert f"run from {first} to {second}" in _text(md)


# -- stale results -------------------------------------------------------------------------------


def test_a_result_of_an_earlier_version_of_its_store_is_marked_stale(data, capsys):
    # Job A (fid, kid), e-1 rewritten, job B (fid): e-1's KID, of the old rows, was listed
    # beside the new FID as if both described the store.
    tmp, sets = data
    entries = [("e-1", "e-1.npy", 1), ("e-2", "e-2.npy", 2)]
    run_job(_job(tmp / "a.toml", entries, ("fid", "kid")))
    assert main(["history", str(tmp / "runs" / "h.zarr"), "--format", "json"]) == 0
    assert all(not r["stale"] for r in json.loads(capsys.readouterr().out))
    _save(tmp / "e-1.npy", sets["e-2"])  # other rows under the same name
    job = _job(tmp / "b.toml", entries, ("fid",))
    assert run_job(job).metrics == {"e-1": ["fid"]}
    assert main(["history", job.history, "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows["e-1"]["stale"]) == {"kid"}
    assert "earlier version of its store" in rows["e-1"]["stale"]["kid"]
    assert rows["e-2"]["stale"] == {}
    assert main(["history", job.history]) == 0
    assert "kid (stale" in capsys.readouterr().out
    _, md = write_report(job.history, str(tmp / "r.html"))
    assert "stale" in _text(md)


def test_results_of_a_store_changed_since_the_run_are_marked_stale(data, capsys):
    tmp, sets = data
    job = _job(tmp / "a.toml", [("e-1", "e-1.npy", 1), ("e-2", "e-2.npy", 2)], ("fid", "kid"))
    run_job(job)
    _save(tmp / "e-2.npy", sets["e-1"])  # no run since: the history still lists the old rows
    assert main(["history", job.history, "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["e-1"]["stale"] == {}
    assert set(rows["e-2"]["stale"]) == {"fid", "kid"}
    assert "changed since" in rows["e-2"]["stale"]["fid"]
    # A run recomputes them, and they are current again.
    run_job(job)
    assert main(["history", job.history, "--format", "json"]) == 0
    assert all(r["stale"] == {} for r in json.loads(capsys.readouterr().out))
