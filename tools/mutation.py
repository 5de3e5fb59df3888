"""Mutation testing of the numerical core: ``make mutation`` (``python -m tools.mutation``).

A mutant is the code with one small change (``+`` for ``-``, ``<`` for ``<=``, a constant off
by one, an argument dropped); a test suite that still passes on it has no test that tells the
two apart. mutmut (pinned in the ``dev`` extra) makes every mutant of one module and runs, for
each, the tests of :data:`MODULES` that call the function it changed, in forked workers.

Each module runs in a folder of its own under ``build/mutation/`` (a copy of ``shardeval/``,
``tests/`` and ``pyproject.toml``): the work tree is never changed, and two modules' results
never mix. The summary prints per module the mutants, how many the tests killed, how many
survived, and the score (the mutants of the states' examples, :data:`EXAMPLES`, counted apart);
each module's survivors, with the diff of each, are written to
``build/mutation/<module>/survivors.txt``.

Usage::

    python -m tools.mutation                      # the table, from where the last run stopped
    python -m tools.mutation fid/frechet core/states
    python -m tools.mutation --list               # the modules and their tests
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = ROOT / "build" / "mutation"

#: The modules mutated, each with the tests that must kill its mutants (pytest arguments: test
#: files, a file's node ids, or ``-k`` expressions). Keep each list to the tests of that module's
#: mathematics: mutmut runs a mutant against those of them that call the changed function, so
#: a wide list costs time on every survivor and kills nothing more.
MODULES: dict[str, tuple[str, ...]] = {
    # The core's states (core/states.py only gathers them): the registry and the merge
    # primitives (Chan's moments, log-sum-exp pairs), then the states by family. The merge laws
    # over every state, Moments' values, and the likelihood states' values (ScalarMoments,
    # WeightStats, Histogram), Magnitudes' and Histogram's values and quantiles. The pair states
    # (RowMean, RowLogSumExp) are checked by value only through the pair metrics, in the mmd and
    # neighbours entries.
    "shardeval/pipeline/core/mergeable.py": (
        "tests/pipeline/test_states.py",
        "tests/pipeline/test_state_laws.py",
    ),
    "shardeval/pipeline/core/moment_states.py": (
        "tests/pipeline/test_states.py",
        "tests/pipeline/test_state_laws.py",
        "tests/pipeline/test_likelihood.py",
    ),
    "shardeval/pipeline/core/log_states.py": (
        "tests/pipeline/test_states.py",
        "tests/pipeline/test_weight_stats.py",
        "tests/pipeline/test_state_laws.py",
        "tests/pipeline/test_likelihood.py",
        "tests/pipeline/test_ess_interval.py",
    ),
    "shardeval/pipeline/core/count_states.py": (
        "tests/pipeline/test_states.py",
        "tests/pipeline/test_count_states.py",
        "tests/pipeline/test_state_laws.py",
        "tests/pipeline/test_likelihood.py",
    ),
    "shardeval/pipeline/core/reduce.py": (
        "tests/pipeline/test_states.py",
        "tests/pipeline/test_end_to_end.py",
    ),
    "shardeval/pipeline/fid/frechet.py": ("tests/pipeline/test_fid.py",),
    "shardeval/pipeline/fid/moments.py": (
        "tests/pipeline/test_fid.py",
        "tests/pipeline/test_end_to_end.py",
    ),
    "shardeval/pipeline/fid/gaussian.py": (
        "tests/pipeline/test_fid.py",
        "tests/pipeline/test_statsio.py",
    ),
    # The jackknife's groups, replicates and interval against their definitions, alone and
    # paired (FID(real, A) − FID(real, B)), and its parts (splitmix64, the closed form, the
    # bounds on a replicate's rows, the engine); the calibration tests (hundreds of replicates, a
    # statistical check, seconds each) are left out: slow on every survivor.
    "shardeval/pipeline/fid/jackknife.py": tuple(
        f"tests/pipeline/{name}"
        for name in (
            "test_jackknife.py::test_a_rows_group_depends_on_its_index_alone",
            "test_jackknife.py::test_the_interval_equals_the_definition_under_any_sharding",
            "test_jackknife.py::test_the_groups_merge_in_any_order",
            "test_jackknife.py::test_a_sorted_set_neither_inflates_nor_shrinks_the_error",
            "test_jackknife.py::test_the_interval_against_a_reference_of_statistics_holds_it_fixed",
            "test_jackknife.py::test_what_cannot_hold_an_interval_is_refused",
            "test_jackknife.py::test_every_route_gives_the_same_interval",
            "test_jackknife.py::test_with_ci_each_side_is_read_once_and_fid_is_the_same",
            "test_jackknife.py::test_replicates_on_the_engine_are_those_computed_in_process",
            "test_jackknife.py::"
            "test_rounding_that_reaches_the_spectrum_recomputes_the_groups_in_float64",
            "test_jackknife.py::test_the_groups_pass_checks_its_device_before_reading",
            "test_paired_difference.py::test_the_paired_jackknife_equals_its_definition",
            "test_paired_difference.py::"
            "test_a_reference_of_statistics_is_held_fixed_in_every_replicate",
            "test_paired_difference.py::test_sets_in_different_numbers_of_groups_are_refused",
            "test_jackknife_parts.py",
        )
    ),
    "shardeval/pipeline/fid/infinity.py": ("tests/pipeline/test_samples.py",),
    # KID's value, bounds and subsets against brute force; its standard error against
    # Hoeffding's decomposition written out (the interval's calibration test, 2,000 replicates,
    # is left out: a statistical check, slow on every survivor).
    "shardeval/pipeline/mmd/kid.py": (
        "tests/pipeline/test_samples.py",
        "tests/pipeline/test_kid_interval.py::test_the_standard_error_is_hoeffdings_plug_in",
    ),
    "shardeval/pipeline/mmd/cmmd.py": ("tests/pipeline/test_samples.py",),
    "shardeval/pipeline/neighbours/prdc.py": ("tests/pipeline/test_samples.py",),
    # ESS's interval: its calibration test (800 replicates) takes under a second, so it stays.
    "shardeval/pipeline/likelihood/ess.py": (
        "tests/pipeline/test_likelihood.py",
        "tests/pipeline/test_lse_numpy_path.py",
        "tests/pipeline/test_ess_interval.py",
    ),
    "shardeval/pipeline/likelihood/nll.py": ("tests/pipeline/test_likelihood.py",),
    "shardeval/pipeline/likelihood/gaussian_nll.py": ("tests/pipeline/test_gaussian_nll.py",),
    "shardeval/pipeline/likelihood/parzen.py": ("tests/pipeline/test_parzen.py",),
    "shardeval/pipeline/likelihood/psis.py": ("tests/pipeline/test_psis.py",),
    "shardeval/pipeline/inception_score/score.py": ("tests/pipeline/test_inception_score.py",),
    "shardeval/pipeline/inception_score/logits.py": ("tests/pipeline/test_inception_score.py",),
    "shardeval/kernels/moments.py": ("tests/kernels/test_moments.py",),
    "shardeval/kernels/kernel_sums.py": ("tests/kernels/test_kernel_sums.py",),
    "shardeval/kernels/lse.py": (
        "tests/pipeline/test_lse_numpy_path.py",
        "tests/pipeline/test_likelihood.py",
    ),
    "shardeval/kernels/lse_numpy.py": ("tests/pipeline/test_lse_numpy_path.py",),
    "shardeval/kernels/encoders/resize.py": (
        "tests/kernels/test_tf_resize_cpu.py",
        "tests/kernels/test_encoders_cpu.py",
    ),
}

#: Expressions left unmutated (regular expressions on the line where they start): the wording
#: of error and warning messages (a raise, a warning, a line that starts with a string). The
#: tests of the messages live with the CLI and the inputs; here a mutant of every word of every
#: message would double a run and bury the survivors that matter. A mutant of the condition
#: that raises is still made.
DO_NOT_MUTATE = (r"^\s*raise \w", r"^\s*warnings\.warn\(", r'^\s*[rbfRBF]*"')

#: Mutants of a state's examples factory (``def _<state>_examples(rng)``, the inputs on which
#: tests/pipeline/test_state_laws.py checks the merge laws): data, not computation. The laws hold
#: on any other data as well, so most of these survive by design; they are counted apart
#: ("examples") and left out of the score.
EXAMPLES = re.compile(r"\.x__\w+_examples__mutmut_\d+$")

#: A run of the whole table starts no module after this many minutes (a module started runs to
#: its end), and the next run goes on from the first module it did not run: each run fits in
#: about half an hour on two cores, and a few runs cover the table.
DEFAULT_BUDGET_MINUTES = 25.0

#: Per-mutant deadline: (mutmut's estimate of the tests' time + TIMEOUT_CONSTANT s) × this, in
#: CPU seconds (a mutant that loops is counted killed, as a timeout, once it passes). A forked
#: worker spends seconds of CPU before its first test (pytest's start, the fixtures): with a
#: deadline of 10 s, mutants that raise at once were reported as timeouts on a loaded machine.
TIMEOUT_MULTIPLIER = 15.0
TIMEOUT_CONSTANT = 5.0


def module_key(path: str) -> str:
    """``shardeval/pipeline/fid/frechet.py`` → ``pipeline/fid/frechet`` (the short name)."""
    return path.removeprefix("shardeval/").removesuffix(".py")


def pick(names: list[str]) -> list[str]:
    """The modules named (short names, paths, or any unique suffix of one), or all of them."""
    if not names:
        return list(MODULES)
    chosen = []
    for name in names:
        short = name.removeprefix("shardeval/").removesuffix(".py")
        hits = [m for m in MODULES if module_key(m) == short or module_key(m).endswith(short)]
        if len(hits) != 1:
            known = ", ".join(module_key(m) for m in MODULES)
            raise SystemExit(f"mutation: {name!r} names {len(hits)} modules; known: {known}")
        chosen.append(hits[0])
    return chosen


def setup_cfg(module: str, tests: tuple[str, ...]) -> str:
    """mutmut's configuration for one module (its ``[mutmut]`` section of setup.cfg)."""

    def listed(values: tuple[str, ...] | list[str]) -> str:
        return "".join(f"\n    {v}" for v in values)

    return (
        "[mutmut]\n"
        "source_paths = shardeval\n"
        f"only_mutate = {module}\n"
        f"pytest_add_cli_args_test_selection ={listed(tests)}\n"
        f"pytest_add_cli_args ={listed(['-p', 'no:cacheprovider'])}\n"
        f"do_not_mutate_patterns ={listed(DO_NOT_MUTATE)}\n"
        # torch, BLAS and Dask's thread pools are not fork-safe once used: a fork server that
        # has imported only the test runner forks the workers.
        "process_isolation = forkserver\n"
        f"timeout_multiplier = {TIMEOUT_MULTIPLIER}\n"
        f"timeout_constant = {TIMEOUT_CONSTANT}\n"
        "use_git_change_detection = false\n"
    )


