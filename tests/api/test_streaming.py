"""Training-loop metrics in one process.

FID: equal to ``se.fid`` on the concatenated rows and to the float64 definition, whatever the
batches, their order and the merges (hypothesis); its running state follows the registered
``Moments.merge``; every form of reference; state dicts that resume and are checked; reset;
errors that name the batch; sides of no more rows than features against the float64
definition. Pair metrics: the same bits as ``se.kid``/``se.cmmd``/``se.prdc`` on the concatenated
rows, and a float64 brute force of the definitions; merges, references, work folders, errors,
copies and pickles. Merges refused across references (by their values), settings and how the
rows were made. Image batches go through the (random-weights) Inception.
"""

import functools
import io
import itertools
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import shardeval as se
import shardeval.api.streaming as streaming
from shardeval.api.streaming import fid as fid_module
from shardeval.api.streaming import running as running_module
from shardeval.api.streaming import spill
from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import (
    DtypeError,
    EngineError,
    NonFiniteError,
    NumericalError,
    OptionError,
    ShapeError,
    StatsFormatError,
    ZeroRowError,
)
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.io.statsio import save_stats
from shardeval.pipeline.metrics.base import MetricOptionError
from tests.conftest import write_zarr
from tests.reference import exact_fid, np_stats


def _sets(rng, d=12, n_real=700, n_gen=500, offset=0.0, dtype=np.float32):
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    real = rng.standard_normal((n_real, d)) @ a + offset
    gen = rng.standard_normal((n_gen, d)) @ (1.3 * a) + offset + 0.2
    return real.astype(dtype), gen.astype(dtype)


def _batches(x, sizes):
    """``x`` cut into batches of ``sizes`` rows, and the rest."""
    bounds = [0, *itertools.accumulate(sizes)]
    return [x[lo:hi] for lo, hi in itertools.pairwise(bounds)] + [x[bounds[-1] :]]


def _rel(a, b):
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------------------------------------
# FID


@pytest.mark.parametrize(
    ("offset", "precision", "tol"), [(0.0, "fp32", 1e-6), (1e3, "fp32", 1e-5), (1e3, "fp64", 1e-10)]
)
def test_fid_equals_the_one_shot_api_and_the_float64_definition(rng, offset, precision, tol):
    real, gen = _sets(rng, offset=offset)
    fid = se.FID(precision=precision)
    for batch in _batches(real, [64, 1, 200, 0, 33]):
        fid.update(torch.from_numpy(batch), real=True)
    for batch in _batches(gen, [100, 7, 250]):
        fid.update(batch)  # numpy rows too
    report = fid.compute()
    once = se.fid(real, gen, precision=precision)
    assert _rel(float(report), float(once)) < tol
    assert _rel(float(report), exact_fid(*np_stats(real), *np_stats(gen))) < tol
    # The report of se.fid, for rows fed in batches.
    got, want = report.to_dict(), once.to_dict()
    assert set(got) - set(want) == {"processes"}
    assert not set(want) - set(got)
    assert (got["fid"]["fid_n_real"], got["fid"]["fid_n"], got["processes"]) == (700, 500, 1)
    assert (got["inputs"]["real"]["shape"], got["inputs"]["gen"]["shape"]) == ([700, 12], [500, 12])
    # the batches
    assert (got["inputs"]["real"]["shards"], got["inputs"]["gen"]["shards"]) == (6, 4)
    assert got["inputs"]["gen"]["source"] == "update(x) batches"
    assert got["settings"]["precision"] == precision
    assert report["fid"]["fid"] == float(report) == got["fid"]["fid"]
    assert report.summary().startswith("FID ")


def test_the_running_state_follows_the_registered_merge():
    """The in-place update on the device is Chan's merge, as Moments.merge (a registered
    state, law-tested) takes it: batch by batch the same state to rounding."""
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((300, 5)) * [1.0, 10.0, 0.1, 3.0, 1.0] + [1e3, -2.0, 0.0, 5.0, 1e-3]
    running = running_module._RunningMoments()
    expected = Moments.empty(5)
    for batch in _batches(rows, [1, 40, 0, 100, 7]):
        m = Moments.from_rows(batch)
        running.add(m.n, torch.tensor(m.mean), torch.tensor(m.m2))
        expected = expected.merge(m)
        got = running.rows(5).moments
        assert got.n == expected.n
        np.testing.assert_allclose(got.mean, expected.mean, rtol=1e-15, atol=0)
        np.testing.assert_allclose(got.m2, expected.m2, rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(got.m2, got.m2.T)  # exactly symmetric


def test_batches_gather_in_a_bounded_buffer(monkeypatch):
    """Batches below, at and above the buffer's rows, of dtypes that switch the buffer: every
    row is reduced once."""
    monkeypatch.setattr(running_module, "BUFFER_BYTES", 16 * 5 * 4)  # 16 float32 rows at d = 5
    rows = np.random.default_rng(3).integers(-50, 50, (300, 5))
    fid = se.FID()
    for i, batch in enumerate(_batches(rows, [1, 40, 0, 7, 15, 16, 3, 100, 8])):
        fid.update(batch.astype(np.float64 if i % 3 else np.int16))
    state, expected = fid.state_dict(), Moments.from_rows(rows)
    assert (state["gen.n"], state["gen.batches"]) == (300, 10)
    # fp32 products for the int16 batches: 1e-7 of the spread (a row lost or counted twice
    # would move the mean by 0.1, the co-moment by hundreds).
    np.testing.assert_allclose(state["gen.mean"].numpy(), expected.mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(state["gen.m2"].numpy(), expected.m2, rtol=1e-6, atol=0.1)


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 300), min_size=1, max_size=8),
    owners=st.lists(st.integers(0, 3), min_size=9, max_size=9),
    order=st.permutations(range(4)),
    batch_order=st.randoms(use_true_random=False),
)
def test_any_partition_update_order_and_merge_order_give_the_same_fid(
    cuts, owners, order, batch_order
):
    rng = np.random.default_rng(7)
    real, gen = _sets(rng, d=6, n_real=300, n_gen=300, dtype=np.float64)
    bounds = [0, *sorted(cuts), 300]
    one = se.FID()
    one.update(real, real=True)
    one.update(gen)
    parts = [se.FID() for _ in range(4)]
    pieces = [
        (owner, lo, hi) for owner, (lo, hi) in zip(owners, itertools.pairwise(bounds), strict=False)
    ]
    batch_order.shuffle(pieces)  # the batches reach the FIDs in any order
    for owner, lo, hi in pieces:
        parts[owner].update(real[lo:hi], real=True)
        parts[3 - owner].update(gen[lo:hi])
    merged = functools.reduce(lambda a, b: a.merge(b), [parts[i] for i in order])
    assert _rel(float(merged.compute()), float(one.compute())) < 1e-12
    assert merged.compute().to_dict()["fid"]["fid_n"] == 300


