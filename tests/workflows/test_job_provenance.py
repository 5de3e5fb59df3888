"""Jobs of image inputs: results of images changed since they were computed are marked stale."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardeval.workflows.cli import main
from shardeval.workflows.htmlreport import write_report
from shardeval.workflows.jobs import load_job, run_job
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
