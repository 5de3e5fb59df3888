"""The options of ``shardeval fld`` and FLD's options on ``shardeval metrics``: each changes the
result or is refused (run from tests/workflows/test_options.py, on its files: ``a`` the
training set, ``a_test`` a held-out set drawn like it, ``b`` and ``copies`` generated sets, the
latter with rows equal to training rows); and every route to FLD gives one section, under any
sharding."""

import json

import numpy as np
import pytest

import shardeval as se
from tests.workflows.test_cli_ct import held_out_section, refused_by_the_parser, run


def _fld(capsys, f, command, *extra, gen="b"):
    """FLD's section and options, from `fld` or from `metrics --metrics fld --test`."""
    return held_out_section(capsys, f, "fld", command, *extra, gen=gen)


def check_evaluate(capsys, f, command, monkeypatch):
    test = _fld(capsys, f, command)
    train = _fld(capsys, f, command, "--evaluate", "train")
    gap = _fld(capsys, f, command, "--evaluate", "gap")
    assert (test["evaluate"], train["evaluate"], gap["evaluate"]) == ("test", "train", "gap")
    assert test["fld_nll_train"] is None
    assert gap["fld_baseline_nll"] is None
    # one generated mixture behind all three: the same test NLL, read three ways
    assert test["fld_nll_test"] == train["fld_nll_test"] == gap["fld_nll_test"]
    assert train["fld"] == pytest.approx(
        100 * (train["fld_nll_train"] - train["fld_baseline_nll"]), rel=1e-12
    )
    assert gap["fld"] == pytest.approx(100 * (gap["fld_nll_train"] - gap["fld_nll_test"]))
    assert len({test["fld"], train["fld"], gap["fld"]}) == 3
    argv = ["fld", f["a"], f["a_test"], f["b"], "--evaluate", "all"]
    refused_by_the_parser(capsys, *argv, match="argument --evaluate")


def check_gen_rows(capsys, f, command, monkeypatch):
    whole = _fld(capsys, f, command)
    part = _fld(capsys, f, command, "--gen-rows", "100")
    assert (whole["fld_centres"], part["fld_centres"]) == (500, 100)
    assert whole["fld_n"] == part["fld_n"] == 500
    assert whole["fld"] != part["fld"]
    argv = ["fld", f["a"], f["a_test"], f["b"], "--gen-rows", "0"]
    refused_by_the_parser(capsys, *argv, match="argument --gen-rows")


def check_fld_seed(capsys, f, command, monkeypatch):
    zero = _fld(capsys, f, command)
    other = _fld(capsys, f, command, "--seed", "7")
    assert (zero["seed"], other["seed"]) == (0, 7)
    # another baseline split (the generated set, 500 rows, is whole either way)
    assert zero["fld_baseline_nll"] != other["fld_baseline_nll"]


def check_fld_array(capsys, f, command, monkeypatch):
    def value(*stores, extra=()):
        code, out, err = run(capsys, "fld", *stores, *extra, "--json", "-q")
        assert code == 0, err
        return json.loads(out)["fld"]["fld"]

    # g holds u and v; g2 holds 2b and b: --array picks the variable of the groups
    assert value(f["g"], f["a_test"], f["g2"], extra=("--array", "u")) != value(
        f["g"], f["a_test"], f["g2"], extra=("--array", "v")
    )
    mixed = value(f["g"], f["a_test"], f["b"], extra=("--array", "u"))
    assert mixed == value(f["a"], f["a_test"], f["b"])
    code, _, err = run(capsys, "fld", f["a"], f["a_test"], f["b"], "--array", "u", "-q")
    assert code == 2
    assert "single Zarr" in err


FLD_CHECKS = {
    **{(c, "evaluate"): check_evaluate for c in ("fld", "metrics")},
    **{(c, "gen_rows"): check_gen_rows for c in ("fld", "metrics")},
    ("fld", "seed"): check_fld_seed,
    ("fld", "array"): check_fld_array,
}


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(5, 5))
    paths = {}
    for name, rows, scale in (("train", 320, 1.0), ("test", 200, 1.0), ("gen", 240, 1.2)):
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], (rng.normal(size=(rows, 5)) * scale) @ mix + 0.5)
    return paths


def test_every_route_gives_one_section_under_any_sharding(sets, capsys):
    train, test, gen = sets["train"], sets["test"], sets["gen"]
    code, out, err = run(capsys, "fld", train, test, gen, "--seed", "2", "--json", "-q")
    assert code == 0, err
    command = json.loads(out)
    code, out, err = run(
        capsys,
        "metrics",
        train,
        gen,
        "--metrics",
        "fld",
        "--test",
        test,
        "--seed",
        "2",
        "--shard-rows",
        "37",
        "--json",
        "-q",
    )
    assert code == 0, err
    listed = json.loads(out)
    verb = se.fld(train, test, gen, seed=2, shard_rows=64, split_every=2).to_dict()
    many = se.metrics(train, gen, ["fld"], test=test, seed=2, shard_rows=50).to_dict()
    assert command["fld"] == listed["fld"] == verb["fld"] == many["fld"]
    assert listed["inputs"]["real"]["shards"] == 9


def test_refusals_are_one_line(sets, capsys):
    train, test, gen = sets["train"], sets["test"], sets["gen"]
    code, _, err = run(capsys, "metrics", train, gen, "--metrics", "fld", "-q")
    assert code == 2
    assert "give --test" in err
    assert len(err.strip().splitlines()) == 1
    wide = str(sets["gen"]).replace("gen.npy", "wide.npy")
    np.save(wide, np.ones((30, 6)))
    code, _, err = run(capsys, "fld", train, test, wide, "-q")
    assert code == 2
    assert "d=6" in err
    assert len(err.strip().splitlines()) == 1