def test_every_kind_of_reference_gives_the_same_fid(rng, tmp_path):
    real, gen = _sets(rng)
    moments = Moments.from_rows(real)
    references = {
        "moments": moments,
        "gaussian": Gaussian.from_moments(moments),
        "bare gaussian": Gaussian(moments.mean, moments.covariance(), None),
        "stats.npz": save_stats(str(tmp_path / "stats.npz"), moments),
        "stats.zarr": save_stats(str(tmp_path / "stats.zarr"), moments),
        "store": write_zarr(tmp_path / "real.zarr", real, chunk_rows=100),
        "array": real,
    }
    expected = float(se.fid(real, gen))
    for name, reference in references.items():
        fid = se.FID(reference)
        fid.update(gen)
        report = fid.compute()
        assert _rel(float(report), expected) < 1e-6, name
        n_real = report.to_dict()["fid"]["fid_n_real"]
        assert n_real == (None if name == "bare gaussian" else 700), name
        kind = "features" if name in ("store", "array") else "statistics"
        assert report.to_dict()["inputs"]["real"]["kind"] == kind, name
        with pytest.raises(OptionError, match="reference was given up front"):
            fid.update(real, real=True)


def test_state_dict_round_trip_resumes(rng):
    real, gen = _sets(rng, dtype=np.float64)
    whole = se.FID()
    whole.update(real, real=True)
    for batch in _batches(gen, [120, 80]):
        whole.update(batch)

    first = se.FID()
    first.update(real, real=True)
    first.update(gen[:120])
    state = first.state_dict()
    assert (state["format"], state["format_version"]) == (fid_module.STATE_FORMAT, 1)
    assert state["gen.n"] == 120
    assert state["gen.m2"].shape == (12, 12)
    # A checkpoint through torch.save / torch.load (weights_only: PyTorch's default).
    buffer = io.BytesIO()
    torch.save({"fid": state}, buffer)
    buffer.seek(0)
    resumed = se.FID()
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["fid"])
    assert float(resumed.compute()) == float(first.compute())
    resumed.update(gen[120:])
    assert _rel(float(resumed.compute()), float(whole.compute())) < 1e-12
    inputs = resumed.compute().to_dict()["inputs"]
    assert (inputs["real"]["shards"], inputs["gen"]["shards"]) == (1, 2)
    # numpy arrays are read too.
    again = se.FID()
    again.load_state_dict({k: v.numpy() if torch.is_tensor(v) else v for k, v in state.items()})
    assert float(again.compute()) == float(first.compute())

    # A reference given up front travels with the state, as it was given.
    for count in (None, 700):
        gaussian = Gaussian(real.mean(axis=0), np.cov(real, rowvar=False), count, "ref")
        given = se.FID(gaussian)
        given.update(gen)
        copy = se.FID()
        copy.load_state_dict(given.state_dict())
        assert float(copy.compute()) == float(given.compute())
        assert copy.compute().to_dict()["fid"]["fid_n_real"] == count
        copy.merge(given)  # the same reference: they merge
        with pytest.raises(OptionError, match="given up front"):
            copy.update(real, real=True)
    with pytest.raises(OptionError, match="different references"):
        se.FID(Moments.from_rows(real)).merge(given)


def test_bad_state_dicts_are_refused(rng):
    real, _ = _sets(rng)
    fid = se.FID()
    fid.update(real, real=True)
    state = fid.state_dict()
    cases = {
        "format": {"mean": 1},
        "newer shardeval": {**state, "format_version": 2},
        r"lacks 'real\.m2'": {k: v for k, v in state.items() if k != "real.m2"},
        r"'gen\.n' is -1": {**state, "gen.n": -1},
        "expected \\(d,\\) and \\(d, d\\)": {**state, "real.mean": torch.zeros(3)},
        "NaN or inf": {**state, "real.m2": state["real.m2"] * np.nan},
        "not symmetric": {**state, "real.m2": torch.triu(state["real.m2"])},
        "different d": {**state, "gen.n": 3, "gen.mean": torch.zeros(4), "gen.m2": torch.eye(4)},
    }
    for message, broken in cases.items():
        with pytest.raises(StatsFormatError, match=message):
            se.FID().load_state_dict(broken)


