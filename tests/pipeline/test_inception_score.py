"""The Inception Score from mergeable per-split sums: torch-fidelity's ``isc`` on the same
logits (a float64 numpy transcription of its published formula here; the package itself in the
encoder environment, tests/encoders/test_inception_score_torch_fidelity.py), closed forms,
merges under random partitions, the delta-method standard error, and what is refused."""

import itertools
import math

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import shardeval as se
from shardeval.api.inputs import features
from shardeval.pipeline.core.engine import Engine
from shardeval.pipeline.core.states import registered_states
from shardeval.pipeline.errors import NonFiniteError, OptionError, ShapeError, StoreError
from shardeval.pipeline.inception_score.logits import NotLogitsError, logits_of
from shardeval.pipeline.inception_score.score import (
    ClassMeans,
    inception_score,
    kl_moments,
    log_softmax,
    split_labels,
)
from tests.conftest import write_zarr

#: float64 sums in another order than torch-fidelity's: the scores agree to ~1e-15 (measured
#: below 4e-15 relative here); the assertion leaves room for other BLAS/numpy orders.
RTOL = 1e-12


def torch_fidelity_isc(logits, splits=10, shuffle=True, seed=2020):
    """torch-fidelity 0.4.0's ``isc_features_to_metric`` transcribed to float64 numpy, line by
    line (its shuffle, its split bounds i·N//S, softmax and log_softmax, the marginal's log, the
    mean of exp over splits, np.std with ddof 0)."""
    x = np.asarray(logits)
    n = x.shape[0]
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n), :]
    x = x.astype(np.float64)
    z = x - x.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        q = p[part].mean(axis=0, keepdims=True)
        kl = p[part] * (log_p[part] - np.log(q))
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores)), scores


def _logits(rng, n, c, scale=3.0):
    """Logits of a plausible classifier: a few confident classes per row, mixed."""
    centres = rng.standard_normal((8, c)) * scale
    return (centres[rng.integers(0, 8, n)] + rng.standard_normal((n, c))).astype(np.float32)


def test_the_state_is_registered_so_the_law_test_covers_it():
    assert ClassMeans in registered_states()


