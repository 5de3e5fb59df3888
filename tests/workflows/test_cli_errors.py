"""Every failure a user can cause is one line on stderr and exit code 2 (these printed
tracebacks, or hung), and nothing is written."""

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zarr

from shardeval.pipeline import Moments, save_stats
from shardeval.workflows.cli import main
from tests.conftest import write_zarr

EXE = os.path.join(os.path.dirname(sys.executable), "shardeval")


@pytest.fixture
def store(tmp_path, rng):
    return write_zarr(tmp_path / "x.zarr", rng.normal(size=(400, 4)).astype(np.float32))


def _one_line(capsys, argv, match):
    code = main([*(str(a) for a in argv), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("shardeval: error:")
    assert err.count("\n") == 1
    assert match in err, err


@pytest.mark.parametrize("scheduler", ["processes", "foo bar", "tcp://"])
def test_unknown_schedulers(capsys, store, scheduler):
    _one_line(capsys, ["fid", store, store, "--scheduler", scheduler], "is not 'threads', 'sync'")


def test_cuda_without_a_gpu(capsys, store):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _one_line(capsys, ["fid", store, store, "--device", "cuda"], "no CUDA GPU")


def test_triton_without_a_gpu_outside_the_interpreter(store):
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run(
        [EXE, "fid", store, store, "--backend", "triton", "-q"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "--backend triton compiles kernels for a CUDA GPU" in out.stderr


def test_a_port_that_never_answers_fails_within_the_timeout(store):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(
        target=lambda: held.extend(server.accept() for _ in range(8)), daemon=True
    ).start()
    port = server.getsockname()[1]
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    start = time.monotonic()
    out = subprocess.run(
        [EXE, "fid", store, store, "--scheduler", f"tcp://127.0.0.1:{port}", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - start < 30
    assert out.returncode == 2
    assert "no answer within 2 s" in out.stderr
    server.close()


def test_nan_in_zarr_statistics(tmp_path, capsys, store, rng):
    path = save_stats(tmp_path / "s.zarr", Moments.from_rows(rng.normal(size=(50, 4))))
    m2 = zarr.open_array(str(tmp_path / "s.zarr" / "m2"), mode="r+")
    values = m2[...]
    values[1, 2] = np.nan
    m2[...] = values
    _one_line(capsys, ["fid", path, store], "holds NaN or inf")


@pytest.mark.parametrize(
    "problem", ["one triangle", "asymmetric", "n huge", "n zero", "n negative", "n none", "n text"]
)
def test_statistics_that_do_not_mean_what_they_seem(tmp_path, capsys, store, rng, problem):
    x = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    arrays = {"mu": mu, "sigma": sigma}
    if problem == "one triangle":
        arrays["sigma"] = np.triu(sigma)
    elif problem == "asymmetric":
        arrays["sigma"] = sigma + np.triu(np.full((4, 4), 1e-2), 1)
    path = tmp_path / "s.npz"
    if problem.startswith("n "):
        value = {"n huge": 1e30, "n zero": 0, "n negative": -5}.get(problem)
        if problem in ("n none", "n text"):
            # Zarr statistics whose attribute n is null or a string.
            path = tmp_path / "s.zarr"
            save_stats(path, Moments(300, mu, sigma * 299))
            group = zarr.open_group(str(path), mode="r+")
            group.attrs["n"] = None if problem == "n none" else "abc"
        else:
            np.savez(path, **arrays, n=np.asarray(value))
    else:
        np.savez(path, **arrays)
    match = "not symmetric" if problem in ("one triangle", "asymmetric") else "row count n"
    _one_line(capsys, ["fid", path, store], match)


@pytest.mark.parametrize(("bandwidth", "match"), [("1e-300", "1/(2h²) overflows")])
def test_parzen_bandwidth_extremes(tmp_path, capsys, store, bandwidth, match):
    _one_line(capsys, ["nll", "--parzen", store, store, "--bandwidth", bandwidth], match)
    code = main(["nll", "--parzen", store, store, "--bandwidth", "1e300", "-q"])
    assert code == 0


def test_constant_samples_have_no_rule_bandwidth(tmp_path, capsys, store):
    np.save(tmp_path / "c.npy", np.ones((40, 4), np.float32))
    for rule in ("silverman", "cv"):
        _one_line(
            capsys, ["nll", "--parzen", tmp_path / "c.npy", store, "--bandwidth", rule], "no spread"
        )


def test_parzen_nonfinite_policy_is_honoured(tmp_path, capsys, rng):
    x = rng.normal(size=(300, 3)).astype(np.float32)
    x[4] = np.nan
    np.save(tmp_path / "x.npy", x)
    _one_line(
        capsys, ["nll", "--parzen", tmp_path / "x.npy", tmp_path / "x.npy"], "with NaN or inf"
    )
    code = main(
        [
            "nll",
            "--parzen",
            str(tmp_path / "x.npy"),
            str(tmp_path / "x.npy"),
            "--nonfinite",
            "drop",
            "-q",
        ]
    )
    assert code == 0
    assert "non-finite dropped: 1" in capsys.readouterr().out


def test_all_zero_weights(tmp_path, capsys):
    np.save(tmp_path / "lw.npy", np.full(20, -np.inf))
    _one_line(capsys, ["ess", tmp_path / "lw.npy"], "every weight")


def test_threads_with_a_distributed_scheduler(capsys, store):
    _one_line(
        capsys,
        ["fid", store, store, "--scheduler", "tcp://127.0.0.1:1", "--threads", "2"],
        "--threads",
    )


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    # `shardeval ... | head -1` ended with "shardeval: error: [Errno 32] Broken pipe".
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, rng.standard_normal((50, 3)))
    code = "import sys; from shardeval.workflows.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "fid", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line (imports take longer)
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "Broken pipe" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["kid", "--subsets", "3", "--subset-size", "50", "--seed", "-1"],
            "a seed, an integer in [0, 4294967295]",
        ),
        (["fid", "--infinity", "--seed", str(2**64)], "a seed, an integer in [0, 4294967295]"),
        (
            ["fid", "--shard-rows", "99999999999999999999"],
            "99999999999999999999, beyond 4,611,686,018,427,387,904",
        ),
    ],
)
def test_out_of_range_numbers_are_usage_errors(capsys, store, argv, match):
    # They were tracebacks: numpy's seed range, a uint64 overflow, dask's int64 chunk sizes.
    with pytest.raises(SystemExit) as stop:
        main([argv[0], str(store), str(store), *argv[1:]])
    assert stop.value.code == 2
    assert match in capsys.readouterr().err


def test_job_seed_out_of_range_is_refused_at_load(tmp_path, capsys, store):
    # It passed the checks, failed with a traceback after the reference was computed, and left
    # the history's lock and the reference cache behind.
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "j"\nhistory = "runs/h.zarr"\n[reference]\nstore = "{store}"\n'
        f'[[entries]]\nname = "e"\nstore = "{store}"\n[metrics.fid_inf]\nseed = -1\n'
    )
    _one_line(capsys, ["run", tmp_path / "job.toml"], "a seed, an integer in [0, 4294967295]")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("level", ["1.5", "1.0", "-0.5"])
def test_a_job_with_fid_infinitys_level_outside_0_1_is_refused_at_load(
    tmp_path, capsys, store, level
):
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "j"\nhistory = "runs/h.zarr"\n[reference]\nstore = "{store}"\n'
        f'[[entries]]\nname = "e"\nstore = "{store}"\n[metrics.fid_inf]\nci = {level}\n'
    )
    _one_line(capsys, ["run", tmp_path / "job.toml"], "option 'ci': expected 0 (no interval)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("small", ["gen", "real"])
def test_fid_infinitys_interval_over_too_few_rows_for_its_groups(tmp_path, capsys, store, small):
    few = write_zarr(tmp_path / "few.zarr", np.random.default_rng(1).normal(size=(25, 4)))
    sides = [store, few] if small == "gen" else [few, store]
    flags = ["--ci", "0.9", "--ci-groups", "30"]
    _one_line(capsys, ["fid", "--infinity", *flags, *sides], "leave a group of 0 rows among 30")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_job_with_a_float_option_that_is_not_finite_is_refused_at_load(
    tmp_path, capsys, store, value
):
    # TOML spells inf and nan: σ = inf passed the check "must be positive".
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "j"\nhistory = "runs/h.zarr"\n[reference]\nstore = "{store}"\n'
        f'[[entries]]\nname = "e"\nstore = "{store}"\n[metrics.cmmd]\nsigma = {value}\n'
    )
    _one_line(capsys, ["run", tmp_path / "job.toml"], "expected a positive finite number")
    assert not (tmp_path / "runs").exists()


