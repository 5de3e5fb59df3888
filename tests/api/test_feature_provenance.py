"""Every report says how its features were made and whether the weights are the published
file (their SHA-256, the digest family ``fetch`` pins), and warns when they are not, or when
the two sides were made differently (encoder, resize, weights)."""

import dataclasses
import hashlib
import shutil

import pytest
import torch
import zarr

import shardeval as se
import shardeval.pipeline.io.fetch as fetch
from shardeval.kernels.encoders import weights_digest
from shardeval.kernels.encoders.inception import random_state_dict
from shardeval.pipeline.images.extract import ExtractionError, extract_features
from tests.conftest import png_folder
from tests.pipeline.test_adm_reference import write_virtual

pytestmark = pytest.mark.filterwarnings(
    "ignore::shardeval.pipeline.errors.SingularCovarianceWarning"
)

#: The summary's words for weights that are not the published file.
NOT_PUBLISHED = "not the published weights: not comparable with papers"


_folder = png_folder


@pytest.fixture(scope="module")
def made(tmp_path_factory, weights):
    """Feature stores of two image folders: A and B as pytorch-fid makes them (legacy-pytorch),
    B TF-resized, B with other weights."""
    tmp = tmp_path_factory.mktemp("made")
    a, b = _folder(tmp / "a", 5, 1), _folder(tmp / "b", 5, 2)
    other = tmp / "other.pth"
    torch.save(random_state_dict(4), other)
    stores = {}
    for name, images, options in (
        ("a", a, {}),
        ("b", b, {}),
        ("b-tf", b, {"resize": "legacy-tensorflow"}),
        ("b-other", b, {"weights": str(other)}),
    ):
        stores[name] = str(tmp / f"{name}.zarr")
        extract_features(images, stores[name], **{"weights": weights, **options})
    return {"images": {"a": a, "b": b}, "weights": str(other), **stores}


def _pinned(monkeypatch, path):
    """Make ``fetch`` pin the SHA-256 of ``path``, as if it were the published file."""
    with open(path, "rb") as fh:
        pinned = hashlib.sha256(fh.read()).hexdigest()
    monkeypatch.setitem(
        fetch.ARTIFACTS, "inception", dataclasses.replace(fetch.INCEPTION, sha256=pinned)
    )


def test_the_weights_digest_is_the_sha256_fetch_pins(weights, made):
    with open(weights, "rb") as fh:
        expected = hashlib.sha256(fh.read()).hexdigest()
    assert weights_digest(weights) == f"sha256:{expected}"
    assert fetch.sha256_file(weights) == expected
    assert zarr.open_group(made["a"], mode="r").attrs["weights_digest"] == f"sha256:{expected}"


def _reports(real, gen):
    """The report of every metric that compares two sets."""
    options = {"k": 2, "pr_k": 2}
    return {
        "fid": se.fid(real, gen),
        "kid": se.kid(real, gen),
        "cmmd": se.cmmd(real, gen),
        "prdc": se.prdc(real, gen, **options),
        "metrics": se.metrics(real, gen, ["kid", "prdc"], **options),
    }


def _made_by(report, role):
    return report.to_dict()["features_made_by"][role]


def test_reports_say_whether_the_weights_are_the_published_file(made, weights, monkeypatch):
    for name, report in _reports(made["a"], made["b"]).items():
        data = report.to_dict()
        for role in ("real", "gen"):
            assert _made_by(report, role)["weights_status"] == "not published", name
            assert _made_by(report, role)["weights_digest"] == weights_digest(weights), name
        assert any(NOT_PUBLISHED in w for w in data["warnings"]), name
        assert NOT_PUBLISHED in report.summary(), name
        assert not any("made differently" in w for w in data["warnings"]), name
    _pinned(monkeypatch, weights)
    for name, report in _reports(made["a"], made["b"]).items():
        data = report.to_dict()
        assert _made_by(report, "gen")["weights_status"] == "published", name
        assert not any(NOT_PUBLISHED in w for w in data["warnings"]), name
        assert NOT_PUBLISHED not in report.summary(), name
        assert "the published file" in report.summary(), name


@pytest.mark.parametrize(
    ("gen", "words"),
    [("b-tf", ("resize", "legacy-pytorch", "legacy-tensorflow")), ("b-other", ("weights",))],
)
def test_sides_made_differently_are_compared_with_a_warning(made, gen, words):
    for name, report in _reports(made["a"], made[gen]).items():
        warned = [w for w in report.to_dict()["warnings"] if "made differently" in w]
        assert len(warned) == 1, (name, report.to_dict()["warnings"])
        for word in words:
            assert word in warned[0], (name, warned[0])
        assert warned[0] in report.summary(), name


