"""KL divergences between the sides' Gaussians (the ``kl_gaussian`` metric): against a direct
float64 formula (np.linalg.inv, slogdet) on the concatenated rows, scipy's Gaussian entropy,
a Monte-Carlo estimate of the closed form, under random sharding, with statistics on either
side; singular covariances refused, a ridge, and covariances too ill-conditioned for digits."""

import math

import numpy as np
import pytest
from scipy import stats

import shardeval as se
from shardeval.pipeline.errors import MetricOptionError, NumericalError
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.fid.kl import ROUNDING_RTOL, kl_gaussian
from tests.reference import np_stats


def reference_kl(mu_p, s_p, mu_q, s_q):
    """KL(N(μ_p, Σ_p) ‖ N(μ_q, Σ_q)) by the textbook formula, float64 numpy."""
    d = len(mu_p)
    inv_q = np.linalg.inv(s_q)
    diff = mu_q - mu_p
    _, logdet_p = np.linalg.slogdet(s_p)
    _, logdet_q = np.linalg.slogdet(s_q)
    return 0.5 * (np.trace(inv_q @ s_p) + diff @ inv_q @ diff - d + logdet_q - logdet_p)


def reference_entropy(s):
    d = s.shape[0]
    return 0.5 * (d * (1 + math.log(2 * math.pi)) + np.linalg.slogdet(s)[1])


def _sets(seed, n_real=400, n_gen=350, d=5):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d))
    real = rng.standard_normal((n_real, d)) @ mix + 3.0
    gen = 1.3 * rng.standard_normal((n_gen, d)) @ mix.T + 2.5
    return real, gen


def _section(real, gen, **options):
    return se.metrics(real, gen, ["kl_gaussian"], **options).to_dict()["kl_gaussian"]


def _check_against_reference(section, real, gen, rel=1e-10):
    (mu_p, s_p), (mu_q, s_q) = np_stats(real), np_stats(gen)
    forward = reference_kl(mu_p, s_p, mu_q, s_q)
    reverse = reference_kl(mu_q, s_q, mu_p, s_p)
    h_p, h_q = reference_entropy(s_p), reference_entropy(s_q)
    d = real.shape[1]
    assert section["kl_gaussian"] == pytest.approx(forward, rel=rel)
    assert section["kl_gaussian_reverse"] == pytest.approx(reverse, rel=rel)
    assert section["kl_gaussian_entropy_real"] == pytest.approx(h_p, rel=rel)
    assert section["kl_gaussian_entropy_gen"] == pytest.approx(h_q, rel=rel)
    assert section["kl_gaussian_cross_entropy"] == pytest.approx(h_p + forward, rel=rel)
    assert section["kl_gaussian_cross_entropy_reverse"] == pytest.approx(h_q + reverse, rel=rel)
    assert section["kl_gaussian_cross_entropy_per_dim"] == pytest.approx(
        (h_p + forward) / d, rel=rel
    )
    diff = mu_q - mu_p
    assert section["kl_gaussian_mean_term"] == pytest.approx(
        0.5 * diff @ np.linalg.solve(s_q, diff), rel=rel
    )
    assert section["kl_gaussian_mean_term_reverse"] == pytest.approx(
        0.5 * diff @ np.linalg.solve(s_p, diff), rel=rel
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_direct_formula_on_the_concatenated_rows(seed):
    real, gen = _sets(seed)
    section = _section(real, gen)
    _check_against_reference(section, real, gen)
    assert section["kl_gaussian_n"] == len(gen)
    assert section["kl_gaussian_n_real"] == len(real)
    # the direction: KL(p‖q) with p the reference is not KL(q‖p)
    assert section["kl_gaussian"] != pytest.approx(section["kl_gaussian_reverse"], rel=1e-3)


def test_entropies_equal_scipys():
    real, gen = _sets(3)
    section = _section(real, gen)
    for rows, key in ((real, "kl_gaussian_entropy_real"), (gen, "kl_gaussian_entropy_gen")):
        mu, s = np_stats(rows)
        assert section[key] == pytest.approx(stats.multivariate_normal(mu, s).entropy(), rel=1e-12)


def test_the_closed_form_equals_a_monte_carlo_estimate():
    """E_p[ln p(x) − ln q(x)] over 400,000 draws of p (scipy's log-densities), within 5
    standard errors of the closed form, and likewise for KL(q‖p) and H(p, q) = −E_p ln q."""
    rng = np.random.default_rng(5)
    d = 3
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    p = Gaussian(rng.standard_normal(d), a @ a.T + 0.5 * np.eye(d))
    q = Gaussian(rng.standard_normal(d) * 0.5, b @ b.T + 0.8 * np.eye(d))
    kl = kl_gaussian(p, q)
    dist_p = stats.multivariate_normal(p.mean, p.cov)
    dist_q = stats.multivariate_normal(q.mean, q.cov)
    for sampler, this, other, expected in (
        (dist_p, dist_p, dist_q, kl.forward),
        (dist_q, dist_q, dist_p, kl.reverse),
    ):
        x = sampler.rvs(size=400_000, random_state=rng)
        ratio = this.logpdf(x) - other.logpdf(x)
        error = ratio.std(ddof=1) / math.sqrt(len(x))
        assert abs(ratio.mean() - expected) < 5 * error
    x = dist_p.rvs(size=400_000, random_state=rng)
    cross = -dist_q.logpdf(x)
    assert abs(cross.mean() - kl.cross_entropy) < 5 * cross.std(ddof=1) / math.sqrt(len(x))


@pytest.mark.parametrize("seed", range(4))
def test_the_same_under_random_sharding_and_merge_trees(seed):
    real, gen = _sets(10)
    rng = np.random.default_rng(seed)
    whole = _section(real, gen, precision="fp64")
    options = {"shard_rows": int(rng.integers(3, 120)), "split_every": int(rng.integers(2, 5))}
    sharded = _section(real, gen, **options)
    for key, value in whole.items():
        assert sharded[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    _check_against_reference(sharded, real, gen)


def test_statistics_on_either_side():
    real, gen = _sets(4)
    as_stats = [
        Gaussian(*np_stats(x), n=len(x), source=name) for x, name in ((real, "r"), (gen, "g"))
    ]
    expected = _section(real, gen)
    for r, g in ((as_stats[0], gen), (real, as_stats[1]), tuple(as_stats)):
        got = _section(r, g)
        for key in ("kl_gaussian", "kl_gaussian_reverse", "kl_gaussian_cross_entropy"):
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key


@pytest.mark.parametrize("decades", [1, 8])
def test_diagonal_covariances_give_the_sum_over_dimensions(decades):
    """Closed form per dimension: KL = ½ Σ (a_i/b_i − 1 − ln(a_i/b_i) + δ_i²/b_i). Ratios over
    one decade take the symmetric eigenvalue routine, over eight the singular values."""
    rng = np.random.default_rng(decades)
    d = 12
    a = np.logspace(0, -decades / 2, d) * rng.uniform(0.5, 2, d)
    b = np.logspace(-decades / 2, 0, d) * rng.uniform(0.5, 2, d)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    kl = kl_gaussian(Gaussian(mu_a, np.diag(a)), Gaussian(mu_b, np.diag(b)))
    delta2 = (mu_b - mu_a) ** 2
    for got, x, y in ((kl.forward, a, b), (kl.reverse, b, a)):
        expected = 0.5 * float(np.sum(x / y - 1 - np.log(x / y) + delta2 / y))
        assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e5])