@pytest.mark.parametrize(
    ("n", "c", "splits", "seed", "shard_rows"),
    [
        (1000, 1008, 10, 2020, 128),
        (1003, 1008, 10, 2020, 333),  # N not a multiple of S: splits of 100 and 101 rows
        (997, 17, 7, 5, 1000),
        (50, 4, 3, 0, 7),
        (12, 3, 12, 2020, 5),  # one row a split
    ],
)
def test_split_protocol_equals_torch_fidelity(rng, n, c, splits, seed, shard_rows):
    x = _logits(rng, n, c)
    mean, std, scores = torch_fidelity_isc(x, splits, seed=seed)
    r = inception_score(features(x, shard_rows=shard_rows), splits=splits, seed=seed)
    assert r.split_mean == pytest.approx(mean, rel=RTOL)
    assert r.split_std == pytest.approx(std, rel=1e-9, abs=1e-12)  # a difference of O(1) values
    np.testing.assert_allclose(r.split_scores, scores, rtol=RTOL)
    assert sum(r.split_rows) == n
    assert sorted(set(r.split_rows)) == sorted(
        {(i + 1) * n // splits - i * n // splits for i in range(splits)}
    )
    # The score over all samples is torch-fidelity's with one split and no shuffle, and the
    # same to the last bit without splits (its means are kept apart from the splits').
    assert r.inception_score == pytest.approx(torch_fidelity_isc(x, 1, shuffle=False)[0], rel=RTOL)
    alone = inception_score(features(x, shard_rows=shard_rows))
    assert (alone.inception_score, alone.standard_error) == (r.inception_score, r.standard_error)


def test_split_labels_follow_torch_fidelitys_order():
    n, splits, seed = 23, 4, 2020
    perm = np.random.RandomState(seed).permutation(n)
    labels = split_labels(n, splits, seed)
    for i in range(splits):
        rows = perm[i * n // splits : (i + 1) * n // splits]
        assert set(np.flatnonzero(labels == i)) == set(rows)


@pytest.mark.parametrize("c", [2, 10, 1008])
def test_closed_forms(c):
    n = max(200, 4 * c)
    # Every row the same distribution: p(y|x) = p(y), KL 0, IS 1 exactly. (Rows 0, 1, …, C − 1
    # are shifted: [0, 1] is a probability vector, refused as not logits.)
    row = np.arange(c) - 0.5
    # Rows ≥ 0 are refused as features unless declared logits, as these are.
    for constant in (np.zeros((n, c)), np.full((n, c), 7.5), np.tile(row, (n, 1))):
        r = inception_score(features(constant), splits=4, as_logits=True)
        assert r.inception_score == 1.0
        assert r.standard_error == pytest.approx(0.0, abs=1e-12)
        assert r.split_scores == (1.0,) * 4
    # One-hot rows, every class equally often: p(y|x) a point mass, p(y) uniform, IS = C. At a
    # magnitude of 1000 the other classes' probabilities are exactly 0 in float64 (0 log 0 = 0:
    # torch-fidelity's q.log() gives NaN there).
    for magnitude in (60.0, 1000.0, 1e300):
        one_hot = magnitude * np.eye(c)[np.arange(n) % c]
        r = inception_score(features(one_hot, shard_rows=7 if c < 100 else 4099), as_logits=True)
        assert r.inception_score == pytest.approx(c, rel=1e-12)
        assert r.log_inception_score == pytest.approx(math.log(c), rel=1e-12)
        assert r.standard_error == pytest.approx(0.0, abs=1e-9 * c)
    # One class for every row: IS 1.
    r = inception_score(features(50.0 * np.eye(c)[np.zeros(n, int)]), as_logits=True)
    assert r.inception_score == pytest.approx(1.0, abs=1e-12)


def test_softmax_by_log_sum_exp_keeps_extreme_logits_finite(rng):
    x = rng.standard_normal((300, 50)) * 1e300  # differences overflow float64
    log_p = log_softmax(x)
    assert not np.isnan(log_p).any()
    r = inception_score(features(x))
    assert math.isfinite(r.inception_score)
    assert 1.0 <= r.inception_score <= 50.0 + 1e-9
    # float32 logits are read as they are, widened to float64 before the softmax.
    x32 = _logits(rng, 400, 30)
    a = inception_score(features(x32)).inception_score
    b = inception_score(features(x32.astype(np.float64))).inception_score
    assert a == b


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(2, 120),
    c=st.integers(2, 9),
    splits=st.integers(1, 6),
)
def test_means_merged_over_any_partition_equal_one_block(data, n, c, splits):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, c)) * data.draw(st.sampled_from([0.1, 3.0, 40.0]))
    labels = rng.integers(0, splits, n)
    whole = ClassMeans.from_logits(x, 0, labels, splits)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=min(8, n - 1))))
    bounds = [0, *cuts, n]
    parts = [
        ClassMeans.from_logits(x[a:b], a, labels[a:b], splits)
        for a, b in itertools.pairwise(bounds)
    ]
    order = data.draw(st.permutations(range(len(parts))))
    merged = ClassMeans.empty(splits, c)
    for i in order:
        merged = merged.merge(parts[i])
    np.testing.assert_array_equal(merged.n, whole.n)
    # The means by definition (float64 numpy over all rows, then each split's rows).
    p = np.exp(log_softmax(x))
    groups = [np.ones(n, bool)] + [labels == s for s in range(splits)]
    for row, rows in enumerate(groups):
        if rows.any():
            want_q = p[rows].mean(axis=0)
            np.testing.assert_allclose(merged.q[row], want_q, rtol=1e-12, atol=1e-15)
            f = np.where(p[rows] > 0, p[rows] * np.log(p[rows]), 0.0)
            np.testing.assert_allclose(merged.plogp[row], f.mean(axis=0), rtol=1e-12, atol=1e-15)
    assert merged.n[0] == n
    present = whole.n > 0
    np.testing.assert_allclose(
        merged.log_scores()[present], whole.log_scores()[present], rtol=1e-11, atol=1e-12
    )


@settings(max_examples=15, deadline=None)
@given(shard_rows=st.integers(1, 400), split_every=st.sampled_from([None, 2, 3, 7]))
def test_the_score_does_not_depend_on_shards_or_tree(shard_rows, split_every):
    x = _logits(np.random.default_rng(3), 401, 13)
    want = torch_fidelity_isc(x, 5, seed=9)
    r = inception_score(
        features(x, shard_rows=shard_rows), splits=5, seed=9, split_every=split_every
    )
    assert r.split_mean == pytest.approx(want[0], rel=RTOL)
    exact = torch_fidelity_isc(x, 1, shuffle=False)[0]
    assert r.inception_score == pytest.approx(exact, rel=RTOL)


