"""FLD against a dense torch float64 transcription of the authors' mixture fit (autograd and
torch.optim.Adam, every distance by explicit differences), given the same permutations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.memorization.fld import fit_mixture, fld, standardise


def _reference_fit(
    centres: np.ndarray, x: np.ndarray, order: np.ndarray, batch: int = 10_000, epochs: int = 50
) -> tuple[np.ndarray, float]:
    """The paper's fit as its code runs it, in float64: log-variances start at the log of
    (nearest squared distance + 1e-3)/d, an origin component at the rows' mean (distances
    × 0.81, weight 1) joins the log-sum-exp, Adam at 0.5, clamp to [-40, 20] after a step."""
    mus = torch.tensor(centres)
    xs = torch.tensor(x)[torch.tensor(order)]
    m, d = mus.shape
    dists = ((xs[:, None, :] - mus[None, :, :]) ** 2).sum(-1)
    log_var = ((dists.min(dim=0).values + 1e-3) / d).log().requires_grad_(True)
    origin = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    centre = torch.tensor(x).mean(dim=0)
    opt = torch.optim.Adam([log_var, origin], lr=0.5)
    for _ in range(epochs):
        for i in range(0, xs.shape[0], batch):
            opt.zero_grad()
            dist = dists[i : i + batch]
            pair = -0.5 * dist / log_var.exp() - 0.5 * d * log_var - 0.5 * d * math.log(2 * math.pi)
            od = 0.81 * ((xs[i : i + batch] - centre) ** 2).sum(-1, keepdim=True)
            org = -0.5 * od / origin.exp() - 0.5 * d * origin - 0.5 * d * math.log(2 * math.pi)
            lls = torch.logsumexp(torch.cat([pair - math.log(m), org], dim=1), dim=1)
            loss = -lls.mean() / d
            loss.backward()
            opt.step()
            with torch.no_grad():
                log_var.clamp_(-40, 20)
    return log_var.detach().numpy(), float(origin.detach())


def _reference_nll(centres: np.ndarray, log_var: np.ndarray, x: np.ndarray) -> float:
    mus, s, xs = torch.tensor(centres), torch.tensor(log_var), torch.tensor(x)
    m, d = mus.shape
    dist = ((xs[:, None, :] - mus[None, :, :]) ** 2).sum(-1)
    pair = -0.5 * dist / s.exp() - 0.5 * d * s - 0.5 * d * math.log(2 * math.pi)
    return float(-torch.logsumexp(pair - math.log(m), dim=1).mean() / d)


@pytest.mark.parametrize(("rows", "batch"), [(300, 10_000), (300, 64), (257, 100)])
def test_fit_follows_the_reference_step_by_step(rows: int, batch: int) -> None:
    rng = np.random.default_rng(rows + batch)
    d = 6
    centres = rng.normal(size=(40, d)) * 1.2 + 0.3
    x = rng.normal(size=(rows, d))
    order = rng.permutation(rows)
    want, want_origin = _reference_fit(centres, x, order, batch=batch)
    got = fit_mixture(centres, x, order, batch_rows=batch)
    np.testing.assert_allclose(got.log_var, want, rtol=1e-9, atol=1e-9)
    assert got.origin_log_var == pytest.approx(want_origin, rel=1e-9, abs=1e-9)
    assert got.nll(x) == pytest.approx(_reference_nll(centres, want, x), rel=1e-12)


def test_recomputed_distances_give_the_cached_fit() -> None:
    rng = np.random.default_rng(3)
    centres, x = rng.normal(size=(30, 5)), rng.normal(size=(200, 5))
    order = rng.permutation(200)
    kept = fit_mixture(centres, x, order, batch_rows=64)
    redone = fit_mixture(centres, x, order, batch_rows=64, cache_bytes=0)
    np.testing.assert_array_equal(kept.log_var, redone.log_var)


def test_fld_is_the_reference_formula() -> None:
    """FLD = 100·(test NLL under the generated mixture − test NLL under a mixture on half the
    training rows fitted to the other half), both after standardising by the test set."""
    rng = np.random.default_rng(5)
    d = 5
    train, test = rng.normal(size=(240, d)) * 2 + 1, rng.normal(size=(150, d)) * 2 + 1
    gen = rng.normal(size=(90, d)) * 2.4 + 1.2
    got = fld(train, test, gen, seed=11)
    z_test, z_train, z_gen = standardise(test, train, gen)
    np.testing.assert_allclose(z_test.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z_test.std(0, ddof=1), 1, rtol=1e-12)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(11).spawn(4)]
    s_gen, _ = _reference_fit(z_gen, z_train, streams[1].permutation(240))
    perm = streams[2].permutation(240)
    half = z_train[perm[:90]]
    rest = z_train[perm[90:]]
    s_base, _ = _reference_fit(half, rest, streams[3].permutation(150))
    nll_gen = _reference_nll(z_gen, s_gen, z_test)
    nll_base = _reference_nll(half, s_base, z_test)
    assert got.nll_test == pytest.approx(nll_gen, rel=1e-9)
    assert got.baseline_nll == pytest.approx(nll_base, rel=1e-9)
    assert got.fld == pytest.approx(100 * (nll_gen - nll_base), rel=1e-7, abs=1e-7)
    gap = fld(train, test, gen, seed=11, evaluate="gap")
    assert gap.baseline_nll is None
    assert gap.fld == pytest.approx(
        100 * (_reference_nll(z_gen, s_gen, z_train) - nll_gen), rel=1e-7
    )


def test_generated_sample_is_seeded_and_only_above_gen_rows() -> None:
    rng = np.random.default_rng(8)
    train, test, gen = (rng.normal(size=(n, 3)) for n in (120, 80, 60))
    whole = fld(train, test, gen, gen_rows=60)
    assert whole.centres == 60
    assert whole.n_gen == 60
    part = fld(train, test, gen, gen_rows=25, seed=4)
    assert part.centres == 25
    assert part.n_gen == 60
    assert part.fld == fld(train, test, gen, gen_rows=25, seed=4).fld
    assert part.fld != fld(train, test, gen, gen_rows=25, seed=5).fld


def test_copies_of_the_training_set_score_far_worse_than_fresh_rows() -> None:
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(400, 4)), rng.normal(size=(200, 4))
    fresh = fld(train, test, rng.normal(size=(200, 4)))
    copies = fld(train, test, train[:200] + 1e-4)
    assert abs(fresh.fld) < 5
    assert copies.fld > 1_000
    assert fld(train, test, train[:200] + 1e-4, evaluate="gap").fld < -1_000


def test_hostile_inputs_are_refused_in_one_line() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(30, 4))
    with pytest.raises(ShapeError, match="different feature dimensions"):
        fld(a, a, rng.normal(size=(30, 5)))
    with pytest.raises(ShapeError, match="at least 2 test rows, got 1"):
        fld(a, a[:1], a)
    with pytest.raises(ShapeError, match="at least 1 generated rows, got 0"):
        fld(a, a, a[:0])
    flat = a.copy()
    flat[:, 2] = 7.0
    with pytest.raises(NumericalError, match="feature 2 is constant over the test set"):
        fld(a, flat, a)
    bad = a.copy()
    bad[4, 1] = np.nan
    with pytest.raises(NumericalError, match=r"generated set has a non-finite value \(row 4\)"):
        fld(a, a, bad)