def test_reset_keeps_what_it_should(rng):
    real, gen = _sets(rng)
    fid = se.FID(reset_real=False)
    fid.update(real, real=True)
    fid.update(gen)
    value = float(fid.compute())
    fid.reset()
    with pytest.raises(ShapeError, match="at least 2 generated rows"):
        fid.compute()
    fid.update(gen)
    assert float(fid.compute()) == pytest.approx(value, rel=1e-12)
    fid = se.FID()
    fid.update(real, real=True)
    fid.reset()
    with pytest.raises(OptionError, match="no reference"):
        fid.compute()
    fid.update(gen[:, :5], real=True)  # d is forgotten with the rows
    # Real rows kept across a reset, still in the buffer (never computed): d stays theirs.
    fid = se.FID(reset_real=False)
    fid.update(real, real=True)
    fid.reset()
    assert repr(fid).startswith(f"FID(real={len(real)} rows, gen=0 rows, d={real.shape[1]}")
    with pytest.raises(ShapeError):
        fid.update(gen[:, :5])


def test_wrong_inputs_are_errors_that_name_them(rng):
    real, gen = _sets(rng)
    fid = se.FID(Moments.from_rows(real))
    with pytest.raises(ShapeError, match="d=5 features per row"):
        fid.update(gen[:, :5])
    with pytest.raises(ShapeError, match="2-D features"):
        fid.update(gen[None])
    with pytest.raises(DtypeError, match=r"torch\.Tensor or a numpy array"):
        fid.update(gen.tolist())
    with pytest.raises(DtypeError, match="dtype bool"):
        fid.update(gen > 0)
    with pytest.raises(NumericalError, match="beyond 2"):
        fid.update(np.full((2, 12), 2**60, dtype=np.int64))
    bad = gen.copy()
    bad[[3, 9]] = np.nan
    with pytest.raises(NonFiniteError, match=r"call 6 \(gen\) has 2 row\(s\).*rows 3, 9"):
        fid.update(bad)
    dropping = se.FID(Moments.from_rows(real), nonfinite="drop")
    dropping.update(bad)
    report = dropping.compute().to_dict()
    assert (report["fid"]["fid_n"], report["fid"]["fid_nonfinite_dropped"]) == (498, 2)
    with pytest.raises(MetricOptionError, match="nonfinite"):
        se.FID(nonfinite="skip")
    with pytest.raises(OptionError, match="device"):
        se.FID(device="gpu!")
    with pytest.raises(EngineError, match="init_process_group"):
        fid.sync()
    with pytest.raises(DtypeError, match=r"values in \[-0.5"):
        fid.update(torch.full((1, 3, 8, 8), -0.5))
    with pytest.raises(ShapeError, match="channels-last"):
        fid.update(torch.zeros((1, 8, 8, 3), dtype=torch.uint8))
    with pytest.raises(OptionError, match="takes an FID"):
        fid.merge(se.KID())
    one = se.FID(Moments.from_rows(real))
    one.update(gen[:1])
    with pytest.raises(ShapeError, match="at least 2"):
        one.compute()


# ---------------------------------------------------------------------------------------------
# images


@pytest.fixture
def cheap_network(monkeypatch):
    """The Inception's weights are found, checked and loaded as always, and its preprocessing
    runs; its network is replaced by pooling (the encoder is tested against pytorch-fid
    elsewhere, and seconds per image on a CPU are better spent there)."""
    from shardeval.kernels.encoders import Encoder

    def forward(self, batch):
        pooled = torch.nn.functional.adaptive_avg_pool2d(batch, (26, 27))
        return pooled.flatten(1)[:, :2048].to(torch.float32)

    monkeypatch.setattr(Encoder, "forward", forward)


def test_images_give_the_features_of_their_encoder(weights, cheap_network, tmp_path, rng):
    pixels = torch.from_numpy(rng.integers(0, 256, (3, 3, 37, 45), dtype=np.uint8))
    by_images = se.FID(weights=weights, batch_size=2)
    by_images.update(pixels)
    # Floats in [0, 1] are the same images (k / 255 quantises back to k); a pair metric spills
    # the encoder's rows, which as features give the FID of the images.
    with se.KID(weights=weights) as kid:
        kid.update(pixels.float() / 255)
        (rows,) = kid._spills["gen"].chunks()
    assert rows.shape == (3, 2048)
    by_features = se.FID()
    by_features.update(rows)
    want, got = by_features.state_dict(), by_images.state_dict()
    assert got["gen.n"] == 3
    torch.testing.assert_close(got["gen.mean"], want["gen.mean"], rtol=0, atol=0)
    torch.testing.assert_close(got["gen.m2"], want["gen.m2"], rtol=0, atol=0)
    # A reference of another encoder's features is refused before any image is encoded.
    moments = Moments.from_rows(rng.standard_normal((5, 4)))
    path = save_stats(
        str(tmp_path / "dino.zarr"), moments, {"feature_extractor": "dinov2-vitl14/cls"}
    )
    with pytest.raises(OptionError, match="dinov2-vitl14/cls"):
        se.FID(path, weights=weights).update(pixels)


# ---------------------------------------------------------------------------------------------
# pair metrics


