"""``shardeval compare REF GEN_A GEN_B``: its JSON report is the Python function's, written
with --out or printed with --json, exit code 0; bad input is one line on stderr, exit code 2,
and no report written."""

import json

import numpy as np
import pytest

import shardeval as se
from shardeval.workflows.cli import main


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(31)
    arrays = {
        "ref": rng.normal(size=(300, 4)),
        "a": rng.normal(size=(280, 4)) + 0.2,
        "b": 1.1 * rng.normal(size=(260, 4)) + 0.2,
        "wide": rng.normal(size=(260, 5)),
    }
    for name, x in arrays.items():
        np.save(root / f"{name}.npy", x)
    se.stats(arrays["b"], str(root / "b-stats.npz"))
    return {name: str(root / f"{name}.npy") for name in arrays} | {
        "root": root,
        "b-stats": str(root / "b-stats.npz"),
    }


_SAME = ("fid", "kid", "gen_a", "gen_b", "options", "inputs", "settings", "metrics", "metric")


def test_the_report_is_the_functions(stores, capsys):
    ref, a, b = stores["ref"], stores["a"], stores["b"]
    out = stores["root"] / "compare.json"
    argv = ["compare", ref, a, b, "--metrics", "fid,kid", "--ci", "0.9", "--ci-groups", "8"]
    assert main([*argv, "--out", str(out), "-q"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("FID a ")
    assert "KID a " in summary
    assert "ref  " in summary
    written = json.loads(out.read_text())
    python = se.compare(ref, a, b, "fid,kid", ci=0.9, ci_groups=8).to_dict()
    for key in _SAME:
        assert written[key] == python[key], key
    assert written["fid"]["fid_difference_level"] == 0.9
    assert written["fid"]["fid_difference_method"].startswith("delete-a-group jackknife over 8")
    for name in ("fid", "kid"):
        section = written[name]
        assert section[f"{name}_difference"] == section[f"{name}_a"] - section[f"{name}_b"]
        assert section[f"{name}_difference_ci_low"] < section[f"{name}_difference_ci_high"]
    assert main(["compare", ref, a, b, "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == ["fid"]
    assert printed["fid"]["fid_difference_level"] == 0.95


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--ci", "1.5"], "--ci: expected a finite number in (0, 1), got 1.5"),
        (["--ci", "0"], "--ci: expected a finite number in (0, 1)"),
        (["--metrics", "fid,cmmd"], "compare supports fid, kid; not cmmd"),
        (["--metrics", "prdc"], "compare supports fid, kid; not prdc"),
    ],
)
def test_bad_options_are_one_line(stores, capsys, extra, match):
    out = stores["root"] / "refused.json"
    code = main(["compare", stores["ref"], stores["a"], stores["b"], *extra, "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("shardeval: error:"), err
    assert err.count("\n") == 1, err
    assert match in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("gen_b", "match"),
    [
        ("wide", "feature dimensions differ"),
        ("b-stats", "needs the rows of both generated sets"),
        ("missing", "does not exist"),
    ],
)
def test_bad_inputs_are_one_line(stores, capsys, gen_b, match):
    b = stores.get(gen_b, str(stores["root"] / "missing.npy"))
    code = main(["compare", stores["ref"], stores["a"], b, "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("shardeval: error:"), err
    assert err.count("\n") == 1, err
    assert match in err
