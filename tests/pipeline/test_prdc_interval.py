"""PRDC's intervals («ci»): each standard error is conditional on one set (precision, density
and coverage on the reference, recall on the generated set), so each is calibrated by holding
that set fixed and drawing the other anew; drawing both shows how much larger the spread over
both sets is. Per-row outcomes come from scipy's float64 distances by the definitions; the
standard errors from :func:`shardeval.pipeline.neighbours.prdc.prdc_from`, as every route
computes them."""

import json

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist

import shardeval as se
from shardeval.pipeline.errors import ShapeError
from shardeval.pipeline.fid.jackknife import CI_SEED, row_groups
from shardeval.pipeline.neighbours import CI_GROUPS
from shardeval.pipeline.neighbours.prdc import prdc_from
from shardeval.pipeline.pairwise.pair_states import Decisions

VALUES = ("precision", "recall", "density", "coverage")
D = 4


def _decisions(x, y, k=5, pr_k=3, groups=CI_GROUPS):
    """Per-row outcomes by the definitions (Kynkäänniemi et al.'s ≤, Naeem et al.'s <), and
    per reference row the groups of generated rows inside its ball."""

    def radii(a, kk):
        sq = cdist(a, a, "sqeuclidean")
        np.fill_diagonal(sq, np.inf)
        return np.sort(sq, axis=1)[:, kk - 1]

    cross = cdist(x, y, "sqeuclidean")
    inside = cross < radii(x, k)[:, None]
    of = row_groups(0, len(y), groups, CI_SEED)
    masks = np.zeros(len(x), np.uint64)
    for g in range(groups):
        masks |= np.where(inside[:, of == g].any(axis=1), np.uint64(1 << g), np.uint64(0))
    return Decisions(
        (cross <= radii(x, pr_k)[:, None]).any(axis=0),
        inside.sum(axis=0),
        (cross <= radii(y, pr_k)[None, :]).any(axis=1),
        inside.any(axis=1),
        0,
        masks,
    )


def _result(x, y):
    return prdc_from(_decisions(x, y), len(x), len(y), 5, 3, CI_GROUPS)


def _draw(rng, n, gen):
    """N(0, I) for the reference; N(0.3·1, 1.2² I) for the generated set."""
    z = rng.normal(size=(n, D))
    return 1.2 * z + 0.3 if gen else z


def _intervals(r, level=0.95):
    from shardeval.pipeline.neighbours.metrics import PRDC

    return PRDC._intervals(r, level)


def _replicates(n, reps, both, seed):
    """Estimates, standard errors and intervals of each value over ``reps`` draws: with
    ``both`` every set drawn anew, else the set each value is conditional on held fixed."""
    rng = np.random.default_rng(seed)
    x0, y0 = _draw(rng, n, False), _draw(rng, n, True)
    got = {v: ([], [], []) for v in VALUES}
    for _ in range(reps):
        x, y = _draw(rng, n, False), _draw(rng, n, True)
        given_real = _result(x if both else x0, y)  # precision, density, coverage
        given_gen = _result(x, y if both else y0)  # recall
        for v in VALUES:
            r = given_gen if v == "recall" else given_real
            ends = _intervals(r)
            got[v][0].append(getattr(r, v))
            got[v][1].append(getattr(r.errors, v))
            got[v][2].append((ends[f"prdc_{v}_ci_low"], ends[f"prdc_{v}_ci_high"]))
    table = {}
    for v, (estimates, errors, intervals) in got.items():
        e, (low, high) = np.array(estimates), np.array(intervals).T
        covered = np.mean((low <= e.mean()) & (e.mean() <= high))
        table[v] = (float(np.mean(errors) / e.std(ddof=1)), float(covered))
    return table


