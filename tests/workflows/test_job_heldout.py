"""Jobs with a held-out test set (``[reference] test``, for the metrics that read one: C_T) and
per-sample values (``[job] per_sample``): the job's numbers are the API's on the same inputs,
what does not fit is refused at load in one line, each entry's per-sample group is written
(and replaced only where the job wrote it), and the report lists each checkpoint's worst rows
by name, as numpy ranks them from the features."""

import html
import os
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy.spatial.distance import cdist

import shardeval as se
from shardeval.workflows.cli import main
from shardeval.workflows.history import History
from shardeval.workflows.htmlreport import write_report
from shardeval.workflows.jobs import JobError, load_job, run_job
from tests.pipeline.test_realism import realism_reference

JOB = """
[job]
name = "heldout"
history = "runs/history.zarr"

[reference]
store = "train.zarr"
test = "test.zarr"

[[entries]]
glob = "ckpt/*/features.zarr"

[metrics.ct]
[metrics.fid]
"""

ROWS_JOB = """
[job]
name = "rows"
history = "runs/history.zarr"
per_sample = "runs/rows"

[reference]
store = "train.zarr"

[[entries]]
glob = "ckpt/*/features.zarr"

[metrics.authpct]
per_sample = true
[metrics.prdc]
per_sample = true
"""


def _group(path, x, names=None):
    """Features in a Zarr group, with ``names`` (an extraction store's) when given."""
    group = zarr.create_group(str(path), overwrite=True)
    group.create_array(
        "features", shape=x.shape, dtype="float32", chunks=(128, x.shape[1]),
        dimension_names=("sample", "feature"),
    )[...] = x  # fmt: skip
    if names is not None:
        group.create_array(
            "names", shape=(len(x),), dtype=str, chunks=(len(x),), dimension_names=("sample",)
        )[...] = np.asarray(names).astype(object)


@pytest.fixture
def job_dir(tmp_path):
    """A training set, a held-out test set drawn like it, and two checkpoints with names: the
    first copies 100 training rows (each moved by its own small offset), the second does not."""
    rng = np.random.default_rng(5)
    train = rng.normal(size=(400, 5)).astype(np.float32)
    _group(tmp_path / "train.zarr", train)
    _group(tmp_path / "test.zarr", rng.normal(size=(300, 5)).astype(np.float32))
    copying = rng.normal(size=(250, 5))
    copying[:100] = train[:100] + rng.uniform(0.005, 0.05, size=(100, 1)) * rng.normal(
        size=(100, 5)
    )
    for step, gen in ((100, copying), (200, 1.2 * rng.normal(size=(250, 5)))):
        folder = tmp_path / "ckpt" / f"step-{step}"
        folder.mkdir(parents=True)
        names = [f"step{step}/img-{i:04d}.png" for i in rng.permutation(250)]
        _group(folder / "features.zarr", gen.astype(np.float32), names)
    (tmp_path / "job.toml").write_text(JOB)
    return tmp_path


def _store(job_dir, step):
    return str(job_dir / "ckpt" / f"step-{step}" / "features.zarr")


def _features(path):
    return np.asarray(zarr.open_group(str(path), mode="r")["features"][:], np.float64)


def test_ct_in_a_job_is_the_apis_number_and_a_new_test_set_recomputes_it_alone(job_dir):
    job = load_job(job_dir / "job.toml")
    assert job.test_store == str(job_dir / "test.zarr")
    first = run_job(job)
    assert first.metrics == {"step-100": ["ct", "fid"], "step-200": ["ct", "fid"]}
    rows = History(job.history).table()
    train, test = str(job_dir / "train.zarr"), str(job_dir / "test.zarr")
    for row, step in zip(rows, (100, 200), strict=True):
        api = se.metrics(train, _store(job_dir, step), ["ct"], test=test).to_dict()["ct"]
        assert row["ct"] == api["ct"]  # the same number, to the last digit
        assert row["ct"] == float(se.ct(train, test, _store(job_dir, step)))
        assert (row["ct_n_train"], row["ct_n_test"], row["ct_n"]) == (400, 300, 250)
    assert rows[0]["ct"] < -3 < rows[1]["ct"]  # the copying checkpoint, and the other
    ds = History(job.history).load()
    assert set(ds["test"].values.astype(str)) == {test}
    assert all(len(str(fp)) == 32 for fp in ds["test_fingerprint"].values)
    assert run_job(load_job(job_dir / "job.toml")).computed == []
    # Another test set: C_T again, FID (which does not read it) kept.
    rng = np.random.default_rng(6)
    _group(job_dir / "test.zarr", rng.normal(size=(280, 5)).astype(np.float32))
    again = run_job(load_job(job_dir / "job.toml"))
    assert again.metrics == {"step-100": ["ct"], "step-200": ["ct"]}
    after = History(job.history).table()
    assert [r["fid"] for r in after] == [r["fid"] for r in rows]
    assert after[0]["ct_n_test"] == 280
    assert after[0]["ct"] == float(se.ct(train, test, _store(job_dir, 100)))
    _, md = write_report(job.history, str(job_dir / "report.html"))
    assert f"held-out test set**: {test} (digest" in Path(md).read_text()


def _refused(job_dir, text, match):
    (job_dir / "job.toml").write_text(text)
    with pytest.raises(JobError) as raised:
        load_job(job_dir / "job.toml")
    message = str(raised.value)
    assert "\n" not in message
    assert match in message, message
    return message