def test_standard_error_is_the_delta_methods(rng):
    x = _logits(rng, 3000, 40)
    r = inception_score(features(x, shard_rows=250))
    log_p = log_softmax(x)
    p = np.exp(log_p)
    q = p.mean(axis=0)
    kl = (p * (log_p - np.log(q))).sum(axis=1)  # KL(p_i ‖ q): the rows' influence, + log IS
    assert kl.mean() == pytest.approx(r.log_inception_score, rel=1e-12)
    se_log = kl.std(ddof=1) / math.sqrt(len(kl))
    assert r.log_standard_error == pytest.approx(se_log, rel=1e-10)
    assert r.standard_error == pytest.approx(r.inception_score * se_log, rel=1e-10)
    # And the pass's own state: Chan-merged moments of the same KL values.
    m = kl_moments(x, 0, np.log(q))
    assert (m.n, m.mean) == (3000, pytest.approx(kl.mean(), rel=1e-12))


def test_standard_error_predicts_the_spread_over_independent_sets():
    # Sets drawn from one population of classifiers' outputs: the spread of their scores is
    # what the standard error estimates (to Monte Carlo error: 200 sets, ±10% at 2σ).
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((30, 25)) * 2.5
    scores, errors = [], []
    for _ in range(200):
        x = centres[rng.integers(0, 30, 800)] + rng.standard_normal((800, 25)) * 1.5
        means = ClassMeans.from_logits(x, 0)
        log_is = float(means.log_scores()[0])
        m = kl_moments(x, 0, means.log_marginal())
        scores.append(math.exp(log_is))
        errors.append(math.exp(log_is) * math.sqrt(m.variance() / m.n))
    assert np.std(scores, ddof=1) == pytest.approx(np.mean(errors), rel=0.15)


def test_a_second_pass_that_disagrees_is_an_error(rng, monkeypatch):
    import shardeval.pipeline.inception_score.score as score

    x = _logits(rng, 200, 10)
    original = score.kl_moments
    monkeypatch.setattr(
        score, "kl_moments", lambda block, offset, log_q: original(block * 1.01, offset, log_q)
    )
    with pytest.raises(Exception, match="changed between the passes"):
        inception_score(features(x))


def test_what_is_refused(tmp_path, rng):
    x = _logits(rng, 100, 6).astype(np.float64)
    x[[3, 40], 2] = [np.nan, np.inf]
    with pytest.raises(NonFiniteError, match=r"2 row\(s\) of logits .* rows 3, 40"):
        inception_score(features(x, shard_rows=30))
    with pytest.raises(ShapeError, match="at least 2 rows and 2 classes"):
        inception_score(features(np.ones((10, 1))))
    with pytest.raises(OptionError, match="exceeds the 10 rows"):
        inception_score(features(np.ones((10, 3))), splits=11)
    with pytest.raises(OptionError, match="seed"):
        inception_score(features(np.ones((10, 3))), splits=2, seed=-1)
    # Features are not logits: a store that says it holds an encoder's features is refused.
    pool = write_zarr(
        tmp_path / "pool.zarr", x[:, :4], feature_extractor="inception-2015-12-05/pool3"
    )
    with pytest.raises(StoreError, match="features, not class logits"):
        se.inception_score(pool)


def test_an_extraction_store_gives_its_logits_array(tmp_path, rng):
    """A store laid out as extraction writes it (features, logits, names, attributes): the
    score is that of its ``logits`` array, whichever array was opened; one without logits is
    refused naming the fix."""
    from shardeval.pipeline.images.extract import LOGITS_ARRAY
    from shardeval.pipeline.io.stores import FEATURES_FORMAT

    logits = _logits(rng, 90, 1008)
    path = str(tmp_path / "x.zarr")
    group = zarr.create_group(path, attributes={"format": FEATURES_FORMAT, "encoder": "inception"})
    group.create_array(
        "features", shape=(90, 16), dtype="float32", chunks=(30, 16),
        dimension_names=("sample", "feature"),
    )[...] = rng.standard_normal((90, 16))  # fmt: skip
    group.create_array(
        LOGITS_ARRAY, shape=logits.shape, dtype="float32", chunks=(30, 1008),
        dimension_names=("sample", "class"),
    )[...] = logits  # fmt: skip
    group.attrs["complete"] = True
    want = torch_fidelity_isc(logits, 1, shuffle=False)[0]
    assert float(se.inception_score(path)) == pytest.approx(want, rel=RTOL)
    assert float(se.inception_score(path, array="logits")) == pytest.approx(want, rel=RTOL)
    assert float(se.inception_score(logits)) == pytest.approx(want, rel=RTOL)
    source = logits_of(features(path))
    assert (source.name, source.d) == (LOGITS_ARRAY, 1008)
    # The same layout without logits (a store extracted before they were written).
    old = str(tmp_path / "old.zarr")
    group = zarr.create_group(old, attributes={"format": FEATURES_FORMAT, "encoder": "inception"})
    group.create_array("features", shape=(90, 16), dtype="float32", chunks=(30, 16))[...] = 1.0
    with pytest.raises(StoreError, match=r"without class logits.*extract the images"):
        se.inception_score(old)