def prepare(module: str, workdir: Path) -> Path:
    """A fresh folder holding what the module's tests import, and its mutmut configuration."""
    folder = workdir / module_key(module).replace("/", ".")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("shardeval", "tests"):
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", folder / "pyproject.toml")
    (folder / "setup.cfg").write_text(setup_cfg(module, MODULES[module]))
    return folder


def _mutmut(folder: Path, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the copy, not the tree
    # One BLAS and OpenMP thread per worker: the workers are the parallelism (--jobs).
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # mutmut runs many pytest sessions in its own long-lived processes: the test suite's exit
    # watchdog (tests/conftest.py), meant for a process that ends with its session, stays off.
    env["SHARDEVAL_TEST_EXIT_WATCHDOG"] = "0"
    command = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    with log.open("w") as out:
        return subprocess.run(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_module(module: str, workdir: Path, jobs: int) -> dict:
    """Mutate one module and run its tests against each mutant; the counts and survivors."""
    folder = prepare(module, workdir)
    started = time.monotonic()
    run = _mutmut(folder, "run", "--max-children", str(jobs), log=folder / "mutmut.log")
    minutes = (time.monotonic() - started) / 60
    if run.returncode != 0:
        return {"module": module, "error": f"mutmut exited {run.returncode}: see {folder}"}
    # `mutmut results --all true` lists every mutant: "name: status".
    lines = _mutmut(folder, "results", "--all", "true").stdout.splitlines()
    listing = [e for e in (line.strip().rsplit(": ", 1) for line in lines) if len(e) == 2]
    examples = [(name, status) for name, status in listing if EXAMPLES.search(name)]
    code = [(name, status) for name, status in listing if not EXAMPLES.search(name)]
    counts = {
        key: sum(status == word for _, status in code)
        for key, word in (
            ("killed", "killed"),
            ("timeout", "timeout"),
            ("survived", "survived"),
            ("no_tests", "no tests"),
        )
    }
    with (folder / "survivors.txt").open("w") as out:
        for name, status in code + examples:
            if status in ("survived", "no tests"):  # with its diff: the ones to judge
                out.write(_mutmut(folder, "show", name).stdout + "\n")
            elif status != "killed":
                out.write(f"# {name}: {status}\n\n")
    caught = counts["killed"] + counts["timeout"]
    tested = caught + counts["survived"]
    return {
        "module": module,
        "mutants": len(code),
        "examples": len(examples),
        "killed": counts["killed"],
        "timeout": counts["timeout"],
        "survived": counts["survived"],
        "no_tests": counts["no_tests"],
        "score": 100.0 * caught / tested if tested else 0.0,
        "minutes": minutes,
        "survivors": str(folder / "survivors.txt"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__)
    parser.add_argument("modules", nargs="*", help="short names (fid/frechet); default: all")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_MINUTES,
        help="without named modules: start no module after this many minutes; the next run "
        f"goes on from the first module not run (default {DEFAULT_BUDGET_MINUTES:g})",
    )
    args = parser.parse_args(argv)
    modules = pick(args.modules)
    if args.list:
        for module in modules:
            print(f"{module_key(module):32} {' '.join(MODULES[module])}")
        return 0
    rotation = args.workdir / "next-module.txt"
    if not args.modules and rotation.exists():  # go on where the last run of the table stopped
        first = rotation.read_text().strip()
        if first in modules:
            at = modules.index(first)
            modules = modules[at:] + modules[:at]
    results, started = [], time.monotonic()
    for i, module in enumerate(modules):
        if not args.modules and i and (time.monotonic() - started) / 60 >= args.budget:
            rest = ", ".join(module_key(m) for m in modules[i:])
            print(f"mutation: {args.budget:g} min spent; not run this time: {rest}")
            args.workdir.mkdir(parents=True, exist_ok=True)
            rotation.write_text(module + "\n")
            break
        print(f"mutation: {module_key(module)} …", flush=True)
        results.append(run_module(module, args.workdir, args.jobs))
        print("   ", _line(results[-1]), flush=True)
    else:
        if not args.modules:
            rotation.unlink(missing_ok=True)
    print(
        "\nmodule                           mutants killed timeout survived no-tests score  min"
        "  examples"
    )
    for result in results:
        print(_line(result))
    return 1 if any("error" in r for r in results) else 0


def _line(r: dict) -> str:
    if "error" in r:
        return f"{module_key(r['module']):32} {r['error']}"
    return (
        f"{module_key(r['module']):32} {r['mutants']:7} {r['killed']:6} {r['timeout']:7} "
        f"{r['survived']:8} {r['no_tests']:8} {r['score']:5.1f} {r['minutes']:4.0f}  "
        f"{r['examples']:8}  {r['survivors']}"
    )


if __name__ == "__main__":
    sys.exit(main())
