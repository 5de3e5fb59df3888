"""Scheduled evaluation jobs: job files, resumable runs, the history, reports."""

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from shardeval.pipeline import Engine, open_features
from shardeval.pipeline.io.synthetic import gaussian_features, write_features
from shardeval.workflows.cli import main
from shardeval.workflows.history import History
from shardeval.workflows.htmlreport import write_report
from shardeval.workflows.jobs import JobError, load_job, run_job

JOB = """
[job]
name = "test"
history = "runs/history.zarr"

[reference]
store = "real.zarr"

[[entries]]
glob = "ckpt/*/features.zarr"

[[entries]]
name = "final"
store = "final.zarr"
step = 9000
tags = ["release"]

[metrics.fid]
[metrics.nll_gaussian]
"""


def _write(path, n, d, seed, mean):
    write_features(
        path, gaussian_features(n, d, seed=seed, mean=mean, shard_rows=1000), chunk_rows=1000
    )


@pytest.fixture
def job_dir(tmp_path):
    d = 16
    _write(tmp_path / "real.zarr", 4000, d, 1, 0.0)
    for i in (1, 2, 3):
        (tmp_path / "ckpt" / f"step-{i * 1000}").mkdir(parents=True)
        _write(tmp_path / "ckpt" / f"step-{i * 1000}" / "features.zarr", 3000, d, 10 + i, 0.1 * i)
    _write(tmp_path / "final.zarr", 3000, d, 20, 0.05)
    (tmp_path / "job.toml").write_text(JOB)
    return tmp_path


def test_job_writes_history_and_report_then_recomputes_nothing(job_dir):
    job = load_job(job_dir / "job.toml")
    assert [e.name for e in job.entries] == ["step-1000", "step-2000", "step-3000", "final"]
    assert [e.step for e in job.entries] == [1000, 2000, 3000, 9000]
    first = run_job(job)
    assert len(first.computed) == 4
    rows = History(job.history).table()
    assert [r["name"] for r in rows] == ["step-1000", "step-2000", "step-3000", "final"]
    assert all(r["fid"] > 0 for r in rows)
    shard_calls = []
    second = run_job(load_job(job_dir / "job.toml"), progress=lambda *a: shard_calls.append(a))
    assert second.computed == []
    assert len(second.skipped) == 4
    assert shard_calls == []  # no shard task ran
    assert History(job.history).table() == rows
    page, md = write_report(job.history, str(job_dir / "report.html"))
    from pathlib import Path

    text = Path(page).read_text()
    assert text.count("data:image/png;base64,") == 3  # fid, nll_gaussian over steps; spectra
    assert "| step-1000 | 1000 |" in Path(md).read_text()


def test_force_and_changed_options_recompute(job_dir):
    job = load_job(job_dir / "job.toml")
    run_job(job)
    assert len(run_job(job, force=True).computed) == 4
    nll = [r["nll_gaussian"] for r in History(job.history).table()]
    # A metric dropped from the job: nothing to compute, and its results stay.
    (job_dir / "job.toml").write_text(JOB.replace("[metrics.nll_gaussian]\n", ""))
    assert run_job(load_job(job_dir / "job.toml")).computed == []
    assert [r["nll_gaussian"] for r in History(job.history).table()] == nll
    # A metric's option changed: that metric again, and only it.
    option = '[metrics.nll_gaussian]\nnonfinite = "drop"\n'
    (job_dir / "job.toml").write_text(JOB.replace("[metrics.nll_gaussian]\n", option))
    again = run_job(load_job(job_dir / "job.toml"))
    assert again.metrics == {name: ["nll_gaussian"] for name in again.computed}
    assert len(again.computed) == 4


def test_modified_reference_invalidates_the_cache(job_dir):
    job = load_job(job_dir / "job.toml")
    run_job(job)
    caches = sorted(p.name for p in (job_dir / "runs").glob("reference-*.zarr"))
    before = History(job.history).table()
    _write(job_dir / "real.zarr", 4000, 16, 2, 0.3)  # same shape, other values
    after = run_job(load_job(job_dir / "job.toml"))
    assert len(after.computed) == 4
    assert len(list((job_dir / "runs").glob("reference-*.zarr"))) == len(caches) + 1
    assert History(job.history).table()[0]["fid"] != before[0]["fid"]


@pytest.mark.parametrize("same_input", [True, False])
def test_reference_cache_written_meanwhile_by_another_run(job_dir, monkeypatch, same_input):
    # Two runs of one job both find no cache and both compute; the second to write found the
    # first's file and stopped: "already exists (a statistics file); pass --overwrite" (which
    # `run` does not take). The same input's statistics are used; anything else still stops.
    import shardeval.pipeline.io.statsio
    from shardeval.pipeline.io.atomic import OutputExistsError

    real_save = shardeval.pipeline.io.statsio.save_stats

    def another_run_lands_first(path, moments, provenance=None, **kwargs):
        theirs = dict(provenance or {})
        if not same_input:
            theirs["fingerprint"] = "another input"
        real_save(path, moments, theirs)
        return real_save(path, moments, provenance, **kwargs)

    monkeypatch.setattr(shardeval.pipeline.io.statsio, "save_stats", another_run_lands_first)
    lines = []
    job = load_job(job_dir / "job.toml")
    if same_input:
        assert len(run_job(job, log=lines.append).computed) == 4
        assert any("written meanwhile by another run" in line for line in lines)
    else:
        with pytest.raises(OutputExistsError, match="already exists"):
            run_job(job, log=lines.append)