@pytest.fixture
def small_spills(monkeypatch):
    """Chunks of 16 rows (at d = 8, float32): every path of the spill buffer is taken."""
    monkeypatch.setattr(spill, "SPILL_CHUNK_BYTES", 16 * 8 * 4)


def _brute_force(x, y, k, pr_k):
    """KID (unbiased), CMMD (V-statistic) and PRDC by their definitions, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = len(x), len(y), x.shape[1]

    def poly(a, b):
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = poly(x, x), poly(y, y), poly(x, y)
    kid = (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )
    ux, uy = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x, y))

    def rbf(a, b):
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * 10.0**2))

    cmmd = 1000 * (rbf(ux, ux).mean() + rbf(uy, uy).mean() - 2 * rbf(ux, uy).mean())
    dxx, dyy, dxy = cdist(x, x), cdist(y, y), cdist(x, y)
    rx = {j: np.sort(dxx, axis=1)[:, j] for j in (k, pr_k)}  # column 0: the row itself
    ry = np.sort(dyy, axis=1)[:, pr_k]
    prdc = {
        "precision": (dxy <= rx[pr_k][:, None]).any(axis=0).mean(),
        "recall": (dxy <= ry[None, :]).any(axis=1).mean(),
        "density": (dxy < rx[k][:, None]).sum() / (k * n),
        "coverage": (dxy < rx[k][:, None]).any(axis=1).mean(),
    }
    return kid, cmmd, prdc


def _feed(metric, real, gen, real_sizes=(5, 16, 40, 0, 100), gen_sizes=(17, 16, 1)):
    for batch in _batches(real, real_sizes):
        metric.update(torch.from_numpy(batch), real=True)
    for batch in _batches(gen, gen_sizes):
        metric.update(batch)


def test_pair_metrics_equal_the_one_shot_api_and_the_definitions(rng, small_spills):
    real, gen = _sets(rng, d=8, n_real=230, n_gen=170, offset=2.0)
    options = {"k": 3, "pr_k": 2, "shard_rows": 48}
    with se.PairMetrics(**options) as pm:
        _feed(pm, real, gen)
        report = pm.compute()
        assert pm.compute()["kid"] == report["kid"]  # the same rows read again
    # The same bits as the one-shot functions on the concatenated rows.
    once = {
        "kid": se.kid(real, gen, shard_rows=48),
        "cmmd": se.cmmd(real, gen, shard_rows=48),
        "prdc": se.prdc(real, gen, shard_rows=48, k=3, pr_k=2),
    }
    for name, one in once.items():
        assert report[name] == one[name], name
        assert report.to_dict()[name] == one.to_dict()[name], name
    assert float(report) == float(once["kid"])
    assert report.to_dict()["metric"] == "kid,cmmd,prdc"
    assert report.to_dict()["processes"] == 1
    assert report.to_dict()["inputs"]["gen"]["shape"] == [170, 8]
    # And the definitions in float64.
    kid, cmmd, prdc = _brute_force(real, gen, 3, 2)
    assert _rel(report["kid"]["kid"], kid) < 1e-9
    assert _rel(report["cmmd"]["cmmd"], cmmd) < 1e-9
    for name, value in prdc.items():
        assert report["prdc"][f"prdc_{name}"] == pytest.approx(value, abs=1e-15), name
    # One metric alone is its function's report, with its headline.
    with se.KID(subsets=3, subset_size=50, seed=1) as kid_subsets:
        _feed(kid_subsets, real, gen)
        by_subsets = kid_subsets.compute()
    assert by_subsets["kid"] == se.kid(real, gen, subsets=3, subset_size=50, seed=1)["kid"]


def test_pair_metrics_merge_reset_and_a_given_reference(rng, tmp_path, small_spills):
    real, gen = _sets(rng, d=8, n_real=230, n_gen=170)
    store = write_zarr(tmp_path / "given.zarr", real, chunk_rows=48)
    expected = se.prdc(store, gen, k=3, pr_k=2, shard_rows=48)["prdc"]
    a = se.PRDC(store, k=3, pr_k=2, shard_rows=48)
    b = se.PRDC(store, k=3, pr_k=2, shard_rows=48)
    a.update(gen[:50])
    b.update(gen[50:])
    assert a.merge(b).compute()["prdc"] == expected
    a.reset()
    with pytest.raises(ShapeError, match="need generated rows"):
        a.compute()
    a.close()
    b.close()
    with pytest.raises(OptionError, match="same metrics"):
        se.KID().merge(se.PRDC())
    with pytest.raises(OptionError, match="same metrics"):
        se.PRDC(k=3).merge(se.PRDC(k=4))


def test_work_folders_are_ours_alone(rng, tmp_path):
    real, gen = _sets(rng, d=8, n_real=50, n_gen=50)
    keep = tmp_path / "work" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("not ours")
    pm = se.KID(work_dir=tmp_path / "work")
    pm.update(real, real=True)
    pm.update(gen)
    assert os.path.dirname(pm.folder) == str(tmp_path / "work")
    assert os.path.isdir(os.path.join(pm.folder, "gen.zarr"))
    assert float(pm.compute()) > 0
    pm.close()
    assert not os.path.exists(pm.folder)
    assert keep.read_text() == "not ours"
    with pytest.raises(OptionError, match="closed"):
        pm.update(gen)
    default = se.CMMD()
    folder = default.folder
    del default
    assert not os.path.exists(folder)  # removed when the object goes


def test_pair_metric_inputs_are_checked(rng, tmp_path):
    real, gen = _sets(rng, d=8, n_real=50, n_gen=50)
    stats = save_stats(str(tmp_path / "s.npz"), Moments.from_rows(real))
    with pytest.raises(OptionError, match="holds statistics"):
        se.KID(stats)
    with pytest.raises(OptionError, match="metrics"):
        se.PairMetrics(("no_such_metric",))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['k'\\]"):
        se.KID(k=3)
    with pytest.raises(
        MetricOptionError, match="option 'k': expected an integer of at least 1, got 0"
    ):
        se.PRDC(k=0)
    with pytest.raises(MetricOptionError, match="applies with"):
        se.KID(seed=3)
    with pytest.raises(OptionError, match="fp32"):
        se.KID(precision="fp32")
    with se.CMMD() as cm:
        zeros = gen.copy()
        zeros[4] = 0
        with pytest.raises(ZeroRowError, match="rows 4"):
            cm.update(zeros)
        bad = gen.copy()
        bad[1, 2] = np.inf
        with pytest.raises(NonFiniteError, match="rows 1"):
            cm.update(bad)
        cm.update(gen.astype(np.float32))
        with pytest.raises(DtypeError, match="dtype='float64'"):
            cm.update(gen.astype(np.float64))
        with pytest.raises(OptionError, match="no reference"):
            cm.compute()
    with se.PRDC(k=2, pr_k=2) as pr:
        pr.update(real, real=True)
        pr.update(gen)
        assert 0 <= float(pr.compute()) <= 1  # the precision, PRDC's headline


# ---------------------------------------------------------------------------------------------
# a side of n <= d takes float64 products


@pytest.mark.parametrize(("n", "d"), [(6, 512), (20, 512), (100, 256)])
def test_fid_of_few_rows_equals_the_float64_definition(n, d):
    """A side of n <= d rows has a singular covariance; fp32 products put their rounding into
    its null space (with them, these sets against themselves gave FID -2.1e-4, -1.8e-4 and
    -3.6e-5). se.fid takes float64 products there; se.FID must give what it gives. (d of
    2,048 behaves alike, at seconds per eigenvalue problem.)"""
    rng = np.random.default_rng(n + d)
    x = (rng.standard_normal((n, d)) + 0.5).astype(np.float32)
    fid = se.FID()
    fid.update(x, real=True)
    fid.update(x)
    scale = 2 * np.trace(np_stats(x)[1])  # tr Σr + tr Σg, which FID = 0 cancels
    for value in (float(fid.compute()), float(se.fid(x, x))):
        assert abs(value) <= 1e-12 * scale
    # Two sets, the rows in batches of any size: the float64 definition on the same rows.
    y = (1.3 * rng.standard_normal((n, d)) + 0.7).astype(np.float32)
    fid = se.FID()
    for batch in _batches(x, [1, n // 3]):
        fid.update(batch, real=True)
    for batch in _batches(y, [n // 2]):
        fid.update(torch.from_numpy(batch))
    got, once = float(fid.compute()), float(se.fid(x, y))
    # Singular covariances leave terms of sqrt(float64 rounding) ~ 1e-8 in any float64
    # method: the definition agrees to that, se.fid on the same rows to rounding.
    want = exact_fid(*np_stats(x), *np_stats(y))
    assert _rel(got, want) < 1e-7
    assert _rel(got, once) < 1e-12
    assert not any("fp32 products" in w for w in fid.compute().to_dict()["warnings"])


def test_rows_beyond_d_go_back_to_the_requested_products(monkeypatch):
    """Rows reduced while the side's count is <= d take float64 products, later ones the
    precision asked for: the kernel sees float64 exactly for the first."""
    import shardeval.kernels

    seen = []
    kernel = shardeval.kernels.shard_moments

    def spy(rows, **options):
        seen.append((len(rows), rows.dtype))
        return kernel(rows, **options)

    monkeypatch.setattr(shardeval.kernels, "shard_moments", spy)
    monkeypatch.setattr(running_module, "BUFFER_BYTES", 4 * 8 * 4)  # 4 float32 rows at d = 8
    rows = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
    fid = se.FID()
    for batch in _batches(rows, [3, 3, 2, 10]):
        fid.update(batch)
    fid.state_dict()
    # Counts after each reduction: 3, 6, 8 (<= d: float64), then 18, 30 (> d: float32).
    assert [n for n, _ in seen] == [3, 3, 2, 10, 12]
    assert [dtype for _, dtype in seen] == [torch.float64] * 3 + [torch.float32] * 2
    np.testing.assert_allclose(
        fid.state_dict()["gen.m2"].numpy(), np_stats(rows)[1] * 29, rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# what merges: the same settings, reference and feature provenance


def test_pair_metrics_with_different_references_of_one_shape_do_not_merge(rng, tmp_path):
    """KID(reference=a).merge(KID(reference=a + 5)) gave 0.29, where the second alone is
    17,820: only (n, d, dtype) were compared. The references' values are."""
    real, gen = _sets(rng, d=8, n_real=60, n_gen=50)
    for cls, options in ((se.KID, {}), (se.CMMD, {}), (se.PRDC, {"k": 3})):
        with cls(real, **options) as a, cls(real + 5, **options) as b:
            a.update(gen)
            b.update(gen)
            with pytest.raises(OptionError, match="reference"):
                a.merge(b)
    pair_a, pair_b = se.PairMetrics(reference=real, k=3), se.PairMetrics(reference=-real, k=3)
    with pytest.raises(OptionError, match="reference"):
        pair_a.merge(pair_b)
    # The same values, as an array and as a store: the same reference.
    store = write_zarr(tmp_path / "ref.zarr", real, chunk_rows=7)
    with se.KID(real) as a, se.KID(store) as b:
        a.update(gen[:20])
        b.update(gen[20:])
        assert float(a.merge(b).compute()) == float(se.kid(real, gen))