def test_a_collapsed_set_is_recomputed_with_float64_products(tmp_path, capsys):
    # 20 distinct rows repeated (a mode-collapsed generator): fp32 products cannot tell the
    # covariance's 236 zero eigenvalues from rounding, and FID came out 1.5e-3 low, exit 0.
    import json

    from tests.reference import exact_fid, np_stats

    rng = np.random.default_rng(5)
    real = rng.standard_normal((4000, 64)).astype(np.float32)
    gen = np.repeat(rng.standard_normal((8, 64)), 500, axis=0).astype(np.float32)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "gen.npy", gen)
    assert main(["fid", str(tmp_path / "real.npy"), str(tmp_path / "gen.npy"), "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fid"]["fid"] == pytest.approx(exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6)
    assert any("recomputed with float64 products" in w for w in out["warnings"])
    assert main(["fid", str(tmp_path / "gen.npy"), str(tmp_path / "gen.npy"), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"]["fid"] >= 0.0


@pytest.mark.parametrize(
    ("argv", "usage", "hint"),
    [
        # It printed "usage: shardeval [-h] COMMAND ..." and nothing about kid or metrics.
        (
            ["fid", "a", "b", "--subsets", "10"],
            "usage: shardeval fid ",
            "--subsets: an option of kid, metrics",
        ),
        (["kid", "a", "b", "--infinity"], "usage: shardeval kid ", "--infinity: an option of fid"),
        (
            ["fid", "a", "b", "--splits=3"],
            "usage: shardeval fid ",
            "--splits: an option of is, metrics",
        ),
        (
            ["fid", "a", "b", "--no-such-flag"],
            "usage: shardeval fid ",
            "unrecognized arguments: --no-such-flag",
        ),
    ],
)
def test_an_option_of_another_command_shows_this_commands_usage(capsys, argv, usage, hint):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith(usage), err
    assert hint in err, err
    assert "Traceback" not in err


def test_the_help_names_the_history_the_example_job_writes():
    # `shardeval --help` said `shardeval report runs/history.zarr`; the example job writes
    # demo-data/runs/history.zarr (relative to the repository, where `make demo` runs).
    import tomllib

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(root, "examples", "job.toml"), "rb") as fh:
        history = tomllib.load(fh)["job"]["history"]  # relative to the job file
    written = os.path.relpath(os.path.join(root, "examples", history), root)
    text = subprocess.run([EXE, "--help"], capture_output=True, text=True, check=True).stdout
    example = next(line for line in text.splitlines() if "examples/job.toml" in line)
    assert f"shardeval report {written} " in example