def test_engines_agree(rng):
    x = _logits(rng, 500, 11)
    threads = inception_score(features(x, shard_rows=60), splits=3)
    sync = inception_score(features(x, shard_rows=60), splits=3, engine=Engine("sync"))
    assert threads.split_scores == pytest.approx(sync.split_scores, rel=1e-14)
    assert threads.inception_score == pytest.approx(sync.inception_score, rel=1e-14)


def test_a_two_worker_cluster_equals_threads(tmp_path, rng):
    from distributed import LocalCluster

    path = str(tmp_path / "logits.npy")
    np.save(path, _logits(rng, 1200, 30))
    threads = se.inception_score(path, splits=5, shard_rows=150).results["is"]
    threads_splits = inception_score(features(path, shard_rows=150), splits=5).split_scores
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        report = se.inception_score(
            path, splits=5, shard_rows=150, scheduler=cluster.scheduler_address
        )
        # the report gives the splits' mean and spread; each split's score is the pipeline's
        spread_splits = inception_score(
            features(path, shard_rows=150), splits=5, engine=Engine(cluster.scheduler_address)
        ).split_scores
    spread = report.results["is"]
    assert report.to_dict()["engine"]["scheduler"] == "distributed"
    assert len(spread_splits) == 5
    assert spread_splits == pytest.approx(threads_splits, rel=1e-13)
    assert spread["is_split_mean"] == pytest.approx(threads["is_split_mean"], rel=1e-13)
    assert spread["is_split_std"] == pytest.approx(threads["is_split_std"], rel=1e-10)
    assert spread["is"] == pytest.approx(threads["is"], rel=1e-13)
    assert spread["is_standard_error"] == pytest.approx(threads["is_standard_error"], rel=1e-10)


# --- the score's range, masked classes, and what is not logits ---------------------------------


def mp_log_inception_score(logits, dps=60):
    """log IS in ``dps``-digit arithmetic (mpmath), straight from the definition: per row the
    softmax over its classes (a −inf logit is a class of probability 0, 0 log 0 = 0), the
    marginal q as the mean of the rows, the mean over rows of Σ_y p log(p / q)."""
    import mpmath

    with mpmath.workdps(dps):
        rows = []
        for row in np.asarray(logits, dtype=np.float64):
            top = max(mpmath.mpf(float(v)) for v in row if np.isfinite(v))
            e = [mpmath.exp(mpmath.mpf(float(v)) - top) if np.isfinite(v) else 0 for v in row]
            total = mpmath.fsum(e)
            rows.append([v / total for v in e])
        n, c = len(rows), len(rows[0])
        q = [mpmath.fsum(r[y] for r in rows) / n for y in range(c)]
        kl = [
            mpmath.fsum(r[y] * (mpmath.log(r[y]) - mpmath.log(q[y])) for y in range(c) if r[y])
            for r in rows
        ]
        return mpmath.fsum(kl) / n


