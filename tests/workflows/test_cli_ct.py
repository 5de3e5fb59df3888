"""The options of ``shardeval ct`` and C_T's options on ``shardeval metrics``: each changes
the result or is refused (the checks run from tests/workflows/test_options.py, on its files:
``a`` the training set, ``a_test`` a held-out set drawn like it, ``b`` and ``copies``
generated sets, the latter with rows equal to training rows)."""

import json

import numpy as np
import pytest

from shardeval.workflows.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def held_out_section(capsys, f, metric, command, *extra, gen="b"):
    """The section and options of a metric of a held-out test set (``metric``: ct, fld), from
    its own command or from `metrics --metrics METRIC --test`."""
    if command == metric:
        argv = [metric, f["a"], f["a_test"], f[gen]]
    else:
        argv = ["metrics", f["a"], f[gen], "--metrics", metric, "--test", f["a_test"]]
    code, out, err = run(capsys, *argv, *extra, "--json", "-q")
    assert code == 0, err
    report = json.loads(out)
    return {**report[metric], **report["options"][metric]}


def _ct(capsys, f, command, *extra, gen="b"):
    """C_T's section and options, from `ct` or from `metrics --metrics ct --test`."""
    return held_out_section(capsys, f, "ct", command, *extra, gen=gen)


def _refused(capsys, *argv, match):
    code, _, err = run(capsys, *argv, "-q")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert match in err, err


def refused_by_the_parser(capsys, *argv, match):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    assert match in capsys.readouterr().err


def check_cells(capsys, f, command, monkeypatch):
    three = _ct(capsys, f, command)
    five = _ct(capsys, f, command, "--cells", "5")
    assert (three["cells"], five["cells"]) == (3, 5)
    assert (len(three["ct_zu"]), len(five["ct_zu"])) == (3, 5)
    assert three["ct"] != five["ct"]
    argv = ["ct", f["a"], f["a_test"], f["b"]]
    refused_by_the_parser(capsys, *argv, "--cells", "0", match="argument --cells")
    _refused(capsys, "ct", f["a"], f["a_test"], f["b"], "--cells", "601", match="has 600 row")


def check_tau_rows(capsys, f, command, monkeypatch):
    default = _ct(capsys, f, command)
    rows = default["ct_gen_rows"]
    assert default["ct_cells_kept"] == 3
    assert min(rows) > 20
    tau = max(rows) - 1  # only the fullest cell keeps
    one = _ct(capsys, f, command, "--tau-rows", str(tau))
    assert one["tau_rows"] == tau
    assert one["ct_cells_kept"] == 1
    kept = max(z for z, n in zip(one["ct_zu"], rows, strict=True) if n > tau)
    assert one["ct"] == pytest.approx(kept, rel=1e-15)
    _refused(capsys, "ct", f["a"], f["a_test"], f["b"], "--tau-rows", "500", match="keeps none")


def check_ct_seed(capsys, f, command, monkeypatch):
    zero = _ct(capsys, f, command)
    other = _ct(capsys, f, command, "--seed", "7")
    assert (zero["seed"], other["seed"]) == (0, 7)
    assert zero["ct_test_fraction"] != other["ct_test_fraction"]  # other cells


def check_neighbours(capsys, f, command, monkeypatch):
    cell = _ct(capsys, f, command)
    everywhere = _ct(capsys, f, command, "--neighbours", "all")
    assert (cell["neighbours"], everywhere["neighbours"]) == ("cell", "all")
    assert cell["ct_cross_cell"] is None
    assert everywhere["ct_cross_cell"] > 0
    assert cell["ct"] != everywhere["ct"]
    argv = ["ct", f["a"], f["a_test"], f["b"], "--neighbours", "x"]
    refused_by_the_parser(capsys, *argv, match="argument --neighbours")


def check_ties(capsys, f, command, monkeypatch):
    # 300 generated rows equal to training rows: 300 distances of 0, tied
    plain = _ct(capsys, f, command, gen="copies")
    tied = _ct(capsys, f, command, "--ties", gen="copies")
    assert (plain["ties"], tied["ties"]) == (False, True)
    assert tied["ct"] < plain["ct"] < -3  # a smaller variance: a larger |Z|
    if command == "metrics":
        argv = ["metrics", f["a"], f["b"], "--metrics", "fid", "--ties"]
        _refused(capsys, *argv, match="which is not asked for")


def check_test(capsys, f, command, monkeypatch):
    listed = _ct(capsys, f, "metrics")
    assert listed == _ct(capsys, f, "ct")
    _refused(capsys, "metrics", f["a"], f["b"], "--metrics", "ct", match="give --test")
    argv = ["metrics", f["a"], f["b"], "--metrics", "fid", "--test", f["a_test"]]
    _refused(capsys, *argv, match="--test applies to ct")
    argv = ["metrics", f["a"], f["b"], "--metrics", "ct", "--test", f["tmp"] / "none.zarr"]
    _refused(capsys, *argv, match="does not exist")
    _refused(capsys, "metrics", f["a"], f["b"], "--metrics", "ct", "--test", f["s"], match="rows")


def check_ct_array(capsys, f, command, monkeypatch):
    def value(*stores, extra=()):
        code, out, err = run(capsys, "ct", *stores, *extra, "--json", "-q")
        assert code == 0, err
        return json.loads(out)["ct"]["ct"]

    # g holds u and v; g2 holds 2b and b: --array picks the variable of the groups
    assert value(f["g"], f["a_test"], f["g2"], extra=("--array", "u")) != value(
        f["g"], f["a_test"], f["g2"], extra=("--array", "v")
    )
    # beside stores of one array, --array picks the group's variable (the rows of a.zarr)
    mixed = value(f["g"], f["a_test"], f["b"], extra=("--array", "u"))
    assert mixed == value(f["a"], f["a_test"], f["b"])
    _refused(capsys, "ct", f["a"], f["a_test"], f["b"], "--array", "u", match="single Zarr")


def check_ct_backend(capsys, f, command, monkeypatch):
    # No Triton kernel finds the nearest rows: the CPU path does, with either backend.
    argv = ["ct", f["a"], f["a_test"], f["b"]]
    code, out, err = run(capsys, *argv, "--backend", "triton", "--json", "-q")
    assert code == 0, err
    triton = json.loads(out)
    code, out, err = run(capsys, *argv, "--backend", "torch", "--json", "-q")
    torch = json.loads(out)
    assert triton["settings"]["backend"] == "triton"
    assert torch["settings"]["backend"] == "torch"
    assert triton["ct"] == torch["ct"]


CT_CHECKS = {
    **{(c, "cells"): check_cells for c in ("ct", "metrics")},
    **{(c, "tau_rows"): check_tau_rows for c in ("ct", "metrics")},
    **{(c, "neighbours"): check_neighbours for c in ("ct", "metrics")},
    **{(c, "ties"): check_ties for c in ("ct", "metrics")},
    ("ct", "seed"): check_ct_seed,
    ("metrics", "test"): check_test,
    ("ct", "array"): check_ct_array,
    ("ct", "backend"): check_ct_backend,
}


@pytest.mark.parametrize("check", [check_ct_seed])
def test_the_metrics_route_takes_ct_seed(check, capsys, tmp_path):
    # `metrics --seed` is checked with KID and FID∞ in test_options; C_T takes it there too
    rng = np.random.default_rng(0)
    f = {"tmp": tmp_path}
    for name, rows in (("a", 300), ("a_test", 200), ("b", 250)):
        f[name] = str(tmp_path / f"{name}.npy")
        np.save(f[name], rng.normal(size=(rows, 4)))
    check(capsys, f, "metrics", None)