@pytest.mark.parametrize("n", [200, 600])
def test_the_conditional_intervals_are_calibrated_on_gaussian_data(n):
    """400 draws at d = 4, the conditioning set held fixed: the mean reported standard error
    against the estimates' standard deviation, and the 95 % intervals' coverage of their mean
    (binomial SD of a coverage: 1.1 %). Precision, recall and density: within 20 % and in
    92–98 %. Coverage's jackknife is conservative (about 1.3 × the spread; see
    shardeval.pipeline.neighbours.intervals): at least the spread, at most 1.45 × it, and
    covering in 95 % of draws or more."""
    table = _replicates(n, 400, both=False, seed=300 + n)
    for v in ("precision", "recall", "density"):
        ratio, covered = table[v]
        assert 0.8 <= ratio <= 1.2, (v, table)
        assert 0.92 <= covered <= 0.98, (v, table)
    ratio, covered = table["coverage"]
    assert 1.0 <= ratio <= 1.45, table
    assert covered >= 0.95, table


@pytest.mark.parametrize("n", [200, 600])
def test_a_spread_over_both_sets_exceeds_the_conditional_standard_errors(n):
    """Both sets drawn anew (200 draws): precision's, recall's and density's conditional
    standard errors fall short of the spread (they leave the other set's variation out), which
    is what «conditional» in their description warns of; coverage's conservative jackknife
    stays within 20 % of it."""
    table = _replicates(n, 200, both=True, seed=500 + n)
    for v in ("precision", "recall", "density"):
        assert table[v][0] < 0.9, (v, table)
    assert 0.8 <= table["coverage"][0] <= 1.3, table


def test_a_binomial_standard_error_of_coverage_would_understate_its_spread():
    """Why coverage takes the jackknife: with the generated set fixed and the reference drawn
    anew (200 draws of 300 rows), √(c(1 − c)/N) over the reference rows falls well short of
    coverage's spread, since each reference row's radius comes from the other reference rows
    (about 0.75 × it here)."""
    rng = np.random.default_rng(13)
    y0 = _draw(rng, 300, True)
    estimates, errors = [], []
    for _ in range(200):
        c = _decisions(_draw(rng, 300, False), y0).x_covered.mean()
        estimates.append(c)
        errors.append(np.sqrt(c * (1 - c) / 300))
    assert np.mean(errors) / np.std(estimates, ddof=1) < 0.9


def test_the_standard_errors_are_their_definitions():
    """Against the formulas written out: binomial for the proportions, the counts' sample
    standard deviation for density, and the delete-a-group jackknife of coverage by deleting
    each group's columns from the distance matrix."""
    rng = np.random.default_rng(11)
    x, y = _draw(rng, 150, False), _draw(rng, 130, True)
    r = _result(x, y)
    d = _decisions(x, y)
    p, rc = d.y_within.mean(), d.x_within.mean()
    assert r.errors.precision == pytest.approx(np.sqrt(p * (1 - p) / 130), rel=1e-12)
    assert r.errors.recall == pytest.approx(np.sqrt(rc * (1 - rc) / 150), rel=1e-12)
    assert r.errors.density == pytest.approx(np.std(d.y_count / 5, ddof=1) / np.sqrt(130))
    sq = cdist(x, x, "sqeuclidean")
    np.fill_diagonal(sq, np.inf)
    inside = cdist(x, y, "sqeuclidean") < np.sort(sq, axis=1)[:, 4][:, None]
    of = row_groups(0, 130, CI_GROUPS, CI_SEED)
    without = np.array([inside[:, of != g].any(axis=1).mean() for g in np.unique(of)])
    g = len(without)
    jack = np.sqrt((g - 1) / g * ((without - without.mean()) ** 2).sum())
    assert r.errors.coverage == pytest.approx(jack, rel=1e-12)
    assert r.errors.groups == g


