"""The realism score (Kynkäänniemi et al. 2019, Sec. 5) of each generated row against the
float64 definition on the concatenated data (scipy's cdist) and against the reference code's
computation, whatever the blocks; the discarded half, ties, copies and zero radii decided as
stated; the PRDC values unchanged by asking for it."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import shardeval as se
from shardeval.pipeline import open_features
from shardeval.pipeline.neighbours.prdc import realism_radii
from shardeval.pipeline.pairwise.passes import PRDCParams, sample_metrics


def realism_reference(real, gen, k=3):
    """The definition in float64 on the whole sets: NND_k(x) the distance from x to its k-th
    nearest other real row; the rows whose NND_k exceeds the median of all NND_k
    (np.percentile(·, 50), as the reference code's clamp_to_percentile=50) discarded; R(g) the
    largest NND_k(x) / ‖g − x‖ over those kept (0/‖g − x‖ = 0 for a kept radius of 0, inf for
    a copy of a kept row of positive radius)."""
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    within = cdist(real, real)
    np.fill_diagonal(within, np.inf)
    nnd = np.sort(within, axis=1)[:, k - 1]
    kept = (nnd <= np.percentile(nnd, 50)) & (nnd > 0)
    if not kept.any():
        return np.zeros(len(gen))
    with np.errstate(divide="ignore"):
        return (nnd[kept, None] / cdist(real[kept], gen)).max(axis=0)


def official_realism(real, gen, k=3, eps=1e-5):
    """The reference code's score (kynkaat/improved-precision-and-recall-metric,
    precision_recall.py, ManifoldEstimator with clamp_to_percentile=50), transcribed in
    float64: squared distances, the k-th smallest of each row with itself included
    (np.partition(·)[:, k]), radii above the 50th percentile set to 0, and
    max D_k / (‖g − x‖² + eps)."""
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    d = np.partition(cdist(real, real, "sqeuclidean"), np.arange(k + 1), axis=1)[:, k]
    d[d > np.percentile(d, 50)] = 0
    return np.max(d[None, :] / (cdist(gen, real, "sqeuclidean") + eps), axis=1)


def _store(folder, name, x):
    np.save(folder / f"{name}.npy", x)
    return open_features(str(folder / f"{name}.npy"))


def _prdc(folder, real, gen, **kw):
    params = kw.pop("prdc", PRDCParams(realism=True))
    real, gen = _store(folder, "real", real), _store(folder, "gen", gen)
    return sample_metrics(real, gen, prdc=params, **kw)["prdc"]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(6, 120),
    m=st.integers(6, 120),
    d=st.integers(1, 40),
    block_rows=st.integers(1, 130),
    precision=st.sampled_from(["fp32", "fp64"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_realism_equals_the_float64_definition_whatever_the_blocks(
    tmp_path_factory, seed, n, m, d, block_rows, precision, dtype
):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, d)).astype(dtype)
    gen = (rng.normal(size=(m, d)) * 1.3).astype(dtype)
    copied = rng.integers(0, n, size=rng.integers(0, m + 1))
    gen[: copied.size] = real[copied]  # copies of real rows: inf where the row is kept
    got = _prdc(
        tmp_path_factory.mktemp("realism"), real, gen, block_rows=block_rows, precision=precision
    )
    want = realism_reference(real, gen)
    assert got.realism.shape == (m,)
    np.testing.assert_array_equal(np.isinf(got.realism), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got.realism[finite], want[finite], rtol=1e-13, atol=0)


def test_realism_ranks_the_rows_as_the_reference_code(tmp_path):
    rng = np.random.default_rng(3)
    d = 16
    real = rng.normal(size=(700, d))
    gen = rng.normal(size=(400, d)) * 1.2 + 0.1
    got = _prdc(tmp_path, real, gen, block_rows=150)
    official = official_realism(real, gen)
    # Its score is ours squared, with 1e-5 beside squared distances of about 2d.
    np.testing.assert_allclose(got.realism**2, official, rtol=1e-5)
    np.testing.assert_array_equal(np.argsort(got.realism), np.argsort(official))
    np.testing.assert_allclose(got.realism, realism_reference(real, gen), rtol=1e-13)


def test_the_half_with_the_largest_radii_is_discarded_ties_kept():
    # Odd N: the median itself is kept.
    assert realism_radii(np.array([9.0, 1.0, 4.0, 16.0, 25.0])).tolist() == [
        9.0, 1.0, 4.0, 0.0, 0.0,
    ]  # fmt: skip
    # Even N: those above the mean of the two middle radii go, so the lower half stays...
    assert realism_radii(np.array([1.0, 4.0, 9.0, 16.0])).tolist() == [1.0, 4.0, 0.0, 0.0]
    # ...and when the two middle radii are equal, every row at that radius stays.
    assert realism_radii(np.array([1.0, 4.0, 4.0, 4.0, 16.0, 25.0])).tolist() == [
        1.0, 4.0, 4.0, 4.0, 0.0, 0.0,
    ]  # fmt: skip
    # As np.percentile(·, 50) decides, whatever the values.
    rng = np.random.default_rng(0)
    for n in range(1, 40):
        r = rng.integers(0, 6, n).astype(np.float64) ** 2
        np.testing.assert_array_equal(realism_radii(r) > 0, (r <= np.percentile(r, 50)) & (r > 0))


def test_a_copy_of_a_kept_row_is_inf_and_a_zero_radius_adds_nothing(tmp_path):
    real = np.array([[0.0], [0.0], [0.0], [0.0], [1.0], [3.0], [7.0], [15.0]])
    # k = 3: rows 0-3 have three copies each (radius 0), rows 4.. larger radii.
    gen = np.array([[0.0], [1.0], [2.0], [100.0], [-50.0], [60.0]])
    got = _prdc(tmp_path, real, gen, block_rows=3).realism
    want = realism_reference(real, gen)
    np.testing.assert_array_equal(got, want)
    # The median radius is 0.5 (radii 0, 0, 0, 0, 1, 3, 6, 12): only the zero radii are kept,
    # and they add nothing: every score is 0, a copy of them included.
    assert got.tolist() == [0.0] * 6
    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0], [20.0]])
    got = _prdc(tmp_path, real, gen, block_rows=2).realism
    np.testing.assert_allclose(got, realism_reference(real, gen), rtol=1e-15)
    # Radii 3, 2, 2, 2, 3, 8, 17: the median 3 keeps rows 0 to 4.
    assert np.isinf(got[:3]).all()
    assert got[3] == 3.0 / 96.0  # row 4 (radius 3) beats row 3 (2 / 97)


def test_asking_for_realism_changes_no_prdc_value(tmp_path):
    rng = np.random.default_rng(5)
    real, gen = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) + 0.2
    plain = _prdc(tmp_path, real, gen, prdc=PRDCParams(groups=8), block_rows=70)
    got = _prdc(tmp_path, real, gen, prdc=PRDCParams(groups=8, realism=True), block_rows=70)
    assert plain.realism is None
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(got, name) == getattr(plain, name)
    assert got.errors == plain.errors
    np.testing.assert_allclose(got.realism, realism_reference(real, gen), rtol=1e-13)


def test_scaled_rows_give_the_same_scores(tmp_path):
    rng = np.random.default_rng(8)
    real, gen = rng.normal(size=(60, 5)), rng.normal(size=(40, 5))
    plain = _prdc(tmp_path, real, gen, block_rows=17).realism
    for scale in (2.0**300, 2.0**-300):  # compared × 2^-e (distance_exponent): ratios alike
        got = _prdc(tmp_path, real * scale, gen * scale, block_rows=17).realism
        np.testing.assert_allclose(got, plain, rtol=1e-13)


def test_the_metric_reports_realism_only_with_per_sample():
    rng = np.random.default_rng(2)
    real, gen = rng.normal(size=(200, 4)), rng.normal(size=(150, 4))
    plain = se.prdc(real, gen)
    rows = se.prdc(real, gen, per_sample=True)
    assert plain["prdc"]["prdc_realism"] is None
    assert rows["prdc"]["prdc_precision"] == plain["prdc"]["prdc_precision"]
    np.testing.assert_allclose(
        rows["prdc"]["prdc_realism"], realism_reference(real, gen), rtol=1e-13
    )
    assert len(rows.to_dict()["prdc"]["prdc_realism"]) == 150