def test_refusals_at_load_one_line_each(job_dir, capsys):
    message = _refused(job_dir, JOB.replace('test = "test.zarr"\n', ""), "'test' in [reference]")
    assert "ct compares" in message  # names the metric and the missing key
    _refused(
        job_dir,
        JOB.replace("[metrics.ct]\n", ""),
        "reference.test: 'test' in [reference] applies to ct",
    )
    _refused(job_dir, JOB.replace('"test.zarr"', '"gone.zarr"'), "gone.zarr' does not exist")
    assert main(["stats", str(job_dir / "train.zarr"), "-o", str(job_dir / "s.zarr"), "-q"]) == 0
    _refused(job_dir, JOB.replace('"test.zarr"', '"s.zarr"'), "holds statistics")
    images = job_dir / "images"
    images.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 10, 10)).save(images / f"{i}.png")
    _refused(job_dir, JOB.replace('"test.zarr"', '"images"'), "not images")
    _refused(job_dir, JOB.replace('store = "train.zarr"\n', ""), "needs exactly one of 'store'")
    _refused(
        job_dir,
        ROWS_JOB.replace("per_sample = true\n", ""),
        "job.per_sample is where per-sample values go, and no metric of the job gives them",
    )
    # The command line: one line, exit 2.
    (job_dir / "job.toml").write_text(JOB.replace('test = "test.zarr"\n', ""))
    assert main(["run", str(job_dir / "job.toml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "'test' in [reference]" in err, err


def test_a_test_set_of_another_dimension_is_refused_before_any_compute(job_dir):
    _group(job_dir / "test.zarr", np.ones((300, 3), np.float32))
    with pytest.raises(JobError, match=r"test set .* has d=3 features, the reference and"):
        run_job(load_job(job_dir / "job.toml"))
    assert not (job_dir / "runs" / "history.zarr").exists()


def _names(path):
    return np.array([str(n) for n in zarr.open_group(str(path), mode="r")["names"][:]])


def _listed(page):
    """Per checkpoint, per heading: the names the report lists, in order."""
    section = page[page.index('<section id="per-sample">') :]
    section = section[: section.index("</section>")]
    out = {}
    for block in section.split("<h3>")[1:]:
        entry = block[: block.index(" (step")]
        for part in block.split("<p>")[2:]:
            heading = re.match(r"(.*?), by <code>(\w+)</code>", part).group(2)
            names = re.findall(r"<li><code>(.*?)</code>: ([^<]*)</li>", part)
            out[(entry, heading)] = [(html.unescape(n), float(v)) for n, v in names]
    return out


def test_per_sample_groups_per_entry_and_the_worst_rows_in_the_report(job_dir):
    (job_dir / "job.toml").write_text(ROWS_JOB)
    job = load_job(job_dir / "job.toml")
    run_job(job)
    train = _features(job_dir / "train.zarr")
    page = Path(write_report(job.history, str(job_dir / "report.html"))[0]).read_text()
    listed = _listed(page)
    for step in (100, 200):
        gen = _features(_store(job_dir, step))
        names = _names(_store(job_dir, step))
        group = zarr.open_group(str(job_dir / "runs" / "rows" / f"step-{step}.zarr"), mode="r")
        assert (group.attrs["job"], group.attrs["entry"]) == ("rows", f"step-{step}")
        assert group["names"][:].tolist() == names.tolist()
        distance = cdist(gen, train).min(axis=1)
        np.testing.assert_allclose(group["authpct_nearest_distance"][:], distance, rtol=1e-12)
        realism = realism_reference(train, gen)
        np.testing.assert_allclose(group["prdc_realism"][:], realism, rtol=1e-12)
        for output, values in (("authpct_nearest_distance", distance), ("prdc_realism", realism)):
            got = listed[(f"step-{step}", output)]
            order = np.argsort(values)[:5]
            assert [n for n, _ in got] == names[order].tolist()
            np.testing.assert_allclose([v for _, v in got], values[order], rtol=1e-5)
    # The copying checkpoint's most memorised rows are its copies of training rows.
    copied = set(_names(_store(job_dir, 100))[:100])
    assert {n for n, _ in listed[("step-100", "authpct_nearest_distance")]} <= copied
    assert "Most memorised (smallest distance to the nearest training row)" in page
    assert "Least realistic (lowest realism score)" in page
    ds = History(job.history).load()
    assert str(ds["per_sample"].values[0]).endswith(os.path.join("rows", "step-100.zarr"))


def test_per_sample_groups_are_replaced_only_where_the_job_wrote_them(job_dir):
    (job_dir / "job.toml").write_text(ROWS_JOB)
    job = load_job(job_dir / "job.toml")
    run_job(job)
    rows = job_dir / "runs" / "rows"
    written = (rows / "step-100.zarr" / "zarr.json").stat().st_mtime_ns
    assert run_job(load_job(job_dir / "job.toml")).computed == []
    assert (rows / "step-100.zarr" / "zarr.json").stat().st_mtime_ns == written
    # A group gone: the entry's per-sample metrics again, and the group written.
    import shutil

    shutil.rmtree(rows / "step-200.zarr")
    again = run_job(load_job(job_dir / "job.toml"))
    assert again.metrics == {"step-200": ["authpct", "prdc"]}
    assert (rows / "step-200.zarr").exists()
    assert len(run_job(load_job(job_dir / "job.toml"), force=True).computed) == 2  # its own
    # Something the job did not write, even a per-sample group, is never replaced.
    shutil.rmtree(rows / "step-100.zarr")
    report = se.prdc(str(job_dir / "train.zarr"), _store(job_dir, 100), per_sample=True)
    se.save_per_sample(report, rows / "step-100.zarr")
    with pytest.raises(JobError, match="is not the per-sample group this job"):
        run_job(load_job(job_dir / "job.toml"), force=True)
    assert "job" not in zarr.open_group(str(rows / "step-100.zarr"), mode="r").attrs
