"""C_T (Meehan, Chaudhuri & Dasgupta 2020) against a float64 numpy/scipy transcription of its
definition (dgm-eval's choices) given the same cells, whatever the shards and blocks; a known
copying case and a known non-copying case; hostile inputs; and every route to it."""

import json

import dask.array as da
import numpy as np
import pytest
from scipy.stats import mannwhitneyu, norm, rankdata, tiecorrect

import shardeval as se
from shardeval.kernels.distances import nearest_reference
from shardeval.pipeline.errors import NumericalError, OptionError, ShapeError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.memorization.copying import ct_from, data_copying, z_u
from shardeval.pipeline.pairwise.nearest import nearest_rows
from shardeval.workflows.cli import main


def ct_reference(train, test, gen, centres, *, tau_rows=20, ties=False, neighbours="cell"):
    """C_T in float64 from the definition: cells by the nearest centre, L by brute force
    (within the cell, or over all of T), U from scipy, Z_U as dgm-eval scores it
    ((U − nm/2 + ½)/σ, σ² = nm(n+m+1)/12, times scipy's tie correction with ``ties``)."""

    def cell(x):
        return np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)

    def distances(x, t):
        return np.sqrt(((x[:, None, :] - t[None]) ** 2).sum(axis=2)).min(axis=1)

    ct_, cp, cq = cell(train), cell(test), cell(gen)
    k = centres.shape[0]
    zs, weights = np.zeros(k), np.zeros(k)
    for c in range(k):
        p, q = test[cp == c], gen[cq == c]
        if len(q) <= tau_rows:
            continue
        t = train[ct_ == c] if neighbours == "cell" else train
        lp, lq = distances(p, t), distances(q, t)
        n, m = len(lp), len(lq)
        u = mannwhitneyu(lq, lp, alternative="less").statistic
        sd = np.sqrt(n * m * (n + m + 1) / 12)
        if ties:
            sd *= np.sqrt(tiecorrect(rankdata(np.concatenate([lq, lp]))))
        zs[c] = (u - (n * m / 2 - 0.5)) / sd
        weights[c] = n / len(test)
    kept = weights > 0
    return float(weights[kept] @ zs[kept] / weights[kept].sum()), zs


def _source(x, name, rng):
    """``x`` as a source cut into shards of random sizes."""
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=rng.integers(0, 5), replace=False))
    sizes = tuple(np.diff([0, *cuts, len(x)]).tolist())
    return FeatureSource(name, da.from_array(x, chunks=(sizes, x.shape[1])))


