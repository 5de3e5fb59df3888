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
from shardeval.pipeline.inception_score.logits import logits_of
from shardeval.pipeline.inception_score.score import (
    ClassSums,
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
    assert ClassSums in registered_states()


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
    # The score over all samples is torch-fidelity's with one split and no shuffle.
    assert r.inception_score == pytest.approx(torch_fidelity_isc(x, 1, shuffle=False)[0], rel=RTOL)


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
    # Every row the same distribution (here uniform): p(y|x) = p(y), KL 0, IS 1.
    for constant in (np.zeros((n, c)), np.full((n, c), 7.5), np.tile(np.arange(c), (n, 1))):
        r = inception_score(features(constant), splits=4)
        assert r.inception_score == pytest.approx(1.0, abs=1e-12)
        assert r.standard_error == pytest.approx(0.0, abs=1e-12)
        np.testing.assert_allclose(r.split_scores, 1.0, atol=1e-12)
    # One-hot rows, every class equally often: p(y|x) a point mass, p(y) uniform, IS = C. At a
    # magnitude of 1000 the other classes' probabilities are exactly 0 in float64 (0 log 0 = 0:
    # torch-fidelity's q.log() gives NaN there).
    for magnitude in (60.0, 1000.0, 1e300):
        one_hot = magnitude * np.eye(c)[np.arange(n) % c]
        r = inception_score(features(one_hot, shard_rows=7 if c < 100 else 4099))
        assert r.inception_score == pytest.approx(c, rel=1e-12)
        assert r.log_inception_score == pytest.approx(math.log(c), rel=1e-12)
        assert r.standard_error == pytest.approx(0.0, abs=1e-9 * c)
    # One class for every row: IS 1.
    r = inception_score(features(50.0 * np.eye(c)[np.zeros(n, int)]))
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
def test_sums_merged_over_any_partition_equal_one_block(data, n, c, splits):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, c)) * data.draw(st.sampled_from([0.1, 3.0, 40.0]))
    labels = rng.integers(0, splits, n)
    whole = ClassSums.from_logits(x, 0, labels, splits)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=min(8, n - 1))))
    bounds = [0, *cuts, n]
    parts = [
        ClassSums.from_logits(x[a:b], a, labels[a:b], splits) for a, b in itertools.pairwise(bounds)
    ]
    order = data.draw(st.permutations(range(len(parts))))
    merged = ClassSums.empty(splits, c)
    for i in order:
        merged = merged.merge(parts[i])
    np.testing.assert_array_equal(merged.n, whole.n)
    np.testing.assert_allclose(merged.p, whole.p, rtol=1e-12, atol=1e-12 * n)
    np.testing.assert_allclose(merged.plogp, whole.plogp, rtol=1e-12, atol=1e-12 * n)
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
        sums = ClassSums.from_logits(x, 0)
        log_is = float(sums.log_scores()[0])
        m = kl_moments(x, 0, sums.log_marginal())
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
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        report = se.inception_score(
            path, splits=5, shard_rows=150, scheduler=cluster.scheduler_address
        )
    spread = report.results["is"]
    assert report.to_dict()["engine"]["scheduler"] == "distributed"
    assert spread.split_scores == pytest.approx(threads.split_scores, rel=1e-13)
    assert spread.inception_score == pytest.approx(threads.inception_score, rel=1e-13)
    assert spread.standard_error == pytest.approx(threads.standard_error, rel=1e-10)
