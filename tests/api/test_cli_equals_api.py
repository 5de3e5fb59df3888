"""The command line is parse → API call → format: for every command, its JSON report and the
API's ``to_dict()`` hold the same numbers, to the last bit."""

import json
import math

import numpy as np
import pytest

import shardeval as se
from shardeval.workflows.cli import main

#: What differs between two runs of one computation: when and how long.
_VOLATILE = {"seconds", "created", "engine", "versions"}


def _same(a, b, where="report"):
    if isinstance(a, dict):
        assert set(a) - _VOLATILE == set(b) - _VOLATILE, where
        for key in set(a) - _VOLATILE:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float), where
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verbs")
    rng = np.random.default_rng(5)
    paths = {}
    for name, data in {
        "a": rng.normal(size=(400, 6)).astype(np.float32),
        "b": (rng.normal(size=(350, 6)) * 1.1 + 0.2).astype(np.float32),
        "ll": rng.normal(-30, 2, size=300),
        "lw": rng.standard_t(3, size=(40, 50)),
    }.items():
        path = tmp / f"{name}.npy"
        np.save(path, data)
        paths[name] = str(path)
    paths["tmp"] = str(tmp)
    return paths


def _cli(capsys, *argv):
    assert main([*map(str, argv), "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (("fid", "a", "b"), lambda p: se.fid(p["a"], p["b"])),
        (
            ("fid", "a", "b", "--infinity", "--seed", "3"),
            lambda p: se.fid(p["a"], p["b"], infinity=True, seed=3),
        ),
        (("kid", "a", "b"), lambda p: se.kid(p["a"], p["b"])),
        (
            ("kid", "a", "b", "--subsets", "4", "--subset-size", "100"),
            lambda p: se.kid(p["a"], p["b"], subsets=4, subset_size=100),
        ),
        (("cmmd", "a", "b", "--unbiased"), lambda p: se.cmmd(p["a"], p["b"], unbiased=True)),
        (("prdc", "a", "b", "--k", "4"), lambda p: se.prdc(p["a"], p["b"], k=4)),
        (
            ("metrics", "a", "b", "--metrics", "fid,kid,prdc,nll_gaussian"),
            lambda p: se.metrics(p["a"], p["b"], ["fid", "kid", "prdc", "nll_gaussian"]),
        ),
        (("nll", "ll", "--dims", "10"), lambda p: se.nll(p["ll"], dims=10)),
        (("nll", "--iw", "lw"), lambda p: se.nll(iw=p["lw"])),
        (
            ("nll", "b", "--parzen", "a", "--bandwidth", "0.8"),
            lambda p: se.nll(p["b"], parzen=p["a"], bandwidth=0.8),
        ),
        (
            ("nll", "--gmm", "2", "a", "b", "--covariance", "diag", "--seed", "4"),
            lambda p: se.nll(p["a"], p["b"], gmm=2, covariance="diag", seed=4),
        ),
        (("ess", "lw", "--reff", "0.7"), lambda p: se.ess(p["lw"], reff=0.7)),
        (("ess", "lw", "--ci", "0.9"), lambda p: se.ess(p["lw"], ci=0.9)),
    ],
)
def test_every_command_gives_the_api_numbers(stores, capsys, argv, call):
    cli = _cli(capsys, *(stores.get(a, a) for a in argv))
    api = call(stores).to_dict()
    _same(cli, json.loads(json.dumps(api)))


def test_statistics_and_their_merge(stores, capsys, tmp_path):
    cli, api = tmp_path / "cli.zarr", tmp_path / "api.zarr"
    assert main(["stats", stores["a"], "-o", str(cli), "-q"]) == 0
    capsys.readouterr()
    se.stats(stores["a"], api)
    from shardeval.pipeline.io.statsio import load_stats

    one, two = load_stats(str(cli)), load_stats(str(api))
    assert one.n == two.n
    np.testing.assert_array_equal(one.mean, two.mean)
    np.testing.assert_array_equal(one.m2, two.m2)
    gaussian = tmp_path / "g.zarr"
    cli_nll = _cli(capsys, "nll", stores["b"], "--gaussian", str(cli))
    _same(cli_nll, se.nll(stores["b"], gaussian=api).to_dict() | {"inputs": cli_nll["inputs"]})
    assert main(["stats", "merge", str(cli), str(api), "-o", str(gaussian), "-q"]) == 0
    merged = se.merge_stats([cli, api], tmp_path / "m.zarr")
    assert merged["moments"].n == 2 * one.n
    np.testing.assert_array_equal(load_stats(str(gaussian)).m2, merged["moments"].m2)


def test_statistics_inputs_and_arrays_are_the_same_numbers(stores, tmp_path):
    # A store, its rows as an array, a tensor: one value.
    import torch

    a, b = np.load(stores["a"]), np.load(stores["b"])
    from_paths = float(se.fid(stores["a"], stores["b"]))
    assert float(se.fid(a, b)) == from_paths
    assert float(se.fid(torch.from_numpy(a), b)) == from_paths
    stats = tmp_path / "a.npz"
    se.stats(stores["a"], stats)
    assert float(se.fid(stats, b)) == pytest.approx(from_paths, rel=1e-12)


def test_metrics_takes_reference_statistics_where_no_metric_needs_rows(capsys, stores, tmp_path):
    stats = tmp_path / "a_stats.zarr"
    se.stats(stores["a"], stats)
    from_stats = se.metrics(str(stats), stores["b"], ["fid", "fid_inf"])
    from_rows = se.metrics(stores["a"], stores["b"], ["fid", "fid_inf"])
    assert from_stats.to_dict()["fid"] == from_rows.to_dict()["fid"]
    assert from_stats.to_dict()["fid_inf"] == from_rows.to_dict()["fid_inf"]
    cli = _cli(capsys, "metrics", stats, stores["b"], "--metrics", "fid")
    assert cli["fid"] == from_stats.to_dict()["fid"]
    with pytest.raises(se.StoreError, match="holds statistics, but kid needs the reference's"):
        se.metrics(str(stats), stores["b"], ["fid", "kid"])