def _sets(seed, d=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centre = np.array([[0.0] * d, [4.0] * d, [-4.0, 4.0] + [0.0] * (d - 2)])
    train = np.concatenate([c + rng.normal(size=(120, d)) for c in centre])
    test = np.concatenate([c + rng.normal(size=(90, d)) for c in centre])
    gen = np.concatenate([c + 1.1 * rng.normal(size=(100, d)) for c in centre])
    gen[:40] = train[rng.choice(len(train), 40)] + 0.05 * rng.normal(size=(40, d))  # some copies
    return train.astype(dtype), test.astype(dtype), gen.astype(dtype)


@pytest.mark.parametrize("neighbours", ["cell", "all"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ct_equals_the_float64_definition_whatever_the_shards(seed, neighbours):
    train, test, gen = _sets(seed)
    rng = np.random.default_rng(100 + seed)
    results = []
    for _ in range(3):
        sources = [_source(x, n, rng) for x, n in ((train, "t"), (test, "p"), (gen, "q"))]
        block_rows = int(rng.integers(7, 200))
        results.append(
            data_copying(*sources, block_rows=block_rows, neighbours=neighbours, device="cpu")
        )
    first = results[0]
    for other in results[1:]:  # exact: the same cells, distances and ranks whatever the cut
        assert other.ct == first.ct
        np.testing.assert_array_equal(other.zu, first.zu)
        np.testing.assert_array_equal(other.centres, first.centres)
    ct, zs = ct_reference(train, test, gen, first.centres, neighbours=neighbours)
    assert first.ct == pytest.approx(ct, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(first.zu, zs, rtol=1e-12, atol=1e-12)
    assert first.kept.all()
    assert first.cells == 3
    assert first.gen_rows.sum() == len(gen)
    assert first.test_rows.sum() == len(test)
    assert (first.cross_cell is None) == (neighbours == "cell")


def test_ct_of_fp32_rows_equals_the_definition_on_those_rows():
    train, test, gen = _sets(5, d=6, dtype=np.float32)
    rng = np.random.default_rng(5)
    sources = [_source(x, n, rng) for x, n in ((train, "t"), (test, "p"), (gen, "q"))]
    got = data_copying(*sources, device="cpu", block_rows=50)
    wide = [x.astype(np.float64) for x in (train, test, gen)]
    ct, _ = ct_reference(*wide, got.centres)
    assert got.ct == pytest.approx(ct, rel=1e-12)


def test_the_tie_correction_is_scipys():
    # generated rows that are exact copies: many distances of 0, tied
    rng = np.random.default_rng(3)
    train = rng.normal(size=(200, 3))
    test = rng.normal(size=(150, 3))
    gen = np.concatenate([train[:60], train[:30], rng.normal(size=(60, 3))])
    plain = data_copying(*(_source(x, "x", rng) for x in (train, test, gen)), device="cpu")
    tied = data_copying(
        *(_source(x, "x", rng) for x in (train, test, gen)), ties=True, device="cpu"
    )
    ct, _ = ct_reference(train, test, gen, tied.centres, ties=True)
    assert tied.ct == pytest.approx(ct, rel=1e-12)
    assert ct_reference(train, test, gen, plain.centres)[0] == pytest.approx(plain.ct, rel=1e-12)
    assert tied.ct < plain.ct < -3  # the ties shrink the variance: a larger |Z|


def test_z_u_is_scipys_asymptotic_z():
    rng = np.random.default_rng(4)
    lp, lq = rng.random(40), rng.random(55) * 0.9
    lq[:10] = lp[:10]  # ties across the samples
    # scipy's p-value for "less" with the continuity correction is Φ(Z_U) (ties corrected)
    p = mannwhitneyu(lq, lp, alternative="less", method="asymptotic").pvalue
    assert z_u(lp**2, lq**2, ties=True) == pytest.approx(norm.ppf(p), rel=1e-10)
    with pytest.raises(NumericalError, match="zero variance"):
        z_u(np.zeros(3), np.zeros(4), ties=True)


def test_cells_with_too_few_generated_rows_are_skipped():
    rng = np.random.default_rng(6)
    test_sq, gen_sq = rng.random(90), rng.random(45)
    test_cell = np.repeat([0, 1, 2], 30)
    gen_cell = np.array([0] * 21 + [1] * 20 + [2] * 4)  # 21 > 20 kept; 20 and 4 skipped
    r = ct_from(test_sq, test_cell, gen_sq, gen_cell, np.arange(9) % 3, cells=3)
    assert r.kept.tolist() == [True, False, False]
    assert r.zu[1] == r.zu[2] == 0.0
    assert r.ct == r.zu[0] == z_u(test_sq[:30], gen_sq[:21])
    lower = ct_from(test_sq, test_cell, gen_sq, gen_cell, np.arange(9) % 3, cells=3, tau_rows=4)
    assert lower.kept.tolist() == [True, True, False]
    weights = np.array([30, 30]) / 90
    expected = weights @ lower.zu[:2] / weights.sum()
    assert lower.ct == pytest.approx(expected, rel=1e-15)


def test_copies_of_training_rows_give_a_strongly_negative_ct():
    rng = np.random.default_rng(8)
    train, test = rng.normal(size=(1000, 8)), rng.normal(size=(800, 8))
    copies = train[rng.choice(1000, 600)] + 0.02 * rng.normal(size=(600, 8))
    r = se.ct(train, test, copies)
    assert float(r) < -15  # measured: -18.4
    fresh = se.ct(train, test, rng.normal(size=(600, 8)))
    assert abs(float(fresh)) < 3  # measured: -0.24
    # a model that under-fits (too wide) lies farther from the training rows: C_T > 0
    wide = se.ct(train, test, 1.5 * rng.normal(size=(600, 8)))
    assert float(wide) > 3  # measured: 11.9


def test_nearest_rows_are_exact_whatever_the_blocks():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(120, 5)) * 1e3 + 7e3
    y = np.concatenate([x[:10], rng.normal(size=(50, 5)) * 1e3 + 7e3])
    sq, index = nearest_reference(x, y)
    for _ in range(3):
        (got,) = nearest_rows(
            _source(x, "x", rng), [_source(y, "y", rng)], block_rows=int(rng.integers(5, 90))
        )
        np.testing.assert_array_equal(got.index, index)
        np.testing.assert_allclose(got.sq, sq, rtol=1e-12)
        assert (got.sq[:10] == 0).all()


def test_hostile_inputs_are_named():
    rng = np.random.default_rng(10)
    train, test, gen = rng.normal(size=(50, 3)), rng.normal(size=(60, 3)), rng.normal(size=(70, 3))
    with pytest.raises(ShapeError, match="d=2"):
        se.ct(train, test[:, :2], gen)
    with pytest.raises(ShapeError, match=r"cells=5 cells.*has 4 row"):
        data_copying(*(_source(x, "x", rng) for x in (train[:4], test, gen)), cells=5)
    with pytest.raises(ShapeError, match="keeps none"):
        se.ct(train, test, gen, tau_rows=70)
    with pytest.raises(ShapeError, match="hold no test row"):
        se.ct(train, test[:2], gen, cells=10)
    with pytest.raises(OptionError, match="give test"):
        se.metrics(train, gen, "ct")
    with pytest.raises(OptionError, match="test applies to ct"):
        se.metrics(train, gen, "fid", test=test)
    with pytest.raises(ValueError, match="neighbours"):
        data_copying(*(_source(x, "x", rng) for x in (train, test, gen)), neighbours="some")


def test_hostile_inputs_are_one_line_at_the_command_line(tmp_path, capsys):
    rng = np.random.default_rng(11)
    paths = {}
    for name, shape in (("t", (50, 3)), ("p", (60, 3)), ("q", (70, 3)), ("p2", (60, 2))):
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], rng.normal(size=shape))
    cases = [
        ["ct", paths["t"], paths["p2"], paths["q"]],
        ["ct", paths["t"], paths["p"], paths["q"], "--cells", "51"],
        ["ct", paths["t"], paths["p"], paths["q"], "--tau-rows", "70"],
        ["metrics", "--metrics", "ct", paths["t"], paths["q"]],
        ["metrics", "--metrics", "kid", "--test", paths["p"], paths["t"], paths["q"]],
    ]
    expected = ["d=2", "«cells", "keeps none", "give --test", "--test applies to ct"]
    for argv, words in zip(cases, expected, strict=True):
        capsys.readouterr()
        assert main([*argv, "-q"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert words.replace("«", "--") in err, err


def test_every_route_gives_one_section(tmp_path, capsys):
    rng = np.random.default_rng(12)
    train, test = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    gen = np.concatenate([train[:60] + 0.01 * rng.normal(size=(60, 4)), rng.normal(size=(140, 4))])
    paths = []
    for name, x in (("train", train), ("test", test), ("gen", gen)):
        paths.append(str(tmp_path / f"{name}.npy"))
        np.save(paths[-1], x)
    python = se.ct(*paths, cells=4, ties=True).to_dict()
    listed = se.metrics(paths[0], paths[2], "ct", test=paths[1], cells=4, ties=True).to_dict()
    capsys.readouterr()
    assert main(["ct", *paths, "--cells", "4", "--ties", "--json", "-q"]) == 0
    command = json.loads(capsys.readouterr().out)
    argv = ["metrics", "--metrics", "ct", "--test", paths[1], paths[0], paths[2]]
    assert main([*argv, "--cells", "4", "--ties", "--json", "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert python["ct"] == listed["ct"] == command["ct"] == metrics["ct"]
    assert python["options"]["ct"] == command["options"]["ct"]
    assert set(python["inputs"]) == {"real", "gen", "test"}
    assert python["inputs"]["test"]["source"] == paths[1]
    ct, _zs = ct_reference(train, test, gen, _centres(train, 4, 0), ties=True)
    assert python["ct"]["ct"] == pytest.approx(ct, rel=1e-12)
    assert python["ct"]["ct_n_test"] == 200
    assert python["ct"]["ct_cells_kept"] == 4


def _centres(train, cells, seed):
    """The centres k-means finds for C_T (its sample and seeding), for the reference."""
    rng = np.random.default_rng(seed)
    return data_copying(
        *(_source(x, "x", rng) for x in (train, train, train)), cells=cells, seed=seed, tau_rows=0
    ).centres


def test_routes_without_a_test_set_refuse_ct(tmp_path):
    from shardeval.workflows.jobs import JobError, load_job

    with pytest.raises(OptionError, match="metrics"):
        se.RowMetrics(("ct",))
    for name in ("t", "g"):
        np.save(tmp_path / f"{name}.npy", np.zeros((30, 2)))
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nname = "j"\nhistory = "h.zarr"\n[reference]\nstore = "t.npy"\n'
        '[[entries]]\nname = "g"\nstore = "g.npy"\nstep = 1\n[metrics.ct]\n'
    )
    # A job takes one in its [reference] (tests/workflows/test_job_heldout.py), and says so.
    with pytest.raises(JobError, match=r"reference.test: ct compares .* give 'test' in \[refer"):
        load_job(job)