def test_metrics_of_other_settings_or_provenance_do_not_merge(rng):
    real, gen = _sets(rng, d=8, n_real=60, n_gen=50)
    fp64, fp32 = se.FID(precision="fp64"), se.FID(precision="fp32")
    for fid in (fp64, fp32):
        fid.update(real, real=True)
        fid.update(gen)
    with pytest.raises(OptionError, match="precision"):
        fp64.merge(fp32)
    with pytest.raises(OptionError, match="nonfinite"):
        se.FID(nonfinite="drop").merge(se.FID())
    # Equal settings merge; device and backend say where rows are reduced, not what.
    se.FID(backend="torch").merge(se.FID())


def test_image_rows_of_other_resizes_or_raw_features_do_not_merge(weights, cheap_network, rng):
    """FIDs of the same images with other resizes merged into FID 76.6 and KID -4,655."""
    pixels = torch.from_numpy(rng.integers(0, 256, (4, 3, 37, 45), dtype=np.uint8))
    rows = rng.standard_normal((4, 2048)).astype(np.float32)
    for cls in (se.FID, se.KID):
        legacy, clean = cls(weights=weights), cls(weights=weights, resize="clean")
        legacy.update(pixels)
        clean.update(pixels)
        with pytest.raises(OptionError, match=r"resize=legacy-pytorch.*resize=clean"):
            legacy.merge(clean)
        raw = cls()
        raw.update(rows)
        with pytest.raises(OptionError, match="feature rows"):
            raw.merge(legacy)
        with pytest.raises(OptionError, match="feature rows"):
            legacy.update(rows)
        again = cls(weights=weights)
        again.update(pixels)
        legacy.merge(again)  # the same encoder, resize and weights
        # Real rows as features beside generated images: each side is checked alone.
        legacy.update(rows, real=True)