def masked_isc(logits):
    """float64 numpy from the definition, per row, with −inf logits as classes of probability
    0 (0 log 0 = 0): the reference for masked classes (torch-fidelity gives NaN there)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))  # exp(−inf) = 0
    p = e / e.sum(axis=1, keepdims=True)
    q = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return float(np.exp(terms.sum(axis=1).mean()))


@pytest.mark.parametrize("shard_rows", [1, 7, 1000])
def test_identical_rows_score_exactly_one(shard_rows):
    """KL(p ‖ p) = 0: rows that are all the same distribution score exactly 1, over all
    samples and in every split, whatever the row, the classes and the shards (the float64
    sums of Σ p log p and of p cancelled to ±4e-14 before, half the time below 1)."""
    rng = np.random.default_rng(11)
    for _ in range(25):
        c = int(rng.integers(2, 1100))
        n = int(rng.integers(2, 600))
        row = rng.standard_normal(c) * rng.choice([0.1, 1.0, 5.0, 30.0]) + rng.normal(0, 50)
        x = np.tile(row, (n, 1)).astype(rng.choice([np.float32, np.float64]))
        # A row with a large offset may be ≥ 0 everywhere: declared logits.
        r = inception_score(features(x, shard_rows=shard_rows), splits=min(n, 3), as_logits=True)
        assert r.inception_score == 1.0
        assert r.log_inception_score == 0.0
        assert r.split_scores == (1.0,) * min(n, 3)
    assert float(mp_log_inception_score(np.tile(row[:5], (4, 1)))) == 0.0  # the reference agrees


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 40), c=st.integers(2, 12))
def test_the_score_is_never_below_one_and_equals_mpmath(data, n, c):
    """IS ≥ 1 (a mean of KL divergences, each ≥ 0), for logits near one another too (where
    the score is a difference of nearly equal sums), against 60-digit arithmetic."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    base = rng.standard_normal(c) * data.draw(st.sampled_from([0.5, 4.0, 40.0]))
    spread = data.draw(st.sampled_from([0.0, 1e-9, 1e-6, 1e-3, 1.0]))
    x = base + spread * rng.standard_normal((n, c))
    rows = features(x, shard_rows=data.draw(st.integers(1, n)))
    r = inception_score(rows, splits=2, as_logits=True)  # few classes may all be ≥ 0
    assert r.inception_score >= 1.0
    assert min(r.split_scores) >= 1.0
    want = float(mp_log_inception_score(x))
    # float64 rounding of sums of p log p, each of magnitude ≤ log C: ~1e-16 per term.
    assert r.log_inception_score == pytest.approx(want, rel=1e-12, abs=2e-15)


