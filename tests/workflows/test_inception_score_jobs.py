"""The Inception Score through every front end: a job without a reference (logits entries),
a job of FID and IS on extraction stores (features and logits side by side), the history, the
HTML report, the ``is`` and ``metrics`` commands and the Python API, one code path."""

import json

import numpy as np
import pytest
import zarr

import shardeval as se
from shardeval.pipeline.images.extract import LOGITS_ARRAY
from shardeval.pipeline.io.stores import FEATURES_FORMAT
from shardeval.workflows.cli import main
from shardeval.workflows.history import History
from shardeval.workflows.htmlreport import write_report
from shardeval.workflows.jobfile import JobError, load_job
from shardeval.workflows.jobs import run_job


def _logits(rng, n, c=12):
    centres = rng.standard_normal((5, c)) * 3
    return (centres[rng.integers(0, 5, n)] + rng.standard_normal((n, c))).astype(np.float32)


def _extraction_like(path, rng, n, d=6, c=12, shift=0.0):
    """A store laid out as extraction writes it: features and logits, rows side by side."""
    group = zarr.create_group(
        str(path), attributes={"format": FEATURES_FORMAT, "encoder": "inception", "complete": True}
    )
    features = group.create_array(
        "features", shape=(n, d), dtype="float32", chunks=(64, d),
        dimension_names=("sample", "feature"),
    )  # fmt: skip
    features[...] = rng.standard_normal((n, d)) + shift
    logits = group.create_array(
        LOGITS_ARRAY, shape=(n, c), dtype="float32", chunks=(64, c),
        dimension_names=("sample", "class"),
    )  # fmt: skip
    logits[...] = _logits(rng, n, c)
    return str(path)


NO_REFERENCE = """
[job]
history = "runs/history.zarr"

[[entries]]
glob = "ckpt/step-*/logits.npy"

[metrics.is]
splits = 4
"""