# ---------------------------------------------------------------------------------------------
# one-line errors instead of tracebacks


def test_inputs_that_tracebacked_are_specific_errors(tmp_path, monkeypatch):
    for metric in (se.FID(), se.KID()):
        with pytest.raises(DtypeError, match="meta tensor"):
            metric.update(torch.empty((4, 8), device="meta"))
        for empty in (np.empty((0, 0)), np.empty((5, 0))):
            with pytest.raises(ShapeError, match="0 features per row"):
                metric.update(empty)
    a_file = tmp_path / "a file"
    a_file.write_text("not a folder")
    with pytest.raises(OptionError, match="work_dir"):
        se.KID(work_dir=a_file)
    with pytest.raises(OptionError, match="work_dir"):
        se.KID(work_dir=a_file / "below")
    assert a_file.read_text() == "not a folder"
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # outside the interpreter the tests use
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            se.FID(device="cuda")
        with pytest.raises(EngineError, match="no CUDA GPU"):
            se.KID(device="cuda")
        with pytest.raises(EngineError, match="backend='triton'"):
            se.FID(backend="triton")
        with pytest.raises(EngineError, match="backend='triton'"):
            se.KID(backend="triton")
    with pytest.raises(EngineError, match="backend='triton'"):
        se.FID(device="cpu", backend="triton")
    # The device is the first batch's: a CPU batch with Triton kernels is refused there.
    if torch.cuda.is_available():
        with pytest.raises(EngineError, match="backend='triton'"):
            se.FID(backend="triton").update(torch.zeros((2, 8)))


# ---------------------------------------------------------------------------------------------
# checkpoints, copies and pickles


def test_state_dict_counts_are_bounded_like_statistics_files(rng):
    real, _ = _sets(rng)
    fid = se.FID()
    fid.update(real, real=True)
    state = fid.state_dict()
    for key in ("real.n", "gen.batches"):
        with pytest.raises(StatsFormatError, match=rf"'{key}' is {2**60}.*2\^53"):
            se.FID().load_state_dict({**state, key: 2**60})
    gaussian = se.FID(Gaussian(real.mean(0), np.cov(real, rowvar=False), 700)).state_dict()
    with pytest.raises(StatsFormatError, match="2\\^53"):
        se.FID().load_state_dict({**gaussian, "reference.n": 2**53 + 1})
    # A state dict of the first layout (no settings, no provenance) is read as before.
    old = {k: v for k, v in state.items() if not k.startswith("settings") and "made" not in k}
    again = se.FID()
    again.load_state_dict(old)
    assert again.state_dict()["real.n"] == len(real)


def test_a_state_dict_of_other_settings_is_refused(rng):
    real, _ = _sets(rng)
    fid = se.FID(precision="fp64")
    fid.update(real, real=True)
    with pytest.raises(StatsFormatError, match="precision"):
        se.FID().load_state_dict(fid.state_dict())
    se.FID(precision="fp64").load_state_dict(fid.state_dict())