def test_an_adm_reference_against_features_of_another_resize(tmp_path, rng, made):
    virtual = write_virtual(tmp_path / "VIRTUAL.npz", rng, d=2048, d_s=7)
    report = se.fid(virtual, made["b"])
    warned = [w for w in report.to_dict()["warnings"] if "made differently" in w]
    assert len(warned) == 1
    assert "legacy-tensorflow" in warned[0]
    assert "legacy-pytorch" in warned[0]
    assert _made_by(report, "real")["resize"] == "legacy-tensorflow"
    assert _made_by(report, "real")["weights_status"] == "published"
    same = se.fid(virtual, made["b-tf"])  # TF-resized: only the weights differ
    warned = [w for w in same.to_dict()["warnings"] if "made differently" in w]
    assert len(warned) == 1
    assert "weights" in warned[0]
    assert "legacy-pytorch" not in warned[0]


def test_a_store_made_before_sha256_digests_is_read_and_not_verified(tmp_path, made, weights):
    old = str(tmp_path / "old.zarr")
    shutil.copytree(made["b"], old)
    group = zarr.open_group(old, mode="r+")
    attrs = {k: v for k, v in group.attrs.items() if k not in ("weights_status", "weights_file")}
    group.attrs.put({**attrs, "weights_digest": "blake2b-128:" + "ab" * 16})
    report = se.fid(made["a"], old)
    assert float(report) == pytest.approx(float(se.fid(made["a"], made["b"])), rel=1e-12)
    assert _made_by(report, "gen")["weights_status"] == "not verified"
    assert "not verified" in report.summary()
    assert not any("made differently" in w for w in report.to_dict()["warnings"])
    # Extracting into it again cannot tell whether these weights made it: said, not guessed.
    with pytest.raises(ExtractionError, match="before weights were digested with SHA-256"):
        extract_features(made["images"]["b"], old, weights=weights)


def test_weights_at_the_default_path_that_are_not_the_published_file(
    tmp_path, made, weights, monkeypatch
):
    """A file of the Inception's layout put at the pinned name in torch hub's folder (which
    `shardeval fetch` refuses: wrong SHA-256) is used, and every report says it is not the
    published file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    default = folder / "pt_inception-2015-12-05-6726825d.pth"
    shutil.copy(weights, default)
    report = se.fid(*made["images"].values(), cache_root=str(tmp_path / "cache"))
    assert _made_by(report, "real")["weights_status"] == "not published"
    warned = [w for w in report.to_dict()["warnings"] if NOT_PUBLISHED in w]
    assert warned
    assert str(default) in warned[0]
    assert NOT_PUBLISHED in report.summary()
    extracted = se.extract(made["images"]["a"], str(tmp_path / "a.zarr"))
    assert NOT_PUBLISHED in extracted.summary()
    assert extracted.to_dict()["weights_status"] == "not published"
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert group.attrs["weights_status"] == "not published"
    assert group.attrs["weights_file"] == str(default)


def test_npz_statistics_say_how_their_features_were_made(tmp_path, made):
    """Statistics saved as .npz keep how their features were made, as a Zarr group does: a
    report of them says it and warns of a side made differently, and a merge of them with
    statistics of other features is refused."""
    from shardeval.pipeline.errors import StatsFormatError

    a_npz, a_zarr = str(tmp_path / "a.npz"), str(tmp_path / "a.zarr")
    se.stats(made["a"], a_npz)
    se.stats(made["a"], a_zarr)
    tf_zarr = str(tmp_path / "b-tf.zarr")
    se.stats(made["b-tf"], tf_zarr)
    for stats in (a_npz, a_zarr):
        report = se.fid(stats, made["b-tf"])
        assert _made_by(report, "real")["resize"] == "legacy-pytorch", stats
        assert _made_by(report, "real")["weights_status"] == "not published", stats
        warned = [w for w in report.to_dict()["warnings"] if "made differently" in w]
        assert len(warned) == 1, (stats, report.to_dict()["warnings"])
        assert "legacy-tensorflow" in warned[0]
        with pytest.raises(StatsFormatError, match="made differently"):
            se.merge_stats([stats, tf_zarr], str(tmp_path / "merged.zarr"))
    assert not (tmp_path / "merged.zarr").exists()
    # A merge made the same way says how, and a report of it warns as of its inputs.
    b_npz = str(tmp_path / "b.npz")
    se.stats(made["b"], b_npz)
    se.merge_stats([a_npz, b_npz], str(tmp_path / "ab.zarr"))
    report = se.fid(str(tmp_path / "ab.zarr"), made["b-tf"])
    assert _made_by(report, "real")["resize"] == "legacy-pytorch"
    assert any("made differently" in w for w in report.to_dict()["warnings"])
