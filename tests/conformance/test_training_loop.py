"""Every registered metric, as a training-loop class, is the one computation of its plug-in:
fed in batches (of 0, 1 and more rows) it equals the one-shot function on the same rows; its
parts merged in any order equal one metric fed the parts in that order; a pickle and a
state_dict round trip give the same report; under ``torch.distributed`` (gloo, 3 ranks, one
of them without rows) every rank gets one process's value; a job's history row and HTML
report show it. A toy metric registered here (its mathematics, its declaration and a
reference function, nothing else) gets all of it: what a new metric brings.
"""

import contextlib
import multiprocessing
import os
import pickle
import time
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import shardeval as se
from shardeval.pipeline.metrics import METRICS, Metric, Output
from tests.gloo import join_gloo

# ---------------------------------------------------------------------------------------------
# the toy metric: its mathematics and declaration, and its reference


class Toy(Metric):
    """‖μ_g − μ_r‖², from the sides' moments: a metric that reads the engine's passes."""

    name, title = "toy", "Toy: squared distance of the means"
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("toy", "", "squared distance of the means"),
        Output("toy_n", "rows", "rows of the set"),
    )

    def moment_roles(self) -> tuple[str, ...]:
        return ("real", "gen")

    def compute(self, real: Any, gen: Any, context: Any) -> dict[str, Any]:
        (m_real, _), (m_gen, _) = real.moments(context), gen.moments(context)
        return {"toy": float(np.sum((m_gen.mean - m_real.mean) ** 2)), "toy_n": m_gen.n}


def toy_reference(real: np.ndarray, gen: np.ndarray) -> float:
    return float(np.sum((gen.mean(axis=0) - real.mean(axis=0)) ** 2))


@contextlib.contextmanager
def toy_registered():
    from shardeval.pipeline.metrics import register

    register(Toy)
    try:
        yield
    finally:
        dict.pop(METRICS, "toy", None)


# ---------------------------------------------------------------------------------------------
# the metrics, their classes and their data

#: Options away from the defaults, where a metric has some worth setting.
OPTIONS = {
    "fid_inf": {"seed": 3},
    "prdc": {"k": 4},
    "kid": {"shard_rows": 64},
    "cmmd": {"ci": 0.9},
    "is": {"ci": 0.9},
    "nll_gaussian": {"ci": 0.9},
}
#: Relative tolerance against the one-shot function: FID's training-loop moments take fp32
#: products over other groups of rows than the one-shot shards (~1e-7); the row metrics read
#: the same rows in the same shards.
TOLERANCE = {"fid": 1e-6}
#: Classes of their own; any other registered metric is a RowMetrics of itself.
CLASSES = {
    "fid": se.FID,
    "fid_inf": se.FIDInfinity,
    "kid": se.KID,
    "cmmd": se.CMMD,
    "prdc": se.PRDC,
    "is": se.InceptionScore,
    "nll_gaussian": se.GaussianNLL,
}
#: C_T reads a third set, a held-out test set: no training-loop class takes one (se.ct does).
NAMES = [*sorted(m for m in METRICS if not METRICS[m].needs_test), "toy"]
BATCHES = [0, 1, 37, 100, 2, 60]


def _make(name, **options):
    options = {**OPTIONS.get(name, {}), **options}
    if name in CLASSES:
        return CLASSES[name](**options)
    return se.RowMetrics((name,), **options)


def _sets(name, seed=7):
    rng = np.random.default_rng(seed)
    if METRICS[name].reads == "logits":
        return None, rng.normal(size=(260, 10)) * 3
    real = rng.normal(size=(240, 6))
    gen = 1.1 * rng.normal(size=(260, 6)) + 0.2
    return (real if METRICS[name].needs_reference else None), gen


def _feed(metric, real, gen):
    for rows, is_real in ((real, True), (gen, False)):
        if rows is None:
            continue
        start = 0
        for size in BATCHES * 3:
            batch = rows[start : start + size]
            start += len(batch)
            if is_real:
                metric.update(batch, real=True)
            else:
                metric.update(batch)


def _one_shot(name, real, gen):
    options = {k: v for k, v in OPTIONS.get(name, {}).items()}
    if METRICS[name].reads == "logits":
        options["as_logits"] = True
    return se.metrics(real, gen, [name], **options).to_dict()


def _assert_same(section, expected, name):
    assert set(section) == set(expected), name
    tolerance = TOLERANCE.get(name, 1e-12)
    for key, value in expected.items():
        got = section[key]
        if value is None:
            assert got is None, key
        elif isinstance(value, list):
            np.testing.assert_allclose(got, value, rtol=tolerance, err_msg=key)
        else:
            assert got == pytest.approx(value, rel=tolerance, abs=1e-12), key


@pytest.fixture(autouse=True, scope="module")
def toy():
    with toy_registered():
        yield


