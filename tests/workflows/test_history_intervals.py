"""Intervals in the history's reports: error bars on the plots over steps, and checkpoints
within noise of the one before them marked in `history` and in the HTML report."""

import numpy as np

from shardeval.workflows import htmlreport
from shardeval.workflows.cli import main
from shardeval.workflows.history import History
from shardeval.workflows.htmlreport import write_report
from shardeval.workflows.intervals import within_noise
from shardeval.workflows.jobs import load_job, run_job


def _row(name, step, value, half):
    return {
        "name": name,
        "step": step,
        "m": value,
        "m_ci_low": value - half,
        "m_ci_high": value + half,
    }


def test_within_noise_is_the_difference_inside_the_combined_half_widths():
    rows = [
        _row("ckpt-3", 3, 5.0, 0.1),  # out of step order on purpose
        _row("ckpt-1", 1, 5.3, 0.3),
        _row("ckpt-2", 2, 5.0, 0.4),  # |0.3| ≤ √(0.3² + 0.4²) = 0.5: within noise of ckpt-1
        _row("other-1", 1, 5.0, 0.4),  # another series: compared with nothing
        {"name": "ckpt-4", "step": 4, "m": 5.0, "m_ci_low": None, "m_ci_high": None},
    ]
    # ckpt-3 against ckpt-2: |0| ≤ √(0.1² + 0.4²): within noise; ckpt-4 has no interval.
    assert within_noise(rows, "m") == {2: 1, 0: 2}
    rows[0]["m"] = 5.0 + 0.42  # beyond √(0.1² + 0.4²) ≈ 0.412, and off its own interval's centre
    assert within_noise(rows, "m") == {2: 1}


def test_reports_draw_error_bars_and_mark_checkpoints_within_noise(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    sets = {
        "real": rng.normal(size=(600, 4)),
        "ckpt-1": rng.normal(size=(600, 4)) + 0.5,
        "ckpt-2": rng.normal(size=(600, 4)) + 0.5,  # the same distribution: within noise
        "ckpt-3": rng.normal(size=(600, 4)) + 2.0,  # far: a difference
    }
    for name, x in sets.items():
        np.save(tmp_path / f"{name}.npy", x)
    entries = "".join(
        f'[[entries]]\nname = "ckpt-{s}"\nstore = "{tmp_path}/ckpt-{s}.npy"\nstep = {s}\n'
        for s in (1, 2, 3)
    )
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "t"\nhistory = "{tmp_path}/h.zarr"\n'
        f'[reference]\nstore = "{tmp_path}/real.npy"\n{entries}[metrics.fid]\nci = 0.95\n'
    )
    run_job(load_job(tmp_path / "job.toml"))
    rows = History(str(tmp_path / "h.zarr")).table()
    by_name = {r["name"]: r for r in rows}
    low, high = by_name["ckpt-1"]["fid_ci_low"], by_name["ckpt-1"]["fid_ci_high"]
    assert low < by_name["ckpt-1"]["fid"] < high

    capsys.readouterr()
    assert main(["history", str(tmp_path / "h.zarr")]) == 0
    out = capsys.readouterr().out
    assert "ckpt-2 (step 2): fid" in out
    assert "within noise of ckpt-1" in out
    assert "ckpt-3 (step 3)" not in out

    drawn = []
    monkeypatch.setattr(htmlreport, "_png", lambda fig: drawn.append(fig) or "")
    page, _ = write_report(str(tmp_path / "h.zarr"), str(tmp_path / "r.html"))
    with open(page) as fh:
        html = fh.read()
    assert html.count(" ≈</td>") == 1
    ax = drawn[0].axes[0]  # "FID over steps"
    (bars,) = ax.containers  # one series, with error bars
    segments = bars.lines[2][0].get_segments()
    spans = sorted((float(s[0][1]), float(s[1][1])) for s in segments)
    expected = sorted((r["fid_ci_low"], r["fid_ci_high"]) for r in rows)
    np.testing.assert_allclose(spans, expected, rtol=1e-12)