def test_identical_sets_give_zero_both_ways(scale):
    real, _ = _sets(6)
    section = _section(real * scale, real.copy() * scale)
    assert 0 <= section["kl_gaussian"] <= 1e-12
    assert 0 <= section["kl_gaussian_reverse"] <= 1e-12


def test_a_kl_near_zero_keeps_its_digits():
    """Covariances that differ by 1e-6 relative: tr − d + ln det cancel to ~1e-12 nats, which
    the direct formula leaves as rounding of terms of order d; the sum of μ − 1 − ln μ keeps
    it (against the second-order expansion ¼ Σ (μ − 1)²)."""
    rng = np.random.default_rng(8)
    d = 40
    a = rng.standard_normal((d, 2 * d))
    s = a @ a.T / (2 * d)
    e = rng.standard_normal((d, d)) * 1e-6
    s_q = s + (e + e.T) / 2
    mu = np.zeros(d)
    kl = kl_gaussian(Gaussian(mu, s), Gaussian(mu, s_q))
    mu_eig = np.linalg.eigvals(np.linalg.solve(s_q, s)).real
    second_order = 0.25 * float(((mu_eig - 1) ** 2).sum())
    assert kl.forward == pytest.approx(second_order, rel=1e-4)
    assert kl.reverse == pytest.approx(second_order, rel=1e-4)


@pytest.mark.parametrize("side", ["real", "gen"])
def test_fewer_rows_than_dimensions_are_refused_as_singular(side):
    real, gen = _sets(7, d=8)
    few = {"real": real, "gen": gen}
    few[side] = few[side][:6]  # 6 rows ≤ d = 8: rank ≤ 5
    name = "reference" if side == "real" else "generated"
    with pytest.raises(NumericalError, match=rf"{name} covariance .* is singular") as caught:
        _section(few["real"], few["gen"])
    message = str(caught.value)
    for part in ("smallest eigenvalue", "1e-12", "n = 6 rows ≤ d = 8", "infinite"):
        assert part in message


def test_repeated_rows_are_refused_as_singular_whatever_the_products():
    real, gen = _sets(8, d=6)
    repeated = np.repeat(gen[:4], 100, axis=0)  # 400 rows, rank 3
    with pytest.raises(NumericalError, match=r"generated covariance .* singular.*repeated"):
        _section(real, repeated)


