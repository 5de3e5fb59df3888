"""Jobs of image inputs: results of images changed since they were computed are marked stale;
each entry records how its features (and its reference's) were made, `history` and the report
show it per entry and warn when entries of one series, or an entry and its reference, were
made differently; [extract] takes random weights and skip_bad as the metric commands do, and a
run says when its weights are not the published file."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardeval.workflows import htmlreport
from shardeval.workflows.cli import main
from shardeval.workflows.history import History
from shardeval.workflows.htmlreport import write_report
from shardeval.workflows.jobs import JobError, load_job, run_job
from tests.workflows.test_jobs import IMAGE_JOB

pytestmark = pytest.mark.filterwarnings("ignore:.*covariance is singular")


@pytest.fixture
def image_job(tmp_path, rng):
    """test_jobs' image job: a reference of 10 images, entries ckpt-100 (6) and ckpt-200 (7),
    random Inception weights in a file."""
    import torch

    from shardeval.kernels.encoders.inception import random_state_dict

    torch.save(random_state_dict(5), tmp_path / "inception.pth")
    for folder, n in (("real", 10), ("samples/ckpt-100", 6), ("samples/ckpt-200", 7)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            _png(tmp_path / folder / f"{i:02d}.png", rng)
    (tmp_path / "job.toml").write_text(IMAGE_JOB)
    return tmp_path


def _history_json(capsys, history):
    capsys.readouterr()
    assert main(["history", history, "--format", "json"]) == 0
    return {r["name"]: r for r in json.loads(capsys.readouterr().out)}


def _png(path, rng, shape=(24, 32, 3)):
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def test_images_changed_since_the_run_are_marked_stale(image_job, capsys, rng):
    job = load_job(image_job / "job.toml")
    run_job(job)
    assert all(not r["stale"] for r in _history_json(capsys, job.history).values())
    # An image added to one entry: its results no longer describe its images.
    shutil.copy(image_job / "real" / "00.png", image_job / "samples" / "ckpt-200" / "99.png")
    rows = _history_json(capsys, job.history)
    assert rows["ckpt-100"]["stale"] == {}
    assert set(rows["ckpt-200"]["stale"]) == {"fid", "kid"}
    assert "its images changed since" in rows["ckpt-200"]["stale"]["fid"]
    # A reference image replaced: every entry's results.
    _png(image_job / "real" / "00.png", rng, (30, 20, 3))
    rows = _history_json(capsys, job.history)
    assert set(rows["ckpt-100"]["stale"]) == {"fid", "kid"}
    assert "its reference's images changed since" in rows["ckpt-100"]["stale"]["kid"]
    assert main(["history", job.history]) == 0
    assert "ckpt-100: fid (stale: its reference's images changed since" in capsys.readouterr().out
    _, md = write_report(job.history, str(image_job / "report.html"))
    text = Path(md).read_text(encoding="utf-8")
    assert "stale results**: none" not in text
    assert "ckpt-200: fid (its images changed since" in text
    # A run computes them again, and they describe their images.
    assert run_job(load_job(image_job / "job.toml")).computed == ["ckpt-100", "ckpt-200"]
    assert all(not r["stale"] for r in _history_json(capsys, job.history).values())


def _job(folder, name, entry, resize, reference='images = "real"'):
    text = (
        IMAGE_JOB.replace(
            'images = "samples/ckpt-*"',
            f'images = "samples/{entry}"\nstep = {entry.split("-")[1]}',
        )
        .replace('images = "real"', reference)
        .replace("[extract]", f'[extract]\nresize = "{resize}"')
    )
    (folder / name).write_text(text)
    return load_job(folder / name)


def test_entries_made_differently_are_shown_and_warned_of(image_job, capsys, monkeypatch):
    first = _job(image_job, "a.toml", "ckpt-100", "legacy-pytorch")
    second = _job(image_job, "b.toml", "ckpt-200", "clean")
    run_job(first)
    run_job(second)
    rows = _history_json(capsys, first.history)
    made = {name: rows[name]["features_made_by"] for name in ("ckpt-100", "ckpt-200")}
    assert made["ckpt-100"]["resize"] == "legacy-pytorch"
    assert made["ckpt-200"]["resize"] == "clean"
    for name in made:
        assert made[name]["weights_digest"].startswith("sha256:")
        assert made[name]["weights_status"] == "not published"
        # Each entry's reference was extracted with its job's settings.
        assert rows[name]["reference_made_by"]["resize"] == made[name]["resize"]
    assert main(["history", first.history]) == 0
    out = capsys.readouterr().out
    assert re.search(r"features made by .*resize legacy-pytorch.*: ckpt-100\n", out)
    assert re.search(r"features made by .*resize clean.*: ckpt-200\n", out)
    assert re.search(r"warning: entries ckpt-100 and ckpt-200 .*made differently \(resize", out)
    drawn = []
    monkeypatch.setattr(htmlreport, "_png", lambda fig: drawn.append(fig) or "")
    page, md = write_report(first.history, str(image_job / "report.html"))
    text = Path(md).read_text(encoding="utf-8")
    warned = [line for line in text.splitlines() if "made differently" in line]
    assert len(warned) == 1, text
    assert "resize legacy-pytorch (ckpt-100) and clean (ckpt-200)" in warned[0]
    entries = [line for line in text.splitlines() if line.startswith("| ckpt-")]
    assert "resize legacy-pytorch" in entries[0]
    assert "resize clean" in entries[1]
    assert "made differently" in Path(page).read_text(encoding="utf-8")
    # Over the steps, the two are points of their own, never one line.
    steps = next(f for f in drawn if f.axes[0].get_xlabel() == "training step")
    lines = steps.axes[0].get_lines()
    assert sorted(tuple(line.get_xdata()) for line in lines) == [(100,), (200,)]
    assert "legacy-pytorch" in lines[0].get_label()
    assert "clean" in lines[1].get_label()


def test_an_entry_made_differently_from_its_reference_is_warned_of(image_job, capsys):
    real = str(image_job / "real.zarr")
    argv = ["extract", str(image_job / "real"), "-o", real, "-q"]
    assert main([*argv, "--weights", str(image_job / "inception.pth")]) == 0
    job = _job(image_job, "c.toml", "ckpt-200", "clean", 'store = "real.zarr"')
    run_job(job)
    rows = _history_json(capsys, job.history)
    assert rows["ckpt-200"]["reference_made_by"]["resize"] == "legacy-pytorch"
    _, md = write_report(job.history, str(image_job / "report.html"))
    text = Path(md).read_text(encoding="utf-8")
    (warned,) = [line for line in text.splitlines() if "made differently" in line]
    assert "ckpt-200 and its reference" in warned
    assert "resize clean and legacy-pytorch" in warned


@pytest.mark.parametrize("weights", ["random", "random:3"])
def test_extract_takes_random_weights_and_the_run_says_so(image_job, capsys, weights):
    shutil.rmtree(image_job / "samples" / "ckpt-100")
    text = IMAGE_JOB.replace('weights = "inception.pth"', f'weights = "{weights}"')
    (image_job / "random.toml").write_text(text)
    assert main(["run", str(image_job / "random.toml")]) == 0
    err = capsys.readouterr().err
    assert "features made with random weights" in err
    seed = weights.partition(":")[2] or "0"
    rows = _history_json(capsys, str(image_job / "runs" / "history.zarr"))
    assert rows["ckpt-200"]["features_made_by"]["weights_digest"] == f"random:{seed}"
    assert rows["ckpt-200"]["features_made_by"]["weights_status"] == "random"
    # A file named random is a path: ./random.
    text = IMAGE_JOB.replace('weights = "inception.pth"', 'weights = "./random"')
    (image_job / "file.toml").write_text(text)
    with pytest.raises(JobError, match=r"extract.weights: '.*/random' does not exist"):
        load_job(image_job / "file.toml")


@pytest.mark.parametrize("weights", ["random:", "random:-1", "random:x", f"random:{2**63}"])
def test_random_weights_of_a_bad_seed_are_refused_when_the_job_is_read(tmp_path, weights, rng):
    for folder in ("real", "samples/ckpt-1"):
        (tmp_path / folder).mkdir(parents=True)
        _png(tmp_path / folder / "0.png", rng)
    text = IMAGE_JOB.replace('weights = "inception.pth"', f'weights = "{weights}"')
    (tmp_path / "job.toml").write_text(text)
    with pytest.raises(JobError) as refused:
        load_job(tmp_path / "job.toml")
    message = str(refused.value)
    assert f"extract.weights: {weights!r} is not random weights of a seed" in message
    assert '"random:SEED"' in message
    assert "«" not in message


def test_a_run_with_weights_that_are_not_the_published_file_says_so(image_job, capsys):
    shutil.rmtree(image_job / "samples" / "ckpt-100")
    assert main(["run", str(image_job / "job.toml")]) == 0
    err = capsys.readouterr().err
    assert "not the published weights: not comparable with papers" in err


def test_skip_bad_in_extract_leaves_undecodable_images_out(image_job, capsys, rng):
    shutil.rmtree(image_job / "samples" / "ckpt-100")
    bad = image_job / "samples" / "ckpt-200" / "05.png"
    bad.write_bytes(b"not an image")
    assert main(["run", str(image_job / "job.toml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "skip_bad = true in [extract]" in err
    text = IMAGE_JOB.replace("[extract]", "[extract]\nskip_bad = true")
    (image_job / "skip.toml").write_text(text)
    with pytest.warns(UserWarning, match=r"1 image\(s\) of .*ckpt-200 left out") as warned:
        run_job(load_job(image_job / "skip.toml"))
    assert any(str(bad) in str(w.message) for w in warned)
    rows = _history_json(capsys, str(image_job / "runs" / "history.zarr"))
    assert rows["ckpt-200"]["fid_n"] == 6
    (image_job / "typed.toml").write_text(text.replace("skip_bad = true", 'skip_bad = "yes"'))
    with pytest.raises(JobError, match=r"extract\.skip_bad must be true or false"):
        load_job(image_job / "typed.toml")


def test_too_few_decodable_images_name_the_images_not_the_cache(image_job, capsys):
    shutil.rmtree(image_job / "samples" / "ckpt-100")
    folder = image_job / "samples" / "ckpt-200"
    for image in sorted(folder.iterdir())[1:]:
        image.write_bytes(b"not an image")
    text = IMAGE_JOB.replace("[extract]", "[extract]\nskip_bad = true")
    (image_job / "skip.toml").write_text(text)
    assert main(["run", str(image_job / "skip.toml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(folder) in err
    assert "row(s)" not in err
    assert "gave 1 decodable image (6 left out as unreadable with [extract] skip_bad)" in err
    assert History(str(image_job / "runs" / "history.zarr")).load() is None
