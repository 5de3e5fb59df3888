"""The Vendi score with the cosine kernel (the ``vendi`` metric): against the ``vendi-score``
package (Friedman & Dieng's own code: its N × N ``score`` with the cosine kernel and its d × d
``score_dual``) and a float64 numpy transcription of the paper's N × N definition, under random
sharding and merge trees, its orders q, closed forms (one direction: 1; orthogonal directions:
their count; one row: 1), and what is refused."""

import math
import warnings

import dask.array as da
import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.core.states import registered_states
from shardeval.pipeline.errors import MetricOptionError, OptionError, ZeroRowError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.vendi.score import UnitSecondMoment, vendi_score


def definition(x, q=1.0):
    """The paper's definition, float64 numpy: K_ij = cos(x_i, x_j), λ the eigenvalues of K/N,
    VS = exp(−Σ λ ln λ), or (Σ λ^q)^{1/(1−q)}; zero and rounding eigenvalues left out."""
    x = np.asarray(x, dtype=np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(unit @ unit.T / len(x))
    lam = lam[lam > 1e-13]
    if q == 1.0:
        return float(np.exp(-(lam * np.log(lam)).sum()))
    return float((lam**q).sum() ** (1.0 / (1.0 - q)))


def _score(x, **options):
    return se.metrics(None, x, ["vendi"], **options).to_dict()["vendi"]


def _sets(seed, n=120, d=7):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)


@pytest.mark.parametrize(("n", "d"), [(60, 8), (5, 20), (300, 3)])
@pytest.mark.parametrize("q", [1.0, 0.5, 2.0, 5.0])
def test_equals_the_vendi_score_package(n, d, q):
    """Both of the package's forms for q ≥ 1. For q < 1 only the form whose matrix has no
    zero eigenvalues (N × N when N ≤ d, d × d when d ≤ N): the package keeps every eigenvalue
    above 0, so the rounding of zero ones (~1e-17) counts, and λ^q magnifies it (1e-17^0.5 =
    3e-9 each), where the score here sets them to 0 (measured: 1e-7 relative apart)."""
    vendi = pytest.importorskip("vendi_score.vendi")
    x = _sets(n + d, n, d)
    got = _score(x, q=q)["vendi"]

    def cosine(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    with warnings.catch_warnings():  # its score_K names scipy.sparse.csr, deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        by_kernel = vendi.score(x, cosine, q=q)
    if q >= 1 or n <= d:
        assert got == pytest.approx(by_kernel, rel=1e-10)
    if q >= 1 or d <= n:
        assert got == pytest.approx(vendi.score_dual(x, q=q), rel=1e-10)


@pytest.mark.parametrize("q", [1.0, 0.3, 3.0])
@pytest.mark.parametrize("seed", range(3))
def test_equals_the_definition_on_the_concatenated_rows(seed, q):
    x = _sets(seed)
    section = _score(x, q=q)
    assert section["vendi"] == pytest.approx(definition(x, q), rel=1e-11)
    assert section["vendi_entropy"] == pytest.approx(math.log(definition(x, q)), rel=1e-10)
    assert section["vendi_n"] == len(x)
    spectrum = np.asarray(section["vendi_spectrum"])
    assert spectrum.sum() == pytest.approx(1.0, rel=1e-12)
    assert np.all(np.diff(spectrum) <= 0)


@pytest.mark.parametrize("seed", range(4))
def test_the_same_under_random_sharding_merge_trees_and_row_orders(seed):
    x = _sets(20, n=257)
    rng = np.random.default_rng(seed)
    expected = definition(x)
    shuffled = x[rng.permutation(len(x))]
    options = {"shard_rows": int(rng.integers(1, 90)), "split_every": int(rng.integers(2, 6))}
    assert _score(shuffled, **options)["vendi"] == pytest.approx(expected, rel=1e-11)


def _source(x, rows):
    return FeatureSource("rows", da.from_array(np.asarray(x), chunks=(rows, np.shape(x)[1])))


def test_closed_forms():
    rng = np.random.default_rng(1)
    # one direction, at any positive scale: 1
    direction = rng.standard_normal(9)
    same = direction * rng.uniform(0.1, 1e3, (50, 1))
    assert vendi_score(_source(same, 7)).score == pytest.approx(1.0, abs=1e-12)
    # one row: 1
    assert vendi_score(_source(direction[None, :], 1)).score == pytest.approx(1.0, abs=1e-12)
    # k orthogonal directions taken equally often: k, for every order
    basis, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    rows = np.repeat(basis[:, :4].T, 6, axis=0) * 3.0
    for q in (0.5, 1.0, 2.0, 20.0):
        assert vendi_score(_source(rows, 5), q=q).score == pytest.approx(4.0, rel=1e-12)


def test_rows_near_the_ends_of_float64_normalise_like_any_other():
    x = _sets(2, n=40)
    expected = definition(x)
    for scale in (1e-200, 1e200):
        assert _score(x * scale)["vendi"] == pytest.approx(expected, rel=1e-12)


def test_a_row_of_zeros_is_refused_naming_it():
    x = _sets(3)
    x[17] = 0.0
    with pytest.raises(ZeroRowError, match=r"1 row\(s\) of zeros \(first at row 17\)"):
        _score(x, shard_rows=10)


def test_nonfinite_rows_are_refused_or_dropped_and_counted():
    x = _sets(4)
    dirty = x.copy()
    dirty[[2, 50]] = np.inf
    with pytest.raises(se.NonFiniteError, match="rows 2, 50"):
        _score(dirty)
    section = _score(dirty, nonfinite="drop")
    assert section["vendi_nonfinite_dropped"] == 2
    assert section["vendi"] == pytest.approx(definition(np.delete(x, [2, 50], axis=0)), rel=1e-11)


@pytest.mark.parametrize("q", [0, -1.0, math.inf])
def test_an_order_that_is_not_above_zero_is_refused(q):
    with pytest.raises((MetricOptionError, OptionError), match="q"):
        _score(_sets(5), q=q)


def test_needs_no_reference_and_refuses_statistics():
    from shardeval.pipeline.metrics import METRICS

    assert METRICS["vendi"].needs_reference is False
    x = _sets(6)
    report = se.metrics(None, x, "vendi")
    assert float(report) == pytest.approx(definition(x), rel=1e-11)


def test_the_state_is_registered_so_the_law_test_covers_it():
    assert UnitSecondMoment in registered_states()