def test_every_registered_metric_has_a_training_loop_class():
    # a metric registered later is a RowMetrics of itself: nothing to write but its plug-in
    assert set(CLASSES) <= set(METRICS)
    for name in NAMES:
        metric = _make(name)
        assert isinstance(metric, se.FID if name == "fid" else se.RowMetrics), name
        from shardeval.api.streaming import TrainingMetric

        assert isinstance(metric, TrainingMetric), name
        for method in ("compute", "sync", "merge", "reset", "state_dict", "load_state_dict"):
            assert getattr(type(metric), method) is getattr(TrainingMetric, method), method


def test_the_toy_matches_its_reference():
    real, gen = _sets("toy")
    with _make("toy") as metric:
        _feed(metric, real, gen)
        section = metric.compute().to_dict()["toy"]
    assert section["toy"] == pytest.approx(toy_reference(real, gen), rel=1e-12)
    assert section["toy_n"] == len(gen)


@pytest.mark.parametrize("name", NAMES)
def test_the_training_loop_equals_the_one_shot_function(name):
    real, gen = _sets(name)
    metric = _make(name)
    _feed(metric, real, gen)
    report = metric.compute().to_dict()
    expected = _one_shot(name, real, gen)
    _assert_same(report[name], expected[name], name)
    assert report["options"][name] == expected["options"][name]
    assert report["processes"] == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_parts_merged_in_any_order_are_one_metric_fed_in_that_order(name, seed):
    rng = np.random.default_rng(seed)
    real, gen = _sets(name)
    cuts = sorted(rng.choice(np.arange(1, len(gen)), size=3, replace=False))
    gen_parts = np.split(gen, cuts)
    real_parts = [None] * 4 if real is None else np.split(real, [60, 61, 200])
    parts = []
    for r, g in zip(real_parts, gen_parts, strict=True):
        part = _make(name)
        _feed(part, r, g)
        parts.append(part)
    order = rng.permutation(len(parts))
    # ((a + b) + (c + d)): a tree, not a chain, in a random order of the parts
    left = parts[order[0]].merge(parts[order[1]])
    right = parts[order[2]].merge(parts[order[3]])
    merged = left.merge(right).compute().to_dict()
    ordered_real = None if real is None else np.concatenate([real_parts[i] for i in order])
    ordered_gen = np.concatenate([gen_parts[i] for i in order])
    _assert_same(merged[name], _one_shot(name, ordered_real, ordered_gen)[name], name)


@pytest.mark.parametrize("name", NAMES)
def test_pickles_and_state_dicts_give_the_same_report(name, tmp_path):
    real, gen = _sets(name)
    metric = _make(name)
    _feed(metric, real, gen)
    expected = metric.compute().to_dict()[name]
    again = pickle.loads(pickle.dumps(metric))
    _assert_same(again.compute().to_dict()[name], expected, name)
    torch.save(metric.state_dict(), tmp_path / "state.pt")
    loaded = _make(name)
    loaded.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    _assert_same(loaded.compute().to_dict()[name], expected, name)
    # a state dict of another metric is refused, naming what differs (its format or metrics)
    other = "kid" if name != "kid" else "prdc"
    with pytest.raises(se.ShardevalError, match=r"format|metrics="):
        _make(other).load_state_dict(metric.state_dict())