def test_a_ridge_makes_a_singular_covariance_finite_and_is_the_formula_with_it():
    real, gen = _sets(9, d=6)
    few = gen[:4]
    eps = 0.05
    section = _section(real, few, ridge=eps)
    (mu_p, s_p), (mu_q, s_q) = np_stats(real), np_stats(few)
    s_p, s_q = s_p + eps * np.eye(6), s_q + eps * np.eye(6)
    assert section["kl_gaussian"] == pytest.approx(reference_kl(mu_p, s_p, mu_q, s_q), rel=1e-9)
    assert section["kl_gaussian_reverse"] == pytest.approx(
        reference_kl(mu_q, s_q, mu_p, s_p), rel=1e-9
    )
    with pytest.raises(MetricOptionError, match="ridge"):
        _section(real, gen, ridge=-1.0)


def test_ill_conditioned_covariances_take_float64_products():
    """float32 rows whose covariance has condition 1e6: fp32 products would move KL by ~3e-7
    relative (measured), beyond what their bound can vouch for; the moments take float64
    products, and the result is the float64 formula's on those rows."""
    rng = np.random.default_rng(11)
    d = 10
    scales = np.logspace(0, -3, d)  # variances 1 … 1e-6
    real = (rng.standard_normal((3000, d)) * scales + 1.0).astype(np.float32)
    gen = (rng.standard_normal((2500, d)) * scales * 1.2 + 1.0).astype(np.float32)
    section = _section(real, gen)
    _check_against_reference(section, real.astype(np.float64), gen.astype(np.float64))
    assert section["kl_gaussian_condition_real"] > 1e5
    largest = max(section["kl_gaussian"], section["kl_gaussian_reverse"], 1.0)
    assert section["kl_gaussian_rounding_bound"] <= ROUNDING_RTOL * largest


def test_covariances_too_ill_conditioned_for_digits_are_refused():
    rng = np.random.default_rng(12)
    d = 30
    q_, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = (q_ * np.logspace(0, -11.5, d)) @ q_.T  # condition ~3e11: definite, below 1e-12
    s = 0.5 * (s + s.T)
    p = Gaussian(np.zeros(d), s, n=10_000, source="p")
    q = Gaussian(np.full(d, 1e-3), 1.01 * s, n=10_000, source="q")
    kl = kl_gaussian(p, q, products=(None, None))
    assert kl.rounding_exceeds()
    with pytest.raises(NumericalError, match="ill-conditioned"):
        se.metrics(p, q, ["kl_gaussian"])


def test_nonfinite_rows_are_refused_or_dropped_and_counted():
    real, gen = _sets(13)
    dirty = gen.copy()
    dirty[[4, 9]] = np.nan
    with pytest.raises(se.NonFiniteError):
        _section(real, dirty)
    section = _section(real, dirty, nonfinite="drop")
    assert section["kl_gaussian_nonfinite_dropped"] == 2
    _check_against_reference(section, real, np.delete(gen, [4, 9], axis=0))


def test_feature_dimensions_must_agree():
    real, gen = _sets(14)
    with pytest.raises(se.ShardevalError, match=r"d=5|features"):
        _section(real, gen[:, :4])


def _kl_mpmath(mu_p, s_p, mu_q, s_q):
    """KL(p‖q) of the float64 statistics in 50-digit arithmetic (mpmath)."""
    import mpmath

    mpmath.mp.dps = 50
    sp, sq = mpmath.matrix(s_p.tolist()), mpmath.matrix(s_q.tolist())
    diff = mpmath.matrix((mu_q - mu_p).tolist())
    inv_q = sq**-1
    d = len(mu_p)
    trace = mpmath.fsum((inv_q * sp)[i, i] for i in range(d))
    return 0.5 * (
        trace + (diff.T * inv_q * diff)[0] - d + mpmath.log(mpmath.det(sq) / mpmath.det(sp))
    )


# (Wider spreads make Σ_p itself ill-conditioned: its Cholesky factor's backward error, ε·‖Σ_p‖,
# then moves μ_min by more than the spectrum's rounding, whatever routine follows.)
@pytest.mark.parametrize("spread", [1e-3, 1e-5])
def test_a_wide_spectrum_keeps_the_small_eigenvalues_digits_both_ways(spread):
    # Σ_q⁻¹Σ_p with eigenvalues over `spread` (to 1 / spread): the reverse KL is led by
    # 1/μ_min, the forward by ln μ_min, so each needs the small μ to relative accuracy
    rng = np.random.default_rng(8)
    d = 6
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    s_q = basis @ np.diag(rng.uniform(0.5, 2.0, d)) @ basis.T
    lower = np.linalg.cholesky(s_q)
    other = np.linalg.qr(rng.normal(size=(d, d)))[0]
    mu = np.geomspace(math.sqrt(spread), 1 / math.sqrt(spread), d)
    s_p = lower @ other @ np.diag(mu) @ other.T @ lower.T
    s_p = 0.5 * (s_p + s_p.T)
    mu_p, mu_q = rng.normal(size=d), rng.normal(size=d)
    got = kl_gaussian(Gaussian(mu_p, s_p), Gaussian(mu_q, s_q))
    assert got.forward == pytest.approx(float(_kl_mpmath(mu_p, s_p, mu_q, s_q)), rel=1e-11)
    assert got.reverse == pytest.approx(float(_kl_mpmath(mu_q, s_q, mu_p, s_p)), rel=1e-11)