def test_a_minus_infinity_logit_is_a_class_of_probability_zero(rng):
    """A −inf logit (a masked class) has p = 0 and adds 0 log 0 = 0: the score equals the
    definition's in float64 and in 60 digits; a class masked in every row is as if absent."""
    x = _logits(rng, 300, 9).astype(np.float64)
    masked = x.copy()
    masked[rng.random(masked.shape) < 0.3] = -np.inf
    masked[np.arange(300), rng.integers(0, 9, 300)] = 1.0  # every row keeps a finite class
    r = inception_score(features(masked, shard_rows=37), splits=3, seed=1)
    assert r.inception_score == pytest.approx(masked_isc(masked), rel=1e-12)
    small = masked[:25]
    got = inception_score(features(small)).log_inception_score
    assert got == pytest.approx(float(mp_log_inception_score(small)), rel=1e-12, abs=1e-15)
    # The split protocol on masked logits: each split's score by the same definition.
    perm = np.random.RandomState(1).permutation(300)
    for i, score in enumerate(r.split_scores):
        part = masked[perm[i * 300 // 3 : (i + 1) * 300 // 3]]
        assert score == pytest.approx(masked_isc(part), rel=1e-12)
    # A class masked in every row: the score of the other classes.
    x[:, 4] = -np.inf
    whole = inception_score(features(x)).inception_score
    assert whole == pytest.approx(
        torch_fidelity_isc(np.delete(x, 4, axis=1), 1, False)[0], rel=1e-12
    )
    # Log-probabilities with zeros, np.log(p), are logits: the score of p.
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        assert float(se.inception_score(np.log(p))) == pytest.approx(whole, rel=1e-12)


def test_nan_and_plus_infinity_stay_refused_without_an_option_that_does_not_exist(rng):
    x = _logits(rng, 100, 6).astype(np.float64)
    x[3, 2], x[40, 1] = np.nan, np.inf
    x[50, :] = -np.inf  # no class at all: the softmax is 0/0
    x[60, 0] = -np.inf  # valid
    with pytest.raises(NonFiniteError, match=r"3 row\(s\) of logits .* rows 3, 40, 50") as caught:
        se.inception_score(x, shard_rows=30)
    assert "nonfinite" not in str(caught.value)


def test_probabilities_are_refused_with_the_fix(rng):
    """Softmax outputs are not logits: taken as logits they gave 1.023 where their logits give
    2.86. Rows that are all probability vectors (non-negative, summing to 1 within their
    dtype's rounding) are refused, naming the fix: their log is logits with the same softmax."""
    x = _logits(rng, 1000, 10).astype(np.float64)
    want = torch_fidelity_isc(x, 1, shuffle=False)[0]
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for probabilities in (p, p.astype(np.float32), np.eye(10)[np.arange(1000) % 10]):
        with pytest.raises(NotLogitsError, match=r"probabilit.*np\.log") as caught:
            se.inception_score(probabilities, shard_rows=128)
        assert "\n" not in str(caught.value)
    assert float(se.inception_score(np.log(p))) == pytest.approx(want, rel=1e-12)
    # Logits that are not all probability rows are logits, whatever some rows look like.
    mixed = x.copy()
    mixed[:10] = p[:10]
    assert float(se.inception_score(mixed)) == pytest.approx(
        torch_fidelity_isc(mixed, 1, shuffle=False)[0], rel=1e-12
    )


def test_a_store_is_read_as_logits_only_when_it_says_so(tmp_path, rng):
    """A store whose array is not named as logits (Gaussian features, say) is refused in one
    line saying how to give logits; an array named logits (a group's or .npz's variable, a
    file's name, a 'class' dimension) or named by the caller («array») is read."""
    x = _logits(rng, 200, 8)
    want = torch_fidelity_isc(x, 1, shuffle=False)[0]
    gaussian = write_zarr(tmp_path / "gen.zarr", rng.standard_normal((200, 8)).astype("f4"))
    np.save(tmp_path / "features.npy", x)
    for plain in (gaussian, str(tmp_path / "features.npy")):
        with pytest.raises(NotLogitsError, match="not known to hold class logits") as caught:
            se.inception_score(plain)
        # One array each: «array» has nothing to pick, and is not named as the fix.
        assert "as_logits=True" in str(caught.value)
        assert "array=" not in str(caught.value)
        assert "\n" not in str(caught.value)
    named = {
        "logits.npy": lambda p: np.save(p, x),
        "gen_logits.zarr": lambda p: write_zarr(p, x),
        "scores.npz": lambda p: np.savez(p, logits=x),
    }
    for name, write in named.items():
        write(tmp_path / name)
        assert float(se.inception_score(str(tmp_path / name))) == pytest.approx(want, rel=RTOL)
    by_dims = str(tmp_path / "by_dims.zarr")
    zarr.create_array(
        by_dims, shape=x.shape, dtype="f4", chunks=(50, 8), dimension_names=("sample", "class")
    )[...] = x
    assert float(se.inception_score(by_dims)) == pytest.approx(want, rel=RTOL)
    # A group: its 'logits' array beside the features, or the array the caller names.
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array(
        "emb", shape=(200, 4), dtype="f4", chunks=(50, 4), dimension_names=("sample", "feature")
    )[...] = rng.standard_normal((200, 4))
    group.create_array(
        "logits", shape=x.shape, dtype="f4", chunks=(50, 8), dimension_names=("sample", "class")
    )[...] = x
    group.create_array("scores", shape=x.shape, dtype="f4", chunks=(50, 8))[...] = x
    g = str(tmp_path / "g.zarr")
    assert float(se.inception_score(g)) == pytest.approx(want, rel=RTOL)
    assert float(se.inception_score(g, array="scores")) == pytest.approx(want, rel=RTOL)
    # An array in memory is named by the argument it is given as.
    assert float(se.inception_score(x)) == pytest.approx(want, rel=RTOL)


def test_an_extraction_stores_array_is_honoured_or_refused(tmp_path, rng):
    """«array» on an extraction store: 'logits' is what is read; its features are refused
    (they were read as... nothing: the option was dropped and the logits read)."""
    path = _extraction_store(tmp_path / "x.zarr", rng)
    want = torch_fidelity_isc(zarr.open_group(path)["logits"][:], 1, shuffle=False)[0]
    assert float(se.inception_score(path, array="logits")) == pytest.approx(want, rel=RTOL)
    with pytest.raises(NotLogitsError, match=r"array='features'.* features.*'logits'"):
        se.inception_score(path, array="features")
    with pytest.raises(NotLogitsError, match=r"array='features'"):
        se.metrics(None, path, ["is"], array="features")
    # With a metric of the features, «array» is theirs, and the score reads the logits.
    report = se.metrics(path, path, ["fid", "is"], array="features")
    assert report.to_dict()["is"]["is"] == pytest.approx(want, rel=RTOL)


def test_metrics_of_features_and_is_refuse_features_as_logits(tmp_path, rng):
    real = write_zarr(tmp_path / "real.zarr", rng.standard_normal((300, 16)).astype("f4"))
    gen = write_zarr(tmp_path / "gen.zarr", rng.standard_normal((300, 16)).astype("f4"))
    passes = []
    with pytest.raises(NotLogitsError, match="not known to hold class logits"):
        se.metrics(real, gen, ["fid", "is"], progress=lambda done, total: passes.append(done))
    assert passes == []  # refused before any pass (FID's of the reference among them)
    with pytest.raises(NotLogitsError, match="not known to hold class logits"):
        se.metrics(None, gen, ["is"])
    # Features in memory with another metric: not named as logits either.
    with pytest.raises(NotLogitsError, match="not known to hold class logits"):
        se.metrics(rng.standard_normal((300, 16)), rng.standard_normal((300, 16)), ["fid", "is"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("precision", "fp64"), ("device", "cpu"), ("backend", "torch"), ("nonfinite", "drop")],
)
def test_metrics_refuses_run_options_the_score_does_not_take(tmp_path, rng, option, value):
    path = str(tmp_path / "logits.npy")
    np.save(path, _logits(rng, 100, 5))
    with pytest.raises(OptionError, match=rf"{option}.*apply to .*\bis\b"):
        se.metrics(None, path, ["is"], **{option: value})
    settings_ = se.metrics(None, path, ["is"]).to_dict()["settings"]
    assert option not in settings_  # the score takes none: every row, or an error


def _extraction_store(path, rng, n=90, c=12):
    from shardeval.pipeline.images.extract import LOGITS_ARRAY
    from shardeval.pipeline.io.stores import FEATURES_FORMAT

    group = zarr.create_group(
        str(path), attributes={"format": FEATURES_FORMAT, "encoder": "inception", "complete": True}
    )
    group.create_array(
        "features", shape=(n, 16), dtype="float32", chunks=(30, 16),
        dimension_names=("sample", "feature"),
    )[...] = rng.standard_normal((n, 16))  # fmt: skip
    group.create_array(
        LOGITS_ARRAY, shape=(n, c), dtype="float32", chunks=(30, c),
        dimension_names=("sample", "class"),
    )[...] = _logits(rng, n, c)  # fmt: skip
    return str(path)


def _pool3_like(rng, n, d=2048, positions=8):
    """What the Inception's pool3 is: the average over positions of ReLU outputs, so every
    value ≥ 0 (most > 0), d = 2,048."""
    pre = rng.standard_normal((n, positions, d), dtype=np.float32) - 0.5
    return np.maximum(pre, 0.0).mean(axis=1)


def test_features_given_as_logits_are_refused_by_their_width_and_signs(tmp_path, rng):
    """An array in memory is named as logits by being passed as them, but features passed so
    scored plausibly (|N(0, 1)| rows of 2,048: 1.3054; pool3 features read into memory:
    1.00003). Logits take both signs and the Inception's are 1,008 wide: an array 2,048 wide
    (the Inception's pool3 width, whatever its signs) or with every value ≥ 0 (features after
    a ReLU) is refused in one line naming the fix, wherever it comes from; «as_logits=True»
    says they are logits, and then they are scored as the definition scores them."""
    half_normal = np.abs(rng.normal(size=(300, 2048)))
    pool3 = _pool3_like(rng, 300)
    standardised = (pool3 - pool3.mean(axis=0)) / (pool3.std(axis=0) + 1e-6)  # both signs
    relu = np.maximum(rng.standard_normal((300, 512)), 0.0)  # another ReLU network's features
    np.save(tmp_path / "logits.npy", relu)  # a name does not make features logits either
    cases = {
        "2,048 columns": (half_normal, pool3, standardised),
        "every value": (relu, str(tmp_path / "logits.npy")),
    }
    for why, inputs in cases.items():
        for x in inputs:
            with pytest.raises(NotLogitsError, match=why) as caught:
                se.inception_score(x)
            message = str(caught.value)
            assert "as_logits=True" in message
            assert "\n" not in message
    # The same through `metrics` (its plug-in's one path).
    with pytest.raises(NotLogitsError, match="every value"):
        se.metrics(None, relu, ["is"])
    # Declared logits are read, whatever their width and signs: the definition's score.
    for x in (half_normal, relu):
        want = torch_fidelity_isc(x, 1, shuffle=False)[0]
        report = se.inception_score(x, as_logits=True)
        assert float(report) == pytest.approx(want, rel=RTOL)
        assert report.to_dict()["options"]["is"]["as_logits"] is True
    got = se.metrics(None, relu, ["is"], as_logits=True).to_dict()["is"]["is"]
    assert got == pytest.approx(torch_fidelity_isc(relu, 1, shuffle=False)[0], rel=RTOL)
    # Probabilities stay refused (their log is the fix), declared or not.
    p = np.eye(10)[np.arange(300) % 10] * 0.9 + 0.01
    with pytest.raises(NotLogitsError, match="probabilit"):
        se.inception_score(p, as_logits=True)


def test_logits_of_both_signs_are_read_as_before(rng):
    """What the rule must not refuse: the FID Inception's logits (1,008, both signs), other
    classifiers' (1,000, 10, 2 classes), log-probabilities (every value ≤ 0)."""
    for c in (1008, 1000, 10, 2):
        x = _logits(rng, 400, c)
        report = se.inception_score(x)
        assert float(report) == pytest.approx(torch_fidelity_isc(x, 1, shuffle=False)[0], rel=RTOL)
        assert report.to_dict()["options"]["is"]["as_logits"] is False
    x = _logits(rng, 400, 10).astype(np.float64)
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    want = torch_fidelity_isc(x, 1, shuffle=False)[0]
    assert float(se.inception_score(log_p)) == pytest.approx(want, rel=RTOL)


def test_one_array_inputs_are_read_as_logits_when_declared(tmp_path, rng):
    """A .npy or a Zarr array holds one array, which «array» cannot pick: the refusal of
    one named otherwise said «array=NAME», which was then refused ("it has no array
    'scores'"), so renaming the file was the only way. The messages name what works, and
    «as_logits=True» reads it."""
    x = _logits(rng, 300, 12)
    want = torch_fidelity_isc(x, 1, shuffle=False)[0]
    np.save(tmp_path / "scores.npy", x)
    plain = zarr.create_array(str(tmp_path / "scores.zarr"), shape=x.shape, dtype="f4")
    plain[...] = x
    for path in (str(tmp_path / "scores.npy"), str(tmp_path / "scores.zarr")):
        with pytest.raises(NotLogitsError, match="not known to hold class logits") as caught:
            se.inception_score(path)
        assert "as_logits=True" in str(caught.value)
        assert "array=NAME" not in str(caught.value)
        for name in ("scores", "logits"):
            with pytest.raises(NotLogitsError, match=f"array='{name}'") as caught:
                se.inception_score(path, array=name)
            assert "holds one array" in str(caught.value)
            assert "as_logits=True" in str(caught.value)
        assert float(se.inception_score(path, as_logits=True)) == pytest.approx(want, rel=RTOL)


def test_an_array_named_logits_is_picked_among_several(tmp_path, rng):
    """An .npz or a Dataset holding `logits` beside other arrays gives its logits (it said
    "choose the features with «array=NAME»" before); one holding none names the choice
    without calling it features."""
    import xarray as xr

    x = _logits(rng, 300, 12)
    want = torch_fidelity_isc(x, 1, shuffle=False)[0]
    other = rng.standard_normal((300, 5))
    np.savez(tmp_path / "both.npz", logits=x, other=other)
    assert float(se.inception_score(str(tmp_path / "both.npz"))) == pytest.approx(want, rel=RTOL)
    assert float(se.metrics(None, str(tmp_path / "both.npz"), ["is"])) == pytest.approx(
        want, rel=RTOL
    )
    dims = ("sample", "feature")
    ds = xr.Dataset({"logits": (("sample", "class"), x), "other": (dims, other)})
    assert float(se.inception_score(ds)) == pytest.approx(want, rel=RTOL)
    np.savez(tmp_path / "neither.npz", scores=x, other=other)
    with pytest.raises(StoreError, match=r"\['scores', 'other'\]") as caught:
        se.inception_score(str(tmp_path / "neither.npz"))
    assert "array=NAME" in str(caught.value)
    assert "features" not in str(caught.value)
    got = se.inception_score(str(tmp_path / "neither.npz"), array="scores")
    assert float(got) == pytest.approx(want, rel=RTOL)