def test_copies_and_pickles_carry_their_rows(rng, tmp_path, small_spills):
    import copy
    import pickle

    real, gen = _sets(rng, d=8, n_real=60, n_gen=50)
    want = float(se.kid(real, gen))
    for make in (lambda m: copy.deepcopy(m), lambda m: pickle.loads(pickle.dumps(m))):
        kid = se.KID(work_dir=tmp_path)
        _feed(kid, real, gen)
        twin = make(kid)
        assert twin.folder != kid.folder
        assert os.path.dirname(twin.folder) == str(tmp_path)
        kid.close()  # the copy has rows of its own
        assert float(twin.compute()) == want
        twin.update(gen)  # and goes on alone
        assert twin.compute()["kid"]["kid_n"] == 2 * len(gen)
        twin.close()
        fid = se.FID()
        fid.update(real, real=True)
        fid.update(gen[:7])
        fid_twin = make(fid)
        fid.update(gen[7:])
        fid_twin.update(gen[7:])
        assert float(fid_twin.compute()) == float(fid.compute())
    with se.KID(real) as given:  # a reference given up front travels too
        given.update(gen)
        assert float(pickle.loads(pickle.dumps(given)).compute()) == want


# ---------------------------------------------------------------------------------------------
# the merge of synced states


def test_fold_counts_a_share_of_one_row_and_skips_one_of_none():
    """sync() folds every rank's moments in rank order: a rank of one row counts (n = 101, not
    100), one without rows adds nothing, whatever d it knows."""
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((101, 4)) * [1.0, 2.0, 0.5, 3.0] + 10.0
    parts = [rows[:1], rows[1:1], rows[1:60], rows[60:100], rows[100:]]

    def share(part):
        running = running_module._RunningMoments()
        running.push(torch.from_numpy(part))
        d = 4 if len(part) else None
        return running_module._FIDShare(
            running.rows(4), running.rows(4), d, None, ("fp32", "error"), (None, None)
        )

    folded = running_module._fold([share(p) for p in parts], "sync()")
    mean, cov = np_stats(rows)
    for side in (folded.real, folded.gen):
        assert side.moments.n == 101
        np.testing.assert_allclose(side.moments.mean, mean, rtol=1e-13)
        np.testing.assert_allclose(side.moments.m2, cov * 100, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# how image rows were made: the report of the one-shot function on the same inputs


@pytest.fixture
def cheap_inception(monkeypatch):
    """The Inception's weights are found, checked and loaded, and its preprocessing runs, on
    every path (the training-loop metrics' and the extraction of se.fid/se.kid); its network
    is replaced by pooling, so that both give the same features in milliseconds."""
    from shardeval.kernels.encoders.inception import FIDInception

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, (26, 27)).flatten(1)[:, :2048]

    monkeypatch.setattr(FIDInception, "forward", forward)


def _made_lines(report):
    """The summary's lines on how the features were made, and its warnings."""
    return [
        line for line in report.summary().splitlines() if " made by " in line or "warning" in line
    ]


def _same_provenance(got, want):
    """``got`` (a training-loop report) says how its features were made as ``want`` (the
    one-shot function's report on the same inputs) says it."""
    assert got.to_dict()["features_made_by"] == want.to_dict()["features_made_by"]
    assert _made_lines(got) == _made_lines(want)
    made = [w for w in want.to_dict()["warnings"] if "random weights" in w or "differently" in w]
    assert made, "the one-shot report has provenance warnings"
    for warning in made:
        assert warning in got.to_dict()["warnings"], warning


@pytest.mark.filterwarnings("ignore::shardeval.pipeline.errors.SingularCovarianceWarning")
def test_image_rows_are_reported_as_the_one_shot_functions_report_them(
    cheap_inception, tmp_path, rng
):
    """se.FID("featB_clean.zarr", weights="random:1") fed images reported 'gen': None, no made-by
    line, no random-weights or made-differently warning; se.FID(weights="random") fed images on
    both sides {'real': None, 'gen': None}; se.KID fed images 'made by inception-2015-12-05/pool3'
    with encoder, resize and weights None. They report what se.fid and se.kid report."""
    real = rng.integers(0, 256, (6, 3, 37, 45), dtype=np.uint8)
    gen = rng.integers(0, 256, (7, 3, 41, 33), dtype=np.uint8)
    np.save(tmp_path / "real.npy", real.transpose(0, 2, 3, 1))
    store = str(tmp_path / "featB_clean.zarr")
    se.extract(str(tmp_path / "real.npy"), store, weights="random:0", resize="clean")
    cache = str(tmp_path / "cache")

    # A reference store of another resize and weights, against generated images.
    fid = se.FID(store, weights="random:1", batch_size=4)
    fid.update(torch.from_numpy(gen[:3]))
    fid.update(gen[3:])
    once = se.fid(store, gen, weights="random:1", cache_root=cache)
    assert _rel(float(fid.compute()), float(once)) < 1e-6
    _same_provenance(fid.compute(), once)
    # A checkpoint keeps how the rows were made.
    resumed = se.FID(store, weights="random:1")
    resumed.load_state_dict(fid.state_dict())
    _same_provenance(resumed.compute(), once)

    # Images on both sides.
    both = se.FID(weights="random")
    both.update(torch.from_numpy(real), real=True)
    both.update(torch.from_numpy(gen))
    once = se.fid(real, gen, weights="random", cache_root=cache)
    assert _rel(float(both.compute()), float(once)) < 1e-6
    _same_provenance(both.compute(), once)
    merged = se.FID(weights="random")
    merged.update(torch.from_numpy(real), real=True)
    _same_provenance(merged.merge(both).compute(), once)  # gen rows made by the FID merged in

    with se.KID(weights="random") as kid:
        kid.update(torch.from_numpy(real), real=True)
        kid.update(torch.from_numpy(gen))
        once = se.kid(real, gen, weights="random", cache_root=cache)
        assert float(kid.compute()) == pytest.approx(float(once), rel=1e-6, abs=1e-12)
        _same_provenance(kid.compute(), once)
    # Feature rows beside images: the feature side records nothing, as se.kid's array does.
    rows = rng.standard_normal((6, 2048)).astype(np.float32)
    with se.KID(weights="random") as kid:
        kid.update(rows, real=True)
        kid.update(torch.from_numpy(gen))
        once = se.kid(rows, gen, weights="random", cache_root=cache)
        assert once.to_dict()["features_made_by"]["real"] is None
        _same_provenance(kid.compute(), once)