@pytest.mark.parametrize("name", ["toy", "kl_gaussian", "vendi"])
def test_a_job_history_and_report_show_a_new_metric(name, tmp_path):
    from shardeval.workflows.history import History
    from shardeval.workflows.htmlreport import write_report
    from shardeval.workflows.jobs import load_job, run_job

    real, gen = _sets(name)
    np.save(tmp_path / "gen.npy", gen)
    reference = ""
    if real is not None:
        np.save(tmp_path / "real.npy", real)
        reference = f'[reference]\nstore = "{tmp_path / "real.npy"}"\n'
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "{name}"\nhistory = "history.zarr"\n{reference}'
        f'[[entries]]\nname = "gen"\nstore = "{tmp_path / "gen.npy"}"\nstep = 1\n'
        f"[metrics.{name}]\n"
    )
    run_job(load_job(tmp_path / "job.toml"))
    (row,) = History(str(tmp_path / "history.zarr")).table()
    one_shot = toy_reference if name == "toy" else lambda r, g: _one_shot(name, r, g)[name][name]
    expected = one_shot(real, gen)
    assert row[name] == pytest.approx(expected, rel=1e-12)
    write_report(str(tmp_path / "history.zarr"), str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert METRICS[name].title in page
    assert f"{row[name]:.6g}" in page or f"{row[name]:.4g}" in page


# ---------------------------------------------------------------------------------------------
# the likelihood classes: the one-shot nll and ess over every value fed

#: name: (class, its options, the one-shot function and its keyword for the values, batch shape)
LIKELIHOOD = {
    "nll": (se.NLL, {"dims": 3}, lambda v: se.nll(v, dims=3), (1,)),
    "nll_iw": (
        lambda **o: se.NLL(iw=True, **o),
        {"ci": 0.9},
        lambda v: se.nll(iw=v, ci=0.9),
        (1, 5),
    ),
    "ess": (se.ESS, {}, se.ess, (1,)),
    "ess_rows": (se.ESS, {"reff": 0.8}, lambda v: se.ess(v, reff=0.8), (1, 4)),
}
SKIP = ("seconds", "created", "versions", "engine", "inputs", "settings", "processes")


def _values(name, seed=11):
    shape = LIKELIHOOD[name][3]
    rng = np.random.default_rng(seed)
    return rng.normal(-2.0, 1.5, size=(230, *shape[1:]))  # (230,) or (230, K)


def _likelihood(name):
    make, options, _, _ = LIKELIHOOD[name]
    return make(**options)


def _feed_values(metric, values):
    start = 0
    for size in BATCHES * 3:
        metric.update(values[start : start + size])
        start += size


def _same_report(got, expected):
    for key, value in expected.items():
        if key in SKIP:
            continue
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("name", sorted(LIKELIHOOD))
def test_likelihood_classes_equal_the_one_shot_functions(name, tmp_path):
    values = _values(name)
    one_shot = LIKELIHOOD[name][2]
    expected = one_shot(values).to_dict()
    with _likelihood(name) as metric:
        _feed_values(metric, values)
        _same_report(metric.compute().to_dict(), expected)
        again = pickle.loads(pickle.dumps(metric))
        _same_report(again.compute().to_dict(), expected)
        torch.save(metric.state_dict(), tmp_path / "state.pt")
    with _likelihood(name) as loaded:
        loaded.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        _same_report(loaded.compute().to_dict(), expected)
    parts = [_likelihood(name) for _ in range(3)]
    for part, chunk in zip(parts, np.array_split(values, [50, 51]), strict=True):
        _feed_values(part, chunk)
    _same_report(parts[0].merge(parts[1].merge(parts[2])).compute().to_dict(), expected)


# ---------------------------------------------------------------------------------------------
# torch.distributed: 3 ranks, the second without rows

WORLD = 3
DEADLINE_SECONDS = 240


def _rank_part(rows, rank):
    """Rank 0 the first third, rank 1 nothing, rank 2 the rest."""
    if rows is None:
        return None
    third = len(rows) // 3
    return (rows[:third], rows[:0], rows[third:])[rank]


def worker(rank, init_file, out_dir):
    import torch.distributed as dist

    join_gloo(rank, WORLD, init_file, DEADLINE_SECONDS)
    out = {}
    with toy_registered():
        for name in NAMES:  # every rank makes and computes its metrics in the same order
            real, gen = _sets(name)
            metric = _make(name)
            _feed(metric, _rank_part(real, rank), _rank_part(gen, rank))
            report = metric.compute().to_dict()
            out[name] = (report[name], report["processes"])
            if hasattr(metric, "close"):
                metric.close()
        for name in LIKELIHOOD:
            values = _values(name)
            with _likelihood(name) as metric:
                _feed_values(metric, _rank_part(values, rank))
                out[name] = (metric.compute().to_dict(), WORLD)
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank-{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)


@pytest.mark.timeout(2 * DEADLINE_SECONDS)
def test_three_ranks_one_empty_equal_one_process(tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "dask.array", "zarr", "shardeval"])
    procs = [
        ctx.Process(target=worker, args=(r, str(tmp_path / "init"), str(tmp_path)))
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
        codes = [p.exitcode for p in procs]
        assert codes == [0] * WORLD, f"exit codes {codes} (None: still running at the deadline)"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    outs = [pickle.loads((tmp_path / f"rank-{r}.pkl").read_bytes()) for r in range(WORLD)]
    for name in NAMES:
        real, gen = _sets(name)
        expected = _one_shot(name, real, gen)[name]
        for out in outs:
            section, processes = out[name]
            assert processes == WORLD, name
            assert section == outs[0][name][0], name  # the same bits on every rank
            _assert_same(section, expected, name)
    for name, (_, _, one_shot, _) in LIKELIHOOD.items():
        expected = one_shot(_values(name)).to_dict()
        for out in outs:
            assert out[name][0]["processes"] == WORLD
            _same_report(out[name][0], expected)


def test_nonfinite_rows_are_dropped_where_every_metric_drops_them():
    real, gen = _sets("nll_gaussian")
    gen = gen.copy()
    gen[[3, 50, 51]] = np.nan
    with se.GaussianNLL(nonfinite="drop") as metric:
        _feed(metric, real, gen)
        section = metric.compute().to_dict()["nll_gaussian"]
    expected = se.metrics(real, gen, ["nll_gaussian"], nonfinite="drop").to_dict()
    _assert_same(section, expected["nll_gaussian"], "nll_gaussian")
    assert section["nll_gaussian_nonfinite_dropped"] == 3
    with se.GaussianNLL() as metric, pytest.raises(se.NonFiniteError, match="nonfinite='drop'"):
        metric.update(gen[:60])
