"""Every route to a metric is one computation: the metric's own command, ``metrics``, the
Python verb and a job's history row give the same section, with the same keys and values, for
the same inputs and options (the plug-in computes; the routes only read and format)."""

import json

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.metrics import METRICS
from shardeval.workflows.cli import main
from shardeval.workflows.history import History
from shardeval.workflows.jobs import load_job, run_job

#: Each metric with a command of its own: the command line that asks it (real, gen appended),
#: the Python verb and its keywords, and a metric option set away from its default.
ROUTES = {
    "fid": (["fid"], se.fid, {}, {}),
    "fid_inf": (["fid", "--infinity", "--seed", "3"], se.fid_infinity, {"seed": 3}, {"seed": 3}),
    "kid": (
        ["kid", "--subsets", "4", "--subset-size", "50"],
        se.kid,
        {"subsets": 4, "subset_size": 50},
        {"subsets": 4, "subset_size": 50},
    ),
    "cmmd": (
        ["cmmd", "--sigma", "2.5", "--ci", "0.9"],
        se.cmmd,
        {"sigma": 2.5, "ci": 0.9},
        {"sigma": 2.5, "ci": 0.9},
    ),
    "prdc": (["prdc", "--k", "4"], se.prdc, {"k": 4}, {"k": 4}),
}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two small feature sets as .npy files (one shard each: every route reads them alike)."""
    folder = tmp_path_factory.mktemp("routes")
    rng = np.random.default_rng(7)
    real = rng.normal(size=(300, 6))
    gen = 1.1 * rng.normal(size=(260, 6)) + 0.2
    np.save(folder / "real.npy", real)
    np.save(folder / "gen.npy", gen)
    return folder, str(folder / "real.npy"), str(folder / "gen.npy")


def _cli(capsys, argv):
    capsys.readouterr()
    code = main([*argv, "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _job_row(folder, metric, options, real, gen):
    table = "\n".join(f"{k} = {v!r}" for k, v in options.items())
    (folder / f"{metric}.toml").write_text(
        f'[job]\nname = "{metric}"\nhistory = "{metric}-history.zarr"\n'
        f'[reference]\nstore = "{real}"\n[[entries]]\nname = "gen"\nstore = "{gen}"\nstep = 1\n'
        f"[metrics.{metric}]\n{table}\n"
    )
    run_job(load_job(folder / f"{metric}.toml"))
    (row,) = History(str(folder / f"{metric}-history.zarr")).table()
    return row


@pytest.mark.parametrize("metric", sorted(ROUTES))
def test_every_route_gives_one_section(sets, capsys, metric):
    folder, real, gen = sets
    argv, verb, keywords, job_options = ROUTES[metric]
    command = _cli(capsys, [*argv, real, gen])
    flags = [a for a in argv[1:] if a != "--infinity"]
    listed = _cli(capsys, ["metrics", "--metrics", metric, *flags, real, gen])
    python = verb(real, gen, **keywords).to_dict()
    assert command[metric] == listed[metric] == python[metric]
    assert command["options"][metric] == listed["options"][metric] == python["options"][metric]
    declared = {o.name for o in METRICS[metric].outputs}
    assert set(command[metric]) <= declared
    row = _job_row(folder, metric, job_options, real, gen)
    arrays = {o.name for o in METRICS[metric].outputs if o.array}  # a history keeps scalars
    for key, value in command[metric].items():
        if value is None or key in arrays:
            continue
        assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key


#: Registered metrics of features without a command of their own (any registered later too):
#: `metrics --metrics NAME`, se.metrics and a job's history row, with an option away from its
#: default where they have one worth setting. A metric that also reads a held-out test set
#: has its routes below.
LISTED = {"kl_gaussian": {"ridge": 0.25}, "vendi": {"q": 2.0}}
WITHOUT_COMMAND = sorted(
    name
    for name, cls in METRICS.items()
    if name not in ROUTES and cls.reads == "features" and not cls.needs_test
)


def _flags(options):
    return [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]


@pytest.mark.parametrize("metric", WITHOUT_COMMAND)
def test_every_route_of_a_metric_without_a_command_gives_one_section(sets, capsys, metric):
    folder, real, gen = sets
    options = LISTED.get(metric, {})
    compared = METRICS[metric].needs_reference
    stores = [real, gen] if compared else [gen]
    listed = _cli(capsys, ["metrics", "--metrics", metric, *_flags(options), *stores])
    python = se.metrics(real if compared else None, gen, [metric], **options).to_dict()
    assert listed[metric] == python[metric]
    assert listed["options"][metric] == python["options"][metric]
    assert set(listed[metric]) == {o.name for o in METRICS[metric].outputs}
    if compared:
        row = _job_row(folder, metric, options, real, gen)
    else:
        table = "\n".join(f"{k} = {v!r}" for k, v in options.items())
        (folder / f"{metric}.toml").write_text(
            f'[job]\nname = "{metric}"\nhistory = "{metric}-history.zarr"\n'
            f'[[entries]]\nname = "gen"\nstore = "{gen}"\nstep = 1\n[metrics.{metric}]\n{table}\n'
        )
        run_job(load_job(folder / f"{metric}.toml"))
        (row,) = History(str(folder / f"{metric}-history.zarr")).table()
    arrays = {o.name for o in METRICS[metric].outputs if o.array}
    # A job's reference is statistics, computed once with the job's products and taken as
    # given: KL's bound on the products' rounding then counts the generated side's alone.
    apart = {"kl_gaussian_rounding_bound"}
    for key, value in listed[metric].items():
        if value is None or key in arrays or key in apart:
            continue
        assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key


def test_the_inception_score_routes_agree(tmp_path, capsys):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(400, 10)) * 3
    path = tmp_path / "logits.npy"
    np.save(path, logits)
    flags = ["--splits", "4", "--as-logits", "--ci", "0.9"]
    command = _cli(capsys, ["is", str(path), *flags])
    listed = _cli(capsys, ["metrics", "--metrics", "is", *flags, str(path)])
    python = se.inception_score(str(path), splits=4, as_logits=True, ci=0.9).to_dict()
    assert command["is"] == listed["is"] == python["is"]
    assert python["is"]["is_ci_low"] < python["is"]["is"] < python["is"]["is_ci_high"]


#: Every registered metric that also reads a held-out test set (any registered later too).
WITH_TEST = sorted(name for name, cls in METRICS.items() if cls.needs_test)


@pytest.mark.parametrize("metric", WITH_TEST)
def test_every_route_of_a_metric_with_a_test_set_gives_one_section(sets, capsys, metric):
    """`metrics --metrics NAME --test TEST`, se.metrics(..., test=) and a job's history row
    ([reference] test) give one section for the same training, test and generated sets."""
    folder, real, gen = sets
    test = str(folder / "test.npy")
    np.save(test, np.random.default_rng(8).normal(size=(280, 6)))
    listed = _cli(capsys, ["metrics", "--metrics", metric, "--test", test, real, gen])
    python = se.metrics(real, gen, [metric], test=test).to_dict()
    assert listed[metric] == python[metric]
    (folder / f"{metric}-test.toml").write_text(
        f'[job]\nname = "{metric}"\nhistory = "{metric}-test-history.zarr"\n'
        f'[reference]\nstore = "{real}"\ntest = "{test}"\n'
        f'[[entries]]\nname = "gen"\nstore = "{gen}"\nstep = 1\n[metrics.{metric}]\n'
    )
    run_job(load_job(folder / f"{metric}-test.toml"))
    (row,) = History(str(folder / f"{metric}-test-history.zarr")).table()
    arrays = {o.name for o in METRICS[metric].outputs if o.array}
    for key, value in listed[metric].items():
        if value is None or key in arrays:
            continue
        assert row[key] == value, key  # one computation: the same number on every route