def test_interrupted_run_resumes_with_identical_values(job_dir):
    for i in (4, 5, 6):  # larger entries so the kill lands mid-job
        (job_dir / "ckpt" / f"step-{i * 1000}").mkdir()
        _write(job_dir / "ckpt" / f"step-{i * 1000}" / "features.zarr", 60_000, 16, 30 + i, 0.1)
    exe = os.path.join(os.path.dirname(sys.executable), "shardeval")
    proc = subprocess.Popen(
        [exe, "run", str(job_dir / "job.toml"), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    history = History(str(job_dir / "runs" / "history.zarr"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(history.path) and len(history.table()) >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    done_before = len(history.table())
    assert 1 <= done_before < 7, "the kill must land after the first entry, before the last"
    resumed = run_job(load_job(job_dir / "job.toml"))
    assert len(resumed.skipped) == done_before
    assert len(resumed.computed) == 7 - done_before
    # An uninterrupted run elsewhere gives the same values.
    clean = job_dir / "clean"
    shutil.copytree(job_dir, clean, ignore=shutil.ignore_patterns("runs", "clean"))
    run_job(load_job(clean / "job.toml"))
    got = {r["name"]: r["fid"] for r in history.table()}
    expected = {r["name"]: r["fid"] for r in History(str(clean / "runs" / "history.zarr")).table()}
    assert got.keys() == expected.keys()
    for name in got:
        assert got[name] == pytest.approx(expected[name], rel=1e-12)


def _append_many(path, reference_path, worker):
    from shardeval.pipeline.metrics import METRICS
    from shardeval.workflows.history import HistoryRow

    history = History(path)
    declarations = {"fid": METRICS["fid"].declaration()}
    for i in range(5):
        row = HistoryRow(
            f"w{worker}-{i}", "x.zarr", i, "", "f", "o", "ref", "r", "j", "{}", 0.0, "now"
        )
        history.append(row, {"fid": float(i)}, declarations, d=3)


def test_concurrent_appends_do_not_corrupt(tmp_path):
    path = str(tmp_path / "h.zarr")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, None, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    names = sorted(r["name"] for r in History(path).table())
    assert names == sorted(f"w{w}-{i}" for w in range(3) for i in range(5))


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda t: t.replace("[metrics.fid]", "[metrics.fdi]"), r"\[metrics.fdi\] is not a metric"),
        (lambda t: t.replace('store = "real.zarr"', 'store = "missing.zarr"'), "does not exist"),
        (lambda t: t.replace("step = 9000", 'step = "late"'), "step must be an integer"),
        (lambda t: t.replace("ckpt/*/features.zarr", "nothing/*/here.zarr"), "matches nothing"),
        (
            lambda t: t.replace("[metrics.nll_gaussian]", "[metrics.nll_gaussian]\nbins = 3"),
            "has no option",
        ),
        (lambda t: t.replace('name = "test"', 'name = "test"\ncolour = "red"'), "unknown key"),
        (lambda t: t + "\n[extras]\n", "unknown section"),
        (lambda t: t.replace("[job]", "[job"), "not valid TOML"),
    ],
)
def test_bad_job_files_fail_before_compute(job_dir, capsys, edit, msg):
    (job_dir / "bad.toml").write_text(edit(JOB))
    with pytest.raises(JobError, match=msg):
        load_job(job_dir / "bad.toml")
    code = main(["run", str(job_dir / "bad.toml"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("shardeval: error:")
    assert err.count("\n") == 1
    assert not (job_dir / "runs").exists()


def test_history_and_report_commands(job_dir, capsys):
    assert main(["run", str(job_dir / "job.toml"), "-q"]) == 0
    capsys.readouterr()
    history = str(job_dir / "runs" / "history.zarr")
    assert main(["history", history, "--metric", "fid", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in rows] == [1000, 2000, 3000, 9000]
    fid_outputs = {
        "fid",
        "fid_mean_term",
        "fid_trace_term",
        "fid_trace_real",
        "fid_trace_gen",
        "fid_trace_sqrt_product",
        "fid_n",
        "fid_n_real",
        "fid_nonfinite_dropped",
        "fid_nonfinite_dropped_real",
        "fid_eigenvalues_clamped",
        "fid_clamped_max",
        "fid_rank_deficit",
        # the interval's outputs, missing in a row without «ci»
        "fid_standard_error",
        "fid_ci_low",
        "fid_ci_high",
        "fid_jackknife_bias",
        "fid_rows_for_se_target",
    }
    made = {"features_made_by", "reference_made_by"}
    assert set(rows[0]) == {"name", "step", "tags", "created", *fid_outputs, *made, "stale"}
    assert main(["history", history, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("name,step,tags,")
    assert main(["report", history, "-o", str(job_dir / "r.html")]) == 0
    assert (job_dir / "r.md").exists()
    assert main(["history", history, "--metric", "bleu"]) == 2


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(job_dir, tmp_path):
    job = load_job(job_dir / "job.toml")
    run_job(job, engine=Engine("sync"))
    page, _ = write_report(job.history, str(job_dir / "report.html"))
    out = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=30000",
            "--dump-dom",
            f"file://{page}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'data-rendered="ok"' in out.stdout  # the page's own check: every plot decoded
    assert out.stdout.count("<img") == 3


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (
            lambda t: t.replace("[metrics.fid]", '[metrics.fid]\nnonfinite = "sometimes"'),
            "option 'nonfinite': expected one of error, drop, got 'sometimes'",
        ),
        (lambda t: t + "\n[engine]\nscheduler = 5\n", "scheduler 5 is not"),
        (lambda t: t + '\n[engine]\nscheduler = "processes"\n', "'processes' is not"),
        (lambda t: t + '\n[engine]\ndevice = "tpu"\n', "engine.device: expected one of"),
        (lambda t: t + '\n[engine]\nprecision = "fp16"\n', "engine.precision: expected one"),
        (lambda t: t.replace('name = "test"', "shard_rows = 0"), "job.shard_rows: expected a"),
        (lambda t: t.replace('name = "test"', "split_every = 1"), "job.split_every: expected"),
        (lambda t: t.replace('name = "test"', "shard_rows = 1.5"), "job.shard_rows: expected"),
    ],
)
def test_options_and_engine_are_checked_at_load(job_dir, capsys, edit, msg):
    (job_dir / "bad.toml").write_text(edit(JOB))
    code = main(["run", str(job_dir / "bad.toml"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert __import__("re").search(msg, err), err
    assert not (job_dir / "runs").exists()  # nothing computed, not even the reference


def _group_store(path, arrays):
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for name, x in arrays.items():
        arr = group.create_array(name, shape=x.shape, chunks=(500, x.shape[1]), dtype=x.dtype)
        arr[...] = x


def test_the_array_is_part_of_both_keys(tmp_path, capsys, rng):
    ref = {k: rng.normal(size=(2000, 6)).astype(np.float32) + s for k, s in (("a", 0), ("b", 3))}
    ent = {k: rng.normal(size=(1500, 6)).astype(np.float32) * 1.2 for k in ("a", "b")}
    _group_store(tmp_path / "ref.zarr", ref)
    _group_store(tmp_path / "entry.zarr", ent)
    text = (
        '[job]\nname = "arrays"\nhistory = "h.zarr"\narray = "a"\n[reference]\n'
        'store = "ref.zarr"\n[[entries]]\nstore = "entry.zarr"\nstep = 1\n[metrics.fid]\n'
    )
    (tmp_path / "job.toml").write_text(text)
    assert len(run_job(load_job(tmp_path / "job.toml")).computed) == 1
    (tmp_path / "job.toml").write_text(text.replace('array = "a"', 'array = "b"'))
    assert len(run_job(load_job(tmp_path / "job.toml")).computed) == 1  # not "already done"
    from tests.reference import exact_fid, np_stats

    got = History(str(tmp_path / "h.zarr")).table()[0]["fid"]
    assert got == pytest.approx(exact_fid(*np_stats(ref["b"]), *np_stats(ent["b"])), rel=1e-6)
    assert len(list(tmp_path.glob("reference-*.zarr"))) == 2


def test_a_job_sets_the_run_options_and_fid_follows_them(job_dir):
    """precision, shard_rows and split_every of a job file reach every metric and the
    reference statistics, and its values are the API's under the same options."""
    import shardeval as se

    options = {"precision": "fp64", "shard_rows": 700, "split_every": 3}
    text = JOB.replace('name = "test"', 'name = "test"\nshard_rows = 700\nsplit_every = 3')
    (job_dir / "fp64.toml").write_text(text + '\n[engine]\nprecision = "fp64"\n')
    job = load_job(job_dir / "fp64.toml")
    assert job.run_options == options
    run_job(job)
    row = next(r for r in History(job.history).table() if r["name"] == "final")
    want = se.fid(str(job_dir / "real.zarr"), str(job_dir / "final.zarr"), **options)
    assert row["fid"] == pytest.approx(float(want), rel=1e-12)
    # the reference statistics of other settings are another cache, not reused
    run_job(load_job(job_dir / "job.toml"))
    assert len(list(job_dir.glob("runs/reference-*.zarr"))) == 2


def test_a_run_option_no_metric_of_the_job_takes_is_refused(job_dir):
    """KID's sums always take float64 products: fp32 cannot apply and is refused at load."""
    text = JOB.replace("[metrics.fid]\n[metrics.nll_gaussian]", "[metrics.kid]")
    (job_dir / "kid.toml").write_text(text + '\n[engine]\nprecision = "fp32"\n')
    with pytest.raises(JobError, match=r"precision='fp32'.* cannot apply to kid"):
        load_job(job_dir / "kid.toml")


def test_absolute_glob_names_entries_by_what_the_star_matched(job_dir):
    text = JOB.replace('glob = "ckpt/*/features.zarr"', f'glob = "{job_dir}/ckpt/*/features.zarr"')
    (job_dir / "abs.toml").write_text(text)
    job = load_job(job_dir / "abs.toml")
    assert [e.name for e in job.entries] == ["step-1000", "step-2000", "step-3000", "final"]
    assert [e.step for e in job.entries] == [1000, 2000, 3000, 9000]


def test_job_values_equal_the_commands(job_dir, capsys):
    job = load_job(job_dir / "job.toml")
    run_job(job)
    row = next(r for r in History(job.history).table() if r["name"] == "final")
    real, final = str(job_dir / "real.zarr"), str(job_dir / "final.zarr")
    assert main(["fid", real, final, "--json", "-q"]) == 0
    assert row["fid"] == pytest.approx(json.loads(capsys.readouterr().out)["fid"]["fid"], rel=1e-12)
    assert main(["stats", real, "-o", str(job_dir / "s.zarr"), "-q"]) == 0
    capsys.readouterr()
    assert main(["nll", "--gaussian", str(job_dir / "s.zarr"), final, "--json", "-q"]) == 0
    nll = json.loads(capsys.readouterr().out)
    assert row["nll_gaussian"] == pytest.approx(nll["nats_per_dim"], rel=1e-12)


def test_a_history_of_other_features_is_refused_before_compute(job_dir, capsys):
    run_job(load_job(job_dir / "job.toml"))
    other = job_dir / "other"
    (other / "ckpt" / "step-1").mkdir(parents=True)
    _write(other / "real.zarr", 500, 8, 1, 0.0)
    _write(other / "ckpt" / "step-1" / "features.zarr", 500, 8, 2, 0.0)
    _write(other / "final.zarr", 500, 8, 3, 0.0)
    text = JOB.replace('history = "runs/history.zarr"', f'history = "{job_dir}/runs/history.zarr"')
    (other / "job.toml").write_text(text)
    code = main(["run", str(other / "job.toml"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "d=16 features; this job's features have d=8" in err
    assert len(list((job_dir / "runs").glob("reference-*.zarr"))) == 1  # nothing new computed


def test_a_metric_added_through_the_plug_in_interface_alone(job_dir, capsys):
    # One class and one registration: the metric is then in the command line (its option a
    # flag), the Python API (a keyword), job files, the history and the report.
    import shardeval as se
    from shardeval.pipeline.metrics import METRICS, Metric, Output, Param, Plot, register

    class MeanNorm(Metric):
        name = "mean_norm"
        title = "Norm of the entry's mean"
        params = (Param("order", float, 2.0, "order of the norm"),)
        outputs = (Output("mean_norm", "units", "‖μ‖ of the entry"),)
        plots = (Plot("Mean norm over steps", "steps", ("mean_norm",), "‖μ‖"),)

        def compute(self, real, gen, context):
            moments, _ = gen.moments(context)
            return {"mean_norm": float(np.linalg.norm(moments.mean, ord=self.options["order"]))}

    register(MeanNorm)
    try:
        real, final = str(job_dir / "real.zarr"), str(job_dir / "final.zarr")
        rows64 = open_features(final).array.compute().astype(np.float64)
        expected = float(np.linalg.norm(rows64.mean(0), ord=1))
        argv = ["metrics", real, final, "--metrics", "mean_norm", "--order", "1", "--json", "-q"]
        assert main(argv) == 0
        from_cli = json.loads(capsys.readouterr().out)["mean_norm"]["mean_norm"]
        from_api = float(se.metrics(real, final, ["mean_norm"], order=1.0))
        assert from_cli == from_api  # one code path, to the last bit
        assert from_api == pytest.approx(expected, rel=1e-6)  # fp32 products of the moments
        with pytest.raises(SystemExit):
            main(["metrics", "--help"])
        assert "--order ORDER" in capsys.readouterr().out
        (job_dir / "job.toml").write_text(JOB + "\n[metrics.mean_norm]\norder = 1.0\n")
        job = load_job(job_dir / "job.toml")
        run_job(job)
        rows = History(job.history).table("mean_norm")
        assert [r["step"] for r in rows] == [1000, 2000, 3000, 9000]
        assert all(r["mean_norm"] > 0 for r in rows)
        assert rows[-1]["mean_norm"] == from_api
        page, md = write_report(job.history, str(job_dir / "report.html"))
        with open(page) as fh:
            text = fh.read()
        assert "Norm of the entry&#x27;s mean" in text
        assert "mean_norm [units]" in text
        assert text.count("data:image/png;base64,") == 4
        with open(md) as fh:
            assert "mean_norm [units]" in fh.read()
    finally:
        del METRICS["mean_norm"]


def test_an_entry_whose_statistics_overflow_is_one_line(job_dir, capsys):
    x = np.random.default_rng(0).normal(size=(500, 16)) * 1e200  # m2 ~ 1e400: inf
    np.save(job_dir / "huge.npy", x)
    text = JOB.replace('store = "final.zarr"', 'store = "huge.npy"')
    (job_dir / "huge.toml").write_text(text)
    code = main(["run", str(job_dir / "huge.toml"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1


IMAGE_JOB = """
[job]
history = "runs/history.zarr"

[reference]
images = "real"

[[entries]]
images = "samples/ckpt-*"

[extract]
weights = "inception.pth"
batch_size = 4

[metrics.fid]
[metrics.kid]
"""


@pytest.fixture
def image_job(tmp_path, rng):
    import torch
    from PIL import Image

    from shardeval.kernels.encoders.inception import random_state_dict

    torch.save(random_state_dict(5), tmp_path / "inception.pth")
    for folder, n in (("real", 10), ("samples/ckpt-100", 6), ("samples/ckpt-200", 7)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / folder / f"{i:02d}.png")
    (tmp_path / "job.toml").write_text(IMAGE_JOB)
    return tmp_path


@pytest.mark.filterwarnings("ignore:.*covariance is singular")
def test_image_entries_are_extracted_once_then_evaluated(image_job, capsys, monkeypatch):
    import shardeval.pipeline.images.extract

    job = load_job(image_job / "job.toml")
    assert [(e.name, e.step, e.images) for e in job.entries] == [
        ("ckpt-100", 100, True),
        ("ckpt-200", 200, True),
    ]
    run_job(job)
    rows = {r["name"]: r for r in History(job.history).table()}
    cached = sorted(p.name for p in (image_job / "runs").glob("features-*.zarr"))
    assert len(cached) == 3  # the reference and two entries
    # The values equal the commands on stores extracted by `shardeval extract`.
    weights = str(image_job / "inception.pth")
    for name in ("real", "samples/ckpt-200"):
        out = str(image_job / f"{name.replace('/', '-')}.zarr")
        argv = ["extract", str(image_job / name), "-o", out, "--weights", weights, "-q"]
        assert main([*argv, "--batch-size", "4"]) == 0
    capsys.readouterr()
    real, gen = str(image_job / "real.zarr"), str(image_job / "samples-ckpt-200.zarr")
    assert main(["fid", real, gen, "--json", "-q"]) == 0
    assert rows["ckpt-200"]["fid"] == pytest.approx(
        json.loads(capsys.readouterr().out)["fid"]["fid"], rel=1e-9
    )
    assert main(["kid", real, gen, "--json", "-q"]) == 0
    assert rows["ckpt-200"]["kid"] == pytest.approx(
        json.loads(capsys.readouterr().out)["kid"]["kid"], rel=1e-9
    )
    # The report says how the features were made: what the numbers compare with.
    made = zarr.open_group(gen, mode="r").attrs["weights_digest"]
    page, _md = write_report(job.history, str(image_job / "report.html"))
    text = Path(page).read_text(encoding="utf-8")
    assert "features made by" in text
    assert made.startswith("sha256:")
    # Random weights: the page says they are not the published file, in the words of a
    # report's warning.
    assert (
        f"encoder inception, resize legacy-pytorch, weights {made} (not the published weights: "
        "not comparable with papers)"
    ) in text
    # A re-run finds every entry in the history and extracts nothing.
    calls = []
    monkeypatch.setattr(
        shardeval.pipeline.images.extract, "extract_chunk", lambda *a: calls.append(a)
    )
    summary = run_job(load_job(image_job / "job.toml"))
    assert summary.skipped == ["ckpt-100", "ckpt-200"]
    assert not calls
    # New images in an entry: a new input, extracted and evaluated again.
    shutil.copy(image_job / "real" / "00.png", image_job / "samples" / "ckpt-100" / "99.png")
    monkeypatch.undo()
    summary = run_job(load_job(image_job / "job.toml"))
    assert summary.computed == ["ckpt-100"]
    assert len(list((image_job / "runs").glob("features-*.zarr"))) == 4


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda t: t.replace('images = "real"', 'store = "real"'), "not a feature store|cannot"),
        (
            lambda t: t.replace('weights = "inception.pth"\n', 'encoder = "resnet"\n'),
            "unknown encoder",
        ),
        (
            lambda t: t.replace('weights = "inception.pth"', 'weights = "none.pth"'),
            "does not exist",
        ),
        (lambda t: t.replace("batch_size = 4", "batch_size = 0"), "positive integer"),
        (lambda t: t.replace("[extract]", "[extract]\nshards = 3"), "unknown key"),
        (
            lambda t: t.replace("samples/ckpt-*", "samples/none-*"),
            "matches nothing",
        ),
    ],
)
def test_bad_image_jobs_fail_before_compute(image_job, capsys, edit, msg):
    (image_job / "bad.toml").write_text(edit(IMAGE_JOB))
    code = main(["run", str(image_job / "bad.toml"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert re.search(msg, err)
    assert not (image_job / "runs").exists()


@pytest.mark.filterwarnings("ignore:.*covariance is singular")
def test_the_batch_size_is_not_part_of_the_image_key(image_job, monkeypatch):
    # Features do not depend on the batch size: with another one, every entry is found in the
    # history (the key is the input's fingerprint there) and nothing is extracted.
    import shardeval.pipeline.images.extract as ex

    run_job(load_job(image_job / "job.toml"))
    cached = sorted((image_job / "runs").glob("features-*.zarr"))
    (image_job / "job.toml").write_text(IMAGE_JOB.replace("batch_size = 4", "batch_size = 2"))
    calls = []
    monkeypatch.setattr(ex, "extract_chunk", lambda *a: calls.append(a))
    lines = []
    summary = run_job(load_job(image_job / "job.toml"), log=lines.append)
    assert summary.skipped == ["ckpt-100", "ckpt-200"]
    assert not calls
    assert sum(line.startswith("features of") for line in lines) == 1  # the reference's
    assert sorted((image_job / "runs").glob("features-*.zarr")) == cached


def _stored_png(path, pixels):
    """A PNG without compression: its size depends on the image's shape alone."""
    from PIL import Image

    Image.fromarray(pixels).save(path, compress_level=0)


@pytest.mark.filterwarnings("ignore:.*covariance is singular")
def test_verify_sees_an_image_rewritten_with_its_size_and_time(image_job, rng):
    shutil.rmtree(image_job / "samples" / "ckpt-100")  # one entry is enough
    image = image_job / "samples" / "ckpt-200" / "00.png"
    _stored_png(image, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    job = load_job(image_job / "job.toml")
    assert run_job(job, verify=True).computed == ["ckpt-200"]
    assert run_job(load_job(image_job / "job.toml"), verify=True).computed == []
    before = next(r for r in History(job.history).table() if r["name"] == "ckpt-200")["fid"]
    st = os.stat(image)
    _stored_png(image, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(image).st_size == st.st_size
    assert run_job(load_job(image_job / "job.toml")).computed == []  # the listing is unchanged
    lines = []
    summary = run_job(load_job(image_job / "job.toml"), verify=True, log=lines.append)
    assert summary.computed == ["ckpt-200"]
    assert any("other bytes of" in line and "ckpt-200" in line for line in lines)
    after = next(r for r in History(job.history).table() if r["name"] == "ckpt-200")["fid"]
    assert after != before
    # The features cached for the entry now are those of the new bytes.
    fresh = str(image_job / "fresh.zarr")
    argv = ["extract", str(image.parent), "-o", fresh, "--weights"]
    assert main([*argv, str(image_job / "inception.pth"), "--batch-size", "4", "-q"]) == 0
    (cache,) = [
        p
        for p in (image_job / "runs").glob("features-*.zarr")
        if zarr_attr(p, "source") == str(image.parent)
    ]
    np.testing.assert_allclose(_features(cache), _features(fresh), rtol=1e-5, atol=1e-6)


def zarr_attr(path, key):
    import zarr

    return zarr.open_group(str(path), mode="r").attrs.get(key)


def _features(path):
    import zarr

    return np.asarray(zarr.open_group(str(path), mode="r")["features"][...])


def test_a_history_inside_the_images_is_refused_before_compute(image_job):
    text = IMAGE_JOB.replace('"runs/history.zarr"', '"real/runs/history.zarr"')
    (image_job / "inside.toml").write_text(text)
    with pytest.raises(JobError, match=r"is inside the images .*put the history elsewhere"):
        run_job(load_job(image_job / "inside.toml"))
    assert not (image_job / "real" / "runs").exists()


def test_extract_settings_without_images_are_refused(job_dir):
    (job_dir / "bad.toml").write_text(JOB + '\n[extract]\nencoder = "inception"\n')
    with pytest.raises(JobError, match=r"\[extract\] applies to image entries"):
        load_job(job_dir / "bad.toml")


def test_verify_sees_a_reference_rewritten_with_its_sizes_and_times(job_dir, capsys):
    # The reference changed in place, each file keeping its size and mtime (as `cp -p` or
    # `rsync -t` leave it): `--force --verify` recomputed the entries against the cached
    # statistics of the old reference (FID 0.23 where the data give 23.4), exit 0.
    import zarr

    job = load_job(job_dir / "job.toml")
    run_job(job)
    store = job_dir / "real.zarr"
    times = {p: os.stat(p) for p in store.rglob("*") if p.is_file()}
    arr = zarr.open_array(str(store), mode="r+")
    arr[:] = arr[:] * 2 + 1
    for path, st in times.items():
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert {p: os.stat(p).st_size for p in times} == {p: st.st_size for p, st in times.items()}
    assert run_job(load_job(job_dir / "job.toml")).computed == []  # the listing is unchanged
    lines = []
    assert len(run_job(load_job(job_dir / "job.toml"), verify=True, log=lines.append).computed) == 4
    assert any("other bytes of" in line for line in lines)
    row = next(r for r in History(job.history).table() if r["name"] == "final")
    assert main(["fid", str(store), str(job_dir / "final.zarr"), "--json", "-q"]) == 0
    assert row["fid"] == pytest.approx(json.loads(capsys.readouterr().out)["fid"]["fid"], rel=1e-12)
    assert run_job(load_job(job_dir / "job.toml"), verify=True).computed == []  # bytes recorded


def test_brackets_in_the_job_folder_are_not_a_pattern(tmp_path):
    # 'exp[1]/job.toml' with glob "ck/*.zarr" searched exp1/ck/*.zarr: another folder's store
    # was evaluated (FID 143.8 where the job's own data give 0.24), exit 0.
    own, other = tmp_path / "exp[1]", tmp_path / "exp1"
    for folder, mean in ((own, 0.0), (other, 3.0)):
        (folder / "ck").mkdir(parents=True)
        _write(folder / "ck" / "a-10.zarr", 1000, 4, 5, mean)
    _write(own / "real.zarr", 1000, 4, 6, 0.0)
    (own / "job.toml").write_text(
        '[job]\nname = "b"\nhistory = "h.zarr"\n[reference]\nstore = "real.zarr"\n'
        '[[entries]]\nglob = "ck/*.zarr"\n[metrics.fid]\n'
    )
    job = load_job(own / "job.toml")
    assert [(e.name, e.store, e.step) for e in job.entries] == [
        ("a-10.zarr", str(own / "ck" / "a-10.zarr"), 10)
    ]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ('name = "mine"\n', "'name' applies to a single store"),
        ("step = 5\n", "'step' would be ignored"),
    ],
)
def test_entry_keys_a_glob_would_ignore_are_refused(job_dir, extra, match):
    text = JOB.replace('glob = "ckpt/*/features.zarr"\n', f'glob = "ckpt/*/features.zarr"\n{extra}')
    (job_dir / "job.toml").write_text(text)
    with pytest.raises(JobError, match=match):
        load_job(job_dir / "job.toml")


def test_a_step_beyond_int64_is_refused_at_load(job_dir):
    big = job_dir / "ckpt" / "step-99999999999999999999"
    (job_dir / "ckpt" / "step-1000").rename(big)
    with pytest.raises(JobError, match="exceeds a 64-bit integer"):
        load_job(job_dir / "job.toml")


def test_kid_subset_options_without_subsets_are_refused(job_dir):
    # They were accepted and ignored: the run gave the all-pairs KID.
    (job_dir / "job.toml").write_text(JOB + "[metrics.kid]\nsubset_size = 300\nseed = 77\n")
    with pytest.raises(JobError, match=r"seed, subset_size apply with subsets"):
        load_job(job_dir / "job.toml")


def _metric_set_job(path, metrics, entries=("e-1", "e-2")):
    listed = "".join(
        f'[[entries]]\nname = "{e}"\nstore = "{e}.npy"\nstep = {i}\n'
        for i, e in enumerate(entries, 1)
    )
    path.write_text(
        '[job]\nname = "sets"\nhistory = "runs/h.zarr"\n[reference]\nstore = "real.npy"\n'
        + listed
        + "".join(f"[metrics.{m}]\n{options}\n" for m, options in metrics.items())
    )
    return load_job(path)


@pytest.fixture
def metric_sets(tmp_path):
    rng = np.random.default_rng(7)
    data = {
        "real": rng.normal(size=(500, 6)),
        "e-1": 1.1 * rng.normal(size=(400, 6)) + 0.2,
        "e-2": 0.9 * rng.normal(size=(450, 6)) - 0.1,
    }
    for name, x in data.items():
        np.save(tmp_path / f"{name}.npy", x.astype(np.float32))
    return tmp_path, {k: v.astype(np.float32) for k, v in data.items()}


def _recorded(history, entry, names):
    row = next(r for r in History(history).table() if r["name"] == entry)
    return {n: row.get(n) for n in names}


def _every_kept_version(history):
    """Each complete version under HISTORY.versions (the current one and the one before)."""
    import xarray as xr

    versions = History(history)._versions()
    assert versions
    for version in versions:
        with xr.open_zarr(version, consolidated=False) as ds:
            yield ds.load()


def test_a_job_with_another_metric_set_keeps_every_result(metric_sets):
    # Job A (fid, kid) over e-1 and e-2, then job B (fid, cmmd) over e-1 on the same history:
    # e-1's KID was gone (the row was replaced whole), and after one more run it was gone
    # from the kept versions too.
    from tests.pipeline.test_samples import cmmd_brute, kid_brute
    from tests.reference import exact_fid, np_stats

    tmp, data = metric_sets
    job_a = _metric_set_job(tmp / "a.toml", {"fid": "", "kid": ""})
    first = run_job(job_a)
    assert first.computed == ["e-1", "e-2"]
    history = job_a.history
    kid = {e: _recorded(history, e, ["kid"])["kid"] for e in ("e-1", "e-2")}
    for entry in ("e-1", "e-2"):
        assert kid[entry] == pytest.approx(kid_brute(data["real"], data[entry]), rel=1e-5)

    job_b = _metric_set_job(tmp / "b.toml", {"fid": "", "cmmd": ""}, entries=("e-1",))
    second = run_job(job_b)
    assert second.computed == ["e-1"]
    assert second.metrics == {"e-1": ["cmmd"]}  # FID of e-1 is already there: not again
    for _ in range(2):  # more runs switch versions: nothing may fall out of the kept ones
        assert run_job(job_b).skipped == ["e-1"]
        assert run_job(job_a).skipped == ["e-1", "e-2"]
    e1 = _recorded(history, "e-1", ["fid", "kid", "cmmd"])
    assert e1["kid"] == kid["e-1"]
    assert e1["fid"] == pytest.approx(
        exact_fid(*np_stats(data["real"]), *np_stats(data["e-1"])), rel=1e-6
    )
    assert e1["cmmd"] == pytest.approx(cmmd_brute(data["real"], data["e-1"]), rel=1e-5)
    assert _recorded(history, "e-2", ["kid", "cmmd"]) == {"kid": kid["e-2"], "cmmd": None}
    for ds in _every_kept_version(history):
        names = list(ds["name"].values.astype(str))
        for entry in ("e-1", "e-2"):
            assert float(ds["kid"].values[names.index(entry)]) == kid[entry]


def test_a_changed_option_recomputes_that_metric_only(metric_sets):
    from tests.pipeline.test_samples import cmmd_brute

    tmp, data = metric_sets
    run_job(_metric_set_job(tmp / "a.toml", {"fid": "", "kid": ""}))
    run_job(_metric_set_job(tmp / "b.toml", {"fid": "", "cmmd": ""}))
    job_c = _metric_set_job(tmp / "c.toml", {"kid": "", "cmmd": "sigma = 5.0"})
    before = _recorded(job_c.history, "e-1", ["fid", "kid"])
    summary = run_job(job_c)
    assert summary.metrics == {"e-1": ["cmmd"], "e-2": ["cmmd"]}
    after = _recorded(job_c.history, "e-1", ["fid", "kid", "cmmd"])
    assert {k: after[k] for k in ("fid", "kid")} == before
    assert after["cmmd"] == pytest.approx(cmmd_brute(data["real"], data["e-1"], 5.0), rel=1e-5)
    assert len(run_job(job_c, force=True).computed) == 2  # --force: the job's metrics again


def test_a_changed_store_recomputes_what_is_asked_and_keeps_the_rest_traceable(metric_sets):
    import xarray as xr

    tmp, data = metric_sets
    job_a = _metric_set_job(tmp / "a.toml", {"fid": "", "kid": ""}, entries=("e-1",))
    run_job(job_a)
    old = _recorded(job_a.history, "e-1", ["fid", "kid"])
    np.save(tmp / "e-1.npy", data["e-2"])  # other rows under the same name
    job_b = _metric_set_job(tmp / "b.toml", {"fid": ""}, entries=("e-1",))
    assert run_job(job_b).metrics == {"e-1": ["fid"]}
    new = _recorded(job_a.history, "e-1", ["fid", "kid"])
    assert new["fid"] != old["fid"]
    assert new["kid"] == old["kid"]  # kept: KID was not asked for again
    with xr.open_zarr(job_a.history, consolidated=False) as ds:
        fid_from = json.loads(str(ds["fid.provenance"].values[0]))["fingerprint"]
        kid_from = json.loads(str(ds["kid.provenance"].values[0]))["fingerprint"]
        assert str(ds["fingerprint"].values[0]) == fid_from != kid_from
    assert run_job(job_a).metrics == {"e-1": ["kid"]}  # its KID is of the old rows: again


def test_a_history_without_metric_provenance_is_still_resumed(metric_sets):
    # Histories written before results carried their own provenance (format 2): an unchanged
    # job still skips what it did, and another metric set still keeps what is there.
    import xarray as xr

    tmp, _ = metric_sets
    job_a = _metric_set_job(tmp / "a.toml", {"fid": "", "kid": ""})
    run_job(job_a)
    version = os.path.realpath(job_a.history)
    with xr.open_zarr(version, consolidated=False) as ds:
        old = ds.load()
    old = old.drop_vars([v for v in old.data_vars if str(v).endswith(".provenance")])
    old.attrs["format_version"] = 2
    for name in old.variables:
        old[name].encoding = {}
    old.to_zarr(version, mode="w", consolidated=False, zarr_format=2, write_empty_chunks=True)
    kid = _recorded(job_a.history, "e-1", ["kid"])
    assert run_job(job_a).skipped == ["e-1", "e-2"]
    job_b = _metric_set_job(tmp / "b.toml", {"fid": "", "cmmd": ""}, entries=("e-1",))
    assert run_job(job_b).metrics == {"e-1": ["fid", "cmmd"]}  # FID's options were not recorded
    assert _recorded(job_a.history, "e-1", ["kid"]) == kid


@pytest.mark.filterwarnings("ignore:.*covariance is singular")
def test_a_job_of_images_through_an_hf_model_from_the_local_cache(image_job, monkeypatch):
    """A user's encoder by name in a job file: its dimension is found from one image before
    any compute (the history checks it), and the values equal the one-shot function's."""
    import shardeval as se
    from tests.kernels.test_encoder_registry import _hf_cache, tiny_vit

    transformers = pytest.importorskip("transformers")
    tiny_vit(transformers, _hf_cache(image_job, monkeypatch, "org/tiny-vit"))
    text = IMAGE_JOB.replace('weights = "inception.pth"', 'encoder = "hf:org/tiny-vit"')
    (image_job / "job.toml").write_text(text.replace("[metrics.kid]\n", ""))
    job = load_job(image_job / "job.toml")
    run_job(job)
    rows = {r["name"]: r for r in History(job.history).table()}
    expected = se.fid(
        str(image_job / "real"),
        str(image_job / "samples" / "ckpt-200"),
        encoder="hf:org/tiny-vit",
        batch_size=4,  # the job's: the same batches, the same float32 roundings
        cache_root=str(image_job / "cache"),
    )
    assert rows["ckpt-200"]["fid"] == pytest.approx(float(expected), rel=1e-9)