def test_a_job_of_the_inception_score_alone_needs_no_reference(tmp_path, rng, capsys):
    for step in (100, 200, 300):
        (tmp_path / "ckpt" / f"step-{step}").mkdir(parents=True)
        np.save(tmp_path / "ckpt" / f"step-{step}" / "logits.npy", _logits(rng, 150 + step))
    (tmp_path / "job.toml").write_text(NO_REFERENCE)
    job = load_job(tmp_path / "job.toml")
    assert job.reference_store is job.reference_stats is job.reference_images is None
    summary = run_job(job)
    assert summary.computed == ["step-100", "step-200", "step-300"]
    rows = History(job.history).table("is")
    assert [r["step"] for r in rows] == [100, 200, 300]
    for row in rows:
        store = str(tmp_path / "ckpt" / f"step-{row['step']}" / "logits.npy")
        report = se.inception_score(store, splits=4)
        result = report.results["is"]
        assert row["is"] == float(report)
        assert row["is_standard_error"] == result.standard_error
        assert row["is_split_mean"] == result.split_mean
        assert row["is_split_std"] == result.split_std
        assert row["is_n"] == result.n
    assert run_job(load_job(tmp_path / "job.toml")).skipped == ["step-100", "step-200", "step-300"]
    # History and report: the metric's outputs and plot, no reference.
    assert main(["history", job.history, "--metric", "is", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["is"] for r in shown] == [r["is"] for r in rows]
    page, md = write_report(job.history, str(tmp_path / "report.html"))
    with open(page) as fh:
        text = fh.read()
    assert "Inception Score (IS)" in text
    assert "none (metrics of the entries alone)" in text
    assert text.count("data:image/png;base64,") == 1
    assert md is not None


def test_a_job_of_fid_and_is_reads_features_and_logits_of_one_store(tmp_path, rng, capsys):
    real = _extraction_like(tmp_path / "real.zarr", rng, 400)
    for step in (10, 20):
        _extraction_like(tmp_path / f"gen-{step}.zarr", rng, 300, shift=0.1 * step)
    (tmp_path / "job.toml").write_text(
        '[job]\nhistory = "h.zarr"\n[reference]\nstore = "real.zarr"\n'
        '[[entries]]\nglob = "gen-*.zarr"\n[metrics.fid]\n[metrics.is]\n'
    )
    job = load_job(tmp_path / "job.toml")
    run_job(job)
    rows = {r["step"]: r for r in History(job.history).table()}
    for step in (10, 20):
        gen = str(tmp_path / f"gen-{step}.zarr")
        assert rows[step]["fid"] == pytest.approx(float(se.fid(real, gen)), rel=1e-6)
        assert rows[step]["is"] == float(se.inception_score(gen))
        assert rows[step]["is_split_mean"] is None  # no splits asked: recorded missing
    assert History(job.history).load().attrs["d"] == 6  # the features' dimension
    page, _ = write_report(job.history, str(tmp_path / "report.html"))
    with open(page) as fh:
        text = fh.read()
    assert "real.zarr (digest" in text
    # The same from the commands and the API: one code path, to the last bit.
    gen = str(tmp_path / "gen-20.zarr")
    argv = ["metrics", real, gen, "--metrics", "fid,is", "--splits", "3", "--json", "-q"]
    assert main(argv) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["is"]["is"] == rows[20]["is"]
    assert main(["metrics", gen, "--metrics", "is", "--splits", "3", "--json", "-q"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["is"] == both["is"]
    assert alone["inputs"]["real"] is None
    assert main(["is", gen, "--splits", "3", "--json", "-q"]) == 0
    verb = json.loads(capsys.readouterr().out)
    assert verb["is"]["split_mean"] == alone["is"]["is_split_mean"]
    assert verb["is"]["inception_score"] == alone["is"]["is"]
    assert verb["inputs"]["logits"]["array"] == LOGITS_ARRAY
    api = se.metrics(None, gen, ["is"], splits=3)
    assert api.to_dict()["is"] == alone["is"]


def test_a_reference_is_optional_only_when_no_metric_uses_one(tmp_path, rng, capsys):
    _extraction_like(tmp_path / "real.zarr", rng, 200)
    _extraction_like(tmp_path / "gen.zarr", rng, 200)
    entries = '[[entries]]\nstore = "gen.zarr"\n'
    (tmp_path / "fid.toml").write_text(f'[job]\nhistory = "h.zarr"\n{entries}[metrics.fid]\n')
    with pytest.raises(JobError, match=r"metrics \['fid'\] compare each entry with a reference"):
        load_job(tmp_path / "fid.toml")
    (tmp_path / "empty.toml").write_text(
        f'[job]\nhistory = "h.zarr"\n[reference]\n{entries}[metrics.is]\n'
    )
    with pytest.raises(JobError, match="needs exactly one of"):
        load_job(tmp_path / "empty.toml")
    # A reference with IS alone: not read (the log says so), the entry computed.
    (tmp_path / "is.toml").write_text(
        f'[job]\nhistory = "h2.zarr"\n[reference]\nstore = "real.zarr"\n{entries}[metrics.is]\n'
    )
    lines = []
    run_job(load_job(tmp_path / "is.toml"), log=lines.append)
    assert any("not read: no metric of the job uses one" in line for line in lines)
    (row,) = History(tmp_path / "h2.zarr").table("is")
    assert row["is"] == float(se.inception_score(str(tmp_path / "gen.zarr")))
    (tmp_path / "seed.toml").write_text(
        f'[job]\nhistory = "h3.zarr"\n{entries}[metrics.is]\nseed = 3\n'
    )
    assert main(["run", str(tmp_path / "seed.toml"), "-q"]) == 2
    assert "seed applies with splits" in capsys.readouterr().err  # as the file names it
    # The metrics command: a reference that no metric uses, or none where one is needed.
    gen = str(tmp_path / "gen.zarr")
    assert main(["metrics", gen, gen, "--metrics", "is", "-q"]) == 2
    assert "takes no reference" in capsys.readouterr().err
    assert main(["metrics", gen, "--metrics", "fid,is", "-q"]) == 2
    assert "fid compares the set with a reference" in capsys.readouterr().err


def _fails(capsys, argv, *words, absent=()):
    """The command exits 2 with one line naming ``words`` and none of ``absent``."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    for word in absent:
        assert word not in err, err
    return err


def test_the_commands_refuse_what_is_not_logits(tmp_path, rng, capsys):
    """Gaussian features (a `synth` store) are not logits: `is` and `metrics --metrics fid,is`
    refuse them in one line that says how to give logits (they gave IS 3.05 before)."""
    real, gen = str(tmp_path / "real.zarr"), str(tmp_path / "gen.zarr")
    assert main(["synth", real, "--n", "500", "--d", "32"]) == 0
    assert main(["synth", gen, "--n", "500", "--d", "32", "--seed", "1"]) == 0
    capsys.readouterr()
    # A Zarr array holds one array: --array has nothing to pick in it, and is not suggested.
    how = ("not known to hold class logits", "--as-logits", "logits.npy")
    _fails(capsys, ["is", gen, "-q"], *how, absent=("--array",))
    _fails(capsys, ["metrics", real, gen, "--metrics", "fid,is", "-q"], "not known to hold")
    # Named, the array is read: the user said it holds logits.
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    x = _logits(rng, 300)
    group.create_array("scores", shape=x.shape, dtype="f4", chunks=(100, 12))[...] = x
    group.create_array("other", shape=x.shape, dtype="f4", chunks=(100, 12))[...] = x
    assert main(["is", str(tmp_path / "g.zarr"), "--array", "scores", "--json", "-q"]) == 0
    named = json.loads(capsys.readouterr().out)["is"]["inception_score"]
    assert named == float(se.inception_score(x))
    # Probabilities: refused, naming their log as the fix.
    p = np.exp(x - x.max(axis=1, keepdims=True))
    np.save(tmp_path / "logits.npy", p / p.sum(axis=1, keepdims=True))
    _fails(capsys, ["is", tmp_path / "logits.npy", "-q"], "probabilit", "log")


def test_an_extraction_stores_array_option_is_honoured_or_refused(tmp_path, rng, capsys):
    store = _extraction_like(tmp_path / "x.zarr", rng, 200)
    real = _extraction_like(tmp_path / "r.zarr", rng, 200)
    want = float(se.inception_score(store))
    assert main(["is", store, "--array", "logits", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["is"]["inception_score"] == want
    _fails(capsys, ["is", store, "--array", "features", "-q"], "--array features", "'logits'")
    argv = ["metrics", store, "--metrics", "is", "--array", "features", "-q"]
    _fails(capsys, argv, "--array features")
    # With FID, --array names its features; IS reads the logits.
    argv = ["metrics", real, store, "--metrics", "fid,is", "--array", "features", "--json", "-q"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["is"]["is"] == want


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--precision", "fp64"), ("--device", "cpu"), ("--backend", "torch"), ("--nonfinite", "drop")],
)
def test_metrics_is_refuses_options_it_does_not_take(tmp_path, rng, capsys, flag, value):
    store = _extraction_like(tmp_path / "x.zarr", rng, 100)
    _fails(capsys, ["metrics", store, "--metrics", "is", flag, value, "-q"], flag, "is")
    assert main(["metrics", store, "--metrics", "is", "--json", "-q"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    if flag == "--nonfinite":
        assert settings["nonfinite"] == "error"  # what it does: every row or an error
    else:
        assert flag[2:] not in settings


def test_messages_name_only_options_that_exist(tmp_path, rng, capsys):
    """NaN logits, and an extraction store without logits: the fix the message names is one
    the command has (there is no --nonfinite on `is`, no --logits anywhere)."""
    store = _extraction_like(tmp_path / "x.zarr", rng, 100)
    group = zarr.open_group(store, mode="r+")
    bad = group[LOGITS_ARRAY][...]
    bad[5, 3] = np.nan
    group[LOGITS_ARRAY][...] = bad
    real = _extraction_like(tmp_path / "r.zarr", rng, 100)
    _fails(capsys, ["is", store, "-q"], "row(s) of logits", absent=("--nonfinite",))
    argv = ["metrics", real, store, "--metrics", "fid,is", "--nonfinite", "drop", "-q"]
    _fails(capsys, argv, "row(s) of logits", absent=("--nonfinite drop",))
    old = tmp_path / "old.zarr"
    group = zarr.create_group(
        str(old), attributes={"format": FEATURES_FORMAT, "encoder": "inception", "complete": True}
    )
    group.create_array("features", shape=(90, 6), dtype="float32", chunks=(30, 6))[...] = 1.0
    for argv in (["is", old, "-q"], ["metrics", old, "--metrics", "is", "-q"]):
        _fails(capsys, argv, "without class logits", absent=("--logits",))


def test_a_one_array_file_is_read_as_logits_when_the_command_says_so(tmp_path, rng, capsys):
    """`is scores.npy` named --array NAME as a fix, which `is scores.npy --array scores` then
    refused ("it has no array 'scores'"): the messages name --as-logits, which reads it; an
    .npz holding `logits` beside other arrays gives them (it asked for "the features")."""
    x = _logits(rng, 300)
    want = float(se.inception_score(x))
    np.save(tmp_path / "scores.npy", x)
    npy = tmp_path / "scores.npy"
    _fails(capsys, ["is", npy, "-q"], "--as-logits", absent=("--array",))
    for name in ("scores", "logits"):
        _fails(capsys, ["is", npy, "--array", name, "-q"], f"--array {name}", "--as-logits")
    for argv in (["is", npy], ["metrics", npy, "--metrics", "is"]):
        assert main([str(a) for a in argv] + ["--as-logits", "--json", "-q"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["is"]["is" if argv[0] == "metrics" else "inception_score"] == want
    np.savez(tmp_path / "both.npz", logits=x, other=x[:, :5])
    assert main(["is", str(tmp_path / "both.npz"), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["is"]["inception_score"] == want
    # Pool3-like features (2,048 wide, ≥ 0): refused, naming --as-logits for real logits.
    pool3 = np.maximum(rng.standard_normal((200, 2048)), 0).astype("f4")
    np.save(tmp_path / "logits.npy", pool3)
    _fails(capsys, ["is", tmp_path / "logits.npy", "-q"], "2,048 columns", "--as-logits")