def test_every_route_gives_the_same_intervals(tmp_path, capsys):
    from shardeval.workflows.cli import main

    rng = np.random.default_rng(7)
    x, y = _draw(rng, 240, False), _draw(rng, 220, True)
    np.save(tmp_path / "real.npy", x)
    np.save(tmp_path / "gen.npy", y)
    real, gen = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    python = se.prdc(real, gen, ci=0.9).to_dict()["prdc"]
    expected = _intervals(_result(x, y), 0.9)
    for name, value in expected.items():
        assert python[name] == pytest.approx(value, rel=1e-12), name
    capsys.readouterr()
    assert main(["prdc", real, gen, "--ci", "0.9", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["prdc"] == python
    both = se.metrics(real, gen, ("prdc", "kid"), ci=0.9, shard_rows=64).to_dict()
    assert both["prdc"] == python
    with se.PRDC(x, ci=0.9) as metric:
        for start in range(0, 220, 50):
            metric.update(y[start : start + 50])
        assert metric.compute().to_dict()["prdc"] == python
    plain = se.prdc(real, gen).to_dict()["prdc"]
    assert all(plain[name] is None for name in expected)
    assert all(plain[f"prdc_{v}"] == python[f"prdc_{v}"] for v in VALUES)


def test_the_wilson_interval_keeps_a_width_at_precision_1():
    """Every generated row inside the reference's balls: precision 1, standard error 0, and
    the interval Wilson's [1/(1 + z²/M), 1], not the point 1."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    y = 0.05 * rng.normal(size=(40, 2))  # well inside the reference's bulk
    got = se.prdc(x, y, ci=0.95).to_dict()["prdc"]
    z = stats.norm.ppf(0.975)
    assert got["prdc_precision"] == 1.0
    assert got["prdc_precision_standard_error"] == 0.0
    assert got["prdc_precision_ci_low"] == pytest.approx(1 / (1 + z * z / 40), rel=1e-12)
    assert got["prdc_precision_ci_high"] == 1.0


def test_too_few_generated_rows_for_the_jackknife_is_an_error():
    """Rows 0 and 1 of a set fall in one group of the hash (group 5 of 10, seed 0): two
    generated rows give the jackknife no second group, which is an error naming the groups,
    not a standard error of 0."""
    rng = np.random.default_rng(4)
    assert row_groups(0, 2, CI_GROUPS, CI_SEED).tolist() == [5, 5]
    with pytest.raises(ShapeError, match="groups"):
        se.prdc(rng.normal(size=(20, 2)), rng.normal(size=(2, 2)), ci=0.95, k=1, pr_k=1)
    plain = se.prdc(rng.normal(size=(20, 2)), rng.normal(size=(2, 2)), k=1, pr_k=1)
    assert plain.to_dict()["prdc"]["prdc_coverage_standard_error"] is None


@pytest.mark.parametrize(
    ("backend", "scale", "dtype"),
    [("torch", 1.0, np.float32), ("triton", 1.0, np.float32), ("torch", 2.0**600, np.float64)],
)
def test_the_pass_records_the_groups_on_every_path(tmp_path, backend, scale, dtype):
    """The cross pass's group masks, in blocks of 48 rows on the BLAS path, the Triton kernels
    (under the interpreter) and float64 rows scaled far from 1, give the standard errors of
    the definitions; the values are those of the pass without «ci»."""
    from shardeval.pipeline.io.stores import open_features
    from shardeval.pipeline.pairwise.passes import PRDCParams, sample_metrics

    rng = np.random.default_rng(9)
    x, y = _draw(rng, 130, False).astype(dtype), _draw(rng, 110, True).astype(dtype)
    for name, rows in (("x", x), ("y", y)):
        np.save(tmp_path / f"{name}.npy", rows * scale)
    sx, sy = (open_features(str(tmp_path / f"{n}.npy")) for n in "xy")
    kwargs = dict(device="cpu", backend=backend, block_rows=48)
    got = sample_metrics(sx, sy, prdc=PRDCParams(groups=CI_GROUPS), **kwargs)["prdc"]
    plain = sample_metrics(sx, sy, prdc=PRDCParams(), **kwargs)["prdc"]
    want = _result(x.astype(np.float64), y.astype(np.float64))
    assert got.errors == want.errors
    assert [getattr(got, v) for v in VALUES] == [getattr(want, v) for v in VALUES]
    assert [getattr(plain, v) for v in VALUES] == [getattr(want, v) for v in VALUES]
    assert plain.errors is None
