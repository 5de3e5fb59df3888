"""Intervals in the training loop: the metrics that keep rows give the one-shot interval (the
same bits), FID over rows included; the class that keeps moments refuses «ci» in one line.
FID∞'s interval is the same on every route: its command, `metrics`, the Python verb, a job's
history row and the training loop."""

import json

import numpy as np
import pytest
import torch

import shardeval as se
from shardeval.pipeline.errors import OptionError


def _fed(metric, real, gen, rng):
    for rows, is_real in ((real, True), (gen, False)):
        start = 0
        while start < len(rows):
            step = int(rng.integers(1, 60))
            metric.update(torch.from_numpy(rows[start : start + step]), real=is_real)
            start += step
    return metric


@pytest.mark.parametrize(
    ("names", "options", "keys"),
    [
        (["fid"], {"ci": 0.9, "ci_groups": 5}, ("fid", "fid_standard_error", "fid_ci_low")),
        (["kid"], {"ci": 0.9}, ("kid", "kid_standard_error", "kid_ci_low", "kid_ci_high")),
        (
            ["fid_inf"],
            {"ci": 0.9, "ci_groups": 5},
            ("fid_inf", "fid_inf_standard_error", "fid_inf_ci_low", "fid_inf_ci_high"),
        ),
    ],
)
def test_the_training_loop_gives_the_one_shot_interval(names, options, keys):
    rng = np.random.default_rng(11)
    real, gen = rng.normal(size=(310, 5)), 1.1 * rng.normal(size=(290, 5)) + 0.2
    with se.RowMetrics(names, **options) as metric:
        got = _fed(metric, real, gen, rng).compute().to_dict()[names[0]]
    expected = se.metrics(real, gen, names, **options).to_dict()[names[0]]
    for key in keys:
        assert got[key] == expected[key], key
    assert got[keys[-1]] is not None


def test_the_class_of_moments_refuses_an_interval_and_names_the_one_that_gives_it():
    with pytest.raises(OptionError, match=r"se\.RowMetrics\(\['fid'\], ci=0\.95\)"):
        se.FID(ci=0.95)
    se.FID(ci=0.0)  # no interval asked: nothing to refuse


def test_every_route_gives_fid_infinitys_interval(tmp_path, capsys):
    from shardeval.workflows.cli import main
    from shardeval.workflows.history import History
    from shardeval.workflows.jobs import load_job, run_job

    rng = np.random.default_rng(6)
    np.save(tmp_path / "real.npy", rng.normal(size=(300, 4)))
    np.save(tmp_path / "gen.npy", 1.1 * rng.normal(size=(260, 4)) + 0.3)
    real, gen = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    flags = ["--ci", "0.9", "--ci-groups", "5", "--seed", "2"]
    python = se.fid_infinity(real, gen, ci=0.9, ci_groups=5, seed=2).to_dict()["fid_inf"]
    outputs = []
    for argv in (["fid", "--infinity"], ["metrics", "--metrics", "fid_inf"]):
        capsys.readouterr()
        assert main([*argv, *flags, real, gen, "--json", "-q"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["fid_inf"])
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "ci"\nhistory = "h.zarr"\n[reference]\nstore = "{real}"\n'
        f'[[entries]]\nname = "gen"\nstore = "{gen}"\nstep = 1\n'
        "[metrics.fid_inf]\nci = 0.9\nci_groups = 5\nseed = 2\n"
    )
    run_job(load_job(tmp_path / "job.toml"))
    (row,) = History(str(tmp_path / "h.zarr")).table()
    assert python["fid_inf_ci_low"] < python["fid_inf"] < python["fid_inf_ci_high"]
    for key in ("fid_inf", "fid_inf_standard_error", "fid_inf_ci_low", "fid_inf_ci_high"):
        assert outputs[0][key] == outputs[1][key] == python[key], key
        assert row[key] == pytest.approx(python[key], rel=1e-12), key


#: ESS's interval outputs: the same on every route.
ESS_INTERVAL = (
    "ess",
    "ess_standard_error",
    "ess_ci_low",
    "ess_ci_high",
    "ess_fraction_standard_error",
    "ess_fraction_ci_low",
    "ess_fraction_ci_high",
    "ess_ci_method",
    "ess_ci_withheld",
)


def test_every_route_gives_the_ess_interval(tmp_path, capsys):
    """The function, the command line and the training-loop class: one ESS interval, given for
    light log-normal weights and withheld, in one line, for a Pareto tail (k = 0.5)."""
    import json

    from shardeval.workflows.cli import main

    rng = np.random.default_rng(17)
    for name, values, given in (
        ("light", rng.normal(0.0, 0.2, 900), True),
        ("heavy", np.log(rng.pareto(2.0, 900) + 1.0), False),
    ):
        path = str(tmp_path / f"{name}.npy")
        np.save(path, values)
        report = se.ess(path, ci=0.9)
        python = report.to_dict()
        assert (python["ess_ci_low"] is not None) == given, name
        assert (python["ess_ci_withheld"] is None) == given, name
        line = "90% interval of ESS" if given else "no interval: Pareto k̂"
        assert sum(line in x for x in report.summary().splitlines()) == 1, name
        capsys.readouterr()
        assert main(["ess", path, "--ci", "0.9", "--json", "-q"]) == 0
        command = json.loads(capsys.readouterr().out)
        with se.ESS(ci=0.9) as metric:
            _fed_values(metric, values, rng)
            loop = metric.compute().to_dict()
        for key in ESS_INTERVAL:
            assert command[key] == python[key], (name, key)
            if isinstance(python[key], float):
                assert loop[key] == pytest.approx(python[key], rel=1e-12), (name, key)
            else:
                assert loop[key] == python[key], (name, key)
    with pytest.raises(OptionError, match="ci"):
        se.ESS(ci=1.0)
    with pytest.raises(OptionError, match="ci"):
        se.ess(np.zeros(5), ci=-0.1)


def _fed_values(metric, values, rng):
    start = 0
    while start < len(values):
        step = int(rng.integers(1, 200))
        metric.update(values[start : start + step])
        start += step