# ---------------------------------------------------------------------------------------------
# options and inputs checked at the boundary


def test_sync_timeout_is_what_the_store_waits_for(tmp_path):
    """se.FID(sync_timeout=1e15) was accepted, and compute() under torch.distributed raised
    OverflowError on rank 0 (timedelta) and DistNetworkError on rank 1. A store's wait takes
    whole milliseconds in a 64-bit count of microseconds: below 1 ms it is 0 ms, which the
    store reads as no deadline (a FileStore then waits forever); beyond 2^63 microseconds it
    overflows (a FileStore then times out at once)."""
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    low, high = streaming.MIN_SYNC_TIMEOUT_SECONDS, streaming.MAX_SYNC_TIMEOUT_SECONDS
    assert (low, high) == (1e-3, (2**63 - 1) // 10**6)
    for bad in (1e15, high + 1, low / 2, 0, -1.0, float("nan"), float("inf"), True, "600"):
        for cls in (se.FID, se.KID):
            with pytest.raises(OptionError, match="sync_timeout must be") as caught:
                cls(sync_timeout=bad)
            assert "\n" not in str(caught.value)
    for good in (low, high, 600, None):
        assert se.FID(sync_timeout=good).sync_timeout == good
        se.KID(sync_timeout=good).close()
    # The bounds are the store's: at the largest, a wait ends when the key arrives; at the
    # smallest, a wait for a key that never comes ends with the store's error.
    path = str(tmp_path / "store")
    waiting, setting = dist.FileStore(path, 2), dist.FileStore(path, 2)
    timer = threading.Timer(0.2, setting.set, ("arrived", "1"))
    timer.start()
    waiting.wait(["arrived"], timedelta(seconds=high))
    timer.join()
    with pytest.raises(RuntimeError, match=r"[Tt]imeout"):
        waiting.wait(["never"], timedelta(seconds=low))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
def test_batches_that_raised_raw_errors_or_passed_for_others_are_refused(rng):
    """A sparse batch raised NotImplementedError ('SparseCPU'); real="yes" was taken for
    real=True; float images holding NaN were said to hold "values in [nan, nan]"."""
    rows = torch.from_numpy(rng.standard_normal((50, 4)))
    for make in (se.FID, se.KID):
        metric = make()
        for odd in (rows.to_sparse(), rows.to_sparse_csr()):
            with pytest.raises(DtypeError, match=r"sparse.*to_dense\(\)") as caught:
                metric.update(odd)
            assert "\n" not in str(caught.value)
        for flag in ("yes", 1, None, torch.tensor(True)):
            with pytest.raises(OptionError, match="real must be True or False"):
                metric.update(rows, real=flag)
        metric.update(rows, real=np.bool_(True))  # numpy's bool is a bool
        images = torch.rand((3, 3, 8, 8))
        images[1, 0, 2, 2] = torch.nan
        with pytest.raises(DtypeError, match=r"NaN in 1 image\(s\) \(first: image 1\)") as caught:
            metric.update(images)
        assert "nan, nan" not in str(caught.value)
    # Nothing was kept from the refused batches: the FID of what was accepted.
    fid = se.FID()
    fid.update(rows, real=True)
    with pytest.raises(OptionError):
        fid.update(rows + 1, real="no")
    assert fid.state_dict()["gen.n"] == 0


def test_impossible_states_are_refused(rng):
    """A state_dict with gen.n = 1 and a non-zero gen.m2 loaded, and gave FID 5.0035 after an
    update: a co-moment of one row is zero, and a side of no rows has a zero mean."""
    real, gen = _sets(rng, d=4, n_real=50, n_gen=1)
    fid = se.FID()
    fid.update(real, real=True)
    fid.update(gen)
    state = fid.state_dict()
    assert state["gen.n"] == 1
    assert not state["gen.m2"].any()  # what a row gives
    empty = se.FID()
    empty.update(real, real=True)
    nothing = empty.state_dict()  # gen.n = 0, zero mean and co-moment
    cases = {
        r"gen\.n is 1.*gen\.m2": {**state, "gen.m2": torch.eye(4)},
        r"gen\.n is 0.*gen\.m2": {**nothing, "gen.m2": torch.eye(4)},
        r"gen\.n is 0.*gen\.mean": {**nothing, "gen.mean": torch.ones(4)},
        r"real\.n is 0": {**nothing, "real.n": 0},
    }
    for message, broken in cases.items():
        with pytest.raises(StatsFormatError, match=message):
            se.FID().load_state_dict(broken)
    for fine in (state, nothing):
        se.FID().load_state_dict(fine)
