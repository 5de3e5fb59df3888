"""Every option of every command changes something, or is refused where it cannot apply: an
option that a command accepts and ignores is a defect. The table below has a check for each
(command, option) pair of the parser, and a test makes sure no pair is missing from it."""

import json
import math
import os
import types

import numpy as np
import pytest
import zarr

import shardeval.kernels._triton_path
import shardeval.kernels.lse
import shardeval.kernels.moments
import shardeval.pipeline.core.chunks
import shardeval.pipeline.core.engine
from shardeval.pipeline import Moments, save_stats
from shardeval.workflows.cli import main
from shardeval.workflows.cli.parser import build_parser
from tests.conftest import write_zarr
from tests.workflows.test_cli_ct import CT_CHECKS
from tests.workflows.test_cli_fetch import FETCH_CHECKS
from tests.workflows.test_cli_fld import FLD_CHECKS


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _report(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--json", "-q")
    assert code == 0, err
    return json.loads(out)


def _refused(capsys, *argv, match):
    quiet = ["-q"] if argv[0] not in ("report", "synth", "history") else []
    code, _, err = _run(capsys, *argv, *quiet)
    assert code == 2, err
    assert match in err, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opts")
    rng = np.random.default_rng(4)
    rows, mix = rng.normal(size=(600, 4)), rng.normal(size=(4, 4))
    a = (rows @ mix + 1).astype(np.float32)
    b = (rng.normal(size=(500, 4)) * 1.3).astype(np.float32)
    nan = a.copy()
    nan[7, 1] = np.nan
    for store, arrays in (("g.zarr", (("u", a), ("v", b))), ("g2.zarr", (("u", 2 * b), ("v", b)))):
        group = zarr.open_group(str(tmp / store), mode="w")
        for name, x in arrays:
            group.create_array(name, shape=x.shape, chunks=(100, 4), dtype="float32")[...] = x
    np.save(tmp / "ll.npy", rng.normal(-50, 2, 800))
    lw = rng.standard_t(3, (60, 400))
    np.save(tmp / "lw.npy", lw)
    lw_nan = lw.copy()
    lw_nan[3, 3] = np.nan
    np.save(tmp / "lw_nan.npy", lw_nan)
    save_stats(tmp / "s.zarr", Moments.from_rows(a))
    (tmp / "local.yaml").write_text(
        "backend: local\noptions:\n  n_workers: 1\n  threads_per_worker: 1\n"
        "  processes: false\n  dashboard_address: ':0'\n"
    )
    _extract_inputs(tmp, rng)
    # C_T's held-out test set (drawn like a), and generated rows that copy a's exactly
    a_test = (rng.normal(size=(400, 4)) @ mix + 1).astype(np.float32)
    copies = np.concatenate([a[:150], a[:150], b[:200]])
    return {
        "a_test": write_zarr(tmp / "a_test.zarr", a_test, chunk_rows=100),
        "copies": write_zarr(tmp / "copies.zarr", copies, chunk_rows=100),
        "a": write_zarr(tmp / "a.zarr", a, chunk_rows=100),
        # The same numbers in an array named as logits (the Inception Score reads no other).
        "logits": write_zarr(tmp / "logits.zarr", a, chunk_rows=100),
        "b": write_zarr(tmp / "b.zarr", b, chunk_rows=100),
        "nan": write_zarr(tmp / "nan.zarr", nan, chunk_rows=100),
        # Few rows, for the Triton interpreter.
        "a_small": write_zarr(tmp / "a_small.zarr", a[:90], chunk_rows=50),
        "b_small": write_zarr(tmp / "b_small.zarr", b[:70], chunk_rows=50),
        "g": str(tmp / "g.zarr"),
        "g2": str(tmp / "g2.zarr"),
        "ll": str(tmp / "ll.npy"),
        "lw": str(tmp / "lw.npy"),
        "lw_nan": str(tmp / "lw_nan.npy"),
        "s": str(tmp / "s.zarr"),
        "spec": str(tmp / "local.yaml"),
        "tmp": tmp,
    }


def _extract_inputs(tmp, rng):
    """Five small images, the same with one truncated file, and two random Inception weights."""
    import torch
    from PIL import Image

    from shardeval.kernels.encoders.inception import random_state_dict

    for folder in ("images", "bad-images"):
        (tmp / folder).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp / folder / f"{i}.png")
    (tmp / "bad-images" / "2.png").write_bytes((tmp / "images" / "2.png").read_bytes()[:60])
    for seed in (1, 2):
        torch.save(random_state_dict(seed), tmp / f"inception-{seed}.pth")


_OUTPUTS = iter(range(10**6))


def _extract(f, *extra, images="images", weights=1):
    """An extract command line writing a new store."""
    out = f["tmp"] / f"x-{next(_OUTPUTS)}.zarr"
    return [
        "extract",
        f["tmp"] / images,
        "-o",
        out,
        "--weights",
        f["tmp"] / f"inception-{weights}.pth",
        *extra,
    ]


def _features(report):
    return np.asarray(zarr.open_group(report["output"], mode="r")["features"][:])


def _base(command, f):
    """A working invocation of each measurement command."""
    return {
        "fid": ["fid", f["a"], f["b"]],
        "sfid": ["sfid", f["a"], f["b"]],
        "nll": ["nll", "--iw", f["lw"]],
        "ess": ["ess", f["lw"]],
        "kid": ["kid", f["a"], f["b"]],
        "cmmd": ["cmmd", f["a"], f["b"]],
        "prdc": ["prdc", f["a"], f["b"]],
        "authpct": ["authpct", f["a"], f["b"]],
        "ct": ["ct", f["a"], f["a_test"], f["b"]],
        "fld": ["fld", f["a"], f["a_test"], f["b"]],
        "metrics": ["metrics", f["a"], f["b"], "--metrics", "fid"],
        "compare": ["compare", f["a"], f["b"], f["a"]],
        "extract": _extract(f),
        "is": ["is", f["logits"]],
    }[command]


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


# --- checks shared by the measurement commands (fid, nll, ess) ------------------------------


def check_scheduler(capsys, f, command, monkeypatch):
    assert (
        _report(capsys, *_base(command, f), "--scheduler", "sync")["engine"]["scheduler"] == "sync"
    )
    assert _report(capsys, *_base(command, f))["engine"]["scheduler"] == "threads"


def check_threads(capsys, f, command, monkeypatch):
    assert _report(capsys, *_base(command, f), "--threads", "1")["engine"]["threads"] == 1


def check_cluster(capsys, f, command, monkeypatch):
    page = f["tmp"] / f"perf-{command}.html"
    report = _report(
        capsys, *_base(command, f), "--cluster", f["spec"], "--performance-report", page
    )
    assert report["engine"]["scheduler"] == "distributed"
    assert page.exists()


def check_performance_report(capsys, f, command, monkeypatch):
    _refused(
        capsys,
        *_base(command, f),
        "--performance-report",
        f["tmp"] / "p.html",
        match="needs a distributed cluster",
    )
    check_cluster(capsys, f, command, monkeypatch)


def check_quiet(capsys, f, command, monkeypatch):
    code, _, err = _run(capsys, *_base(command, f))
    assert code == 0
    assert "shards" in err
    code, _, err = _run(capsys, *_base(command, f), "-q")
    assert code == 0
    assert err == ""


def check_shard_rows(capsys, f, command, monkeypatch):
    many = _report(capsys, *_base(command, f), "--shard-rows", "50")
    few = _report(capsys, *_base(command, f), "--shard-rows", "1000")
    key = "real" if command == "fid" else None
    if key:
        shards = [r["inputs"]["real"]["shards"] for r in (many, few)]
        assert shards == [12, 1]
    else:
        inputs = next(iter(many["inputs"].values()))
        assert inputs["shards"] > next(iter(few["inputs"].values()))["shards"]


def check_array(capsys, f, command, monkeypatch):
    if command == "is":
        u = _report(capsys, "is", f["g"], "--array", "u")["is"]["is"]
        v = _report(capsys, "is", f["g"], "--array", "v")["is"]["is"]
        assert u != v
        _refused(capsys, *_base(command, f), "--array", "u", match="say so with --as-logits")
        return
    if command in ("nll", "ess"):
        _refused(capsys, *_base(command, f), "--array", "nope", match="leave --array out")
        return
    if command == "compare":
        argv = ["compare", f["g"], f["g2"], f["g"]]
        u = _report(capsys, *argv, "--array", "u")["fid"]["fid_difference"]
        assert u != _report(capsys, *argv, "--array", "v")["fid"]["fid_difference"]
        _refused(capsys, *_base(command, f), "--array", "u", match="is a single Zarr array")
        return
    value = {
        "fid": lambda r: r["fid"]["fid"],
        "sfid": lambda r: r["sfid"]["sfid"],
        "metrics": lambda r: r["fid"]["fid"],
        "kid": lambda r: r["kid"]["kid"],
        "cmmd": lambda r: r["cmmd"]["cmmd"],
        "prdc": lambda r: r["prdc"]["prdc_precision"],
        "authpct": lambda r: r["authpct"]["authpct"],
    }[command]
    argv = [command, f["g"], f["g2"]] + (["--metrics", "fid"] if command == "metrics" else [])
    u = value(_report(capsys, *argv, "--array", "u"))
    v = value(_report(capsys, *argv, "--array", "v"))
    assert u != v
    # Beside a store of one array, --array picks the group's variable (the same rows as a.zarr).
    mixed = [command, f["g"], f["b"]] + (["--metrics", "fid"] if command == "metrics" else [])
    alone = [command, f["a"], f["b"]] + (["--metrics", "fid"] if command == "metrics" else [])
    assert value(_report(capsys, *mixed, "--array", "u")) == value(_report(capsys, *alone))
    _refused(capsys, *_base(command, f), "--array", "u", match="is a single Zarr array")


def check_split_every(capsys, f, command, monkeypatch):
    calls = _spy(monkeypatch, shardeval.pipeline.core.engine, "tree_merge")
    report = _report(capsys, *_base(command, f), "--split-every", "3")
    assert report["settings"]["split_every"] == 3
    assert calls
    assert all(kw.get("split_every") == 3 for _, kw in calls)


def check_device(capsys, f, command, monkeypatch):
    calls = _spy(monkeypatch, shardeval.pipeline.core.chunks, "worker_device")
    report = _report(capsys, *_base(command, f), "--device", "cpu")
    assert report["settings"]["device"] == "cpu"
    assert calls
    assert all(args[0] == "cpu" for args, _ in calls)
    import torch

    if not torch.cuda.is_available():
        _refused(capsys, *_base(command, f), "--device", "cuda", match="no CUDA GPU")
    if command in ("kid", "metrics"):
        argv = (
            _base("kid", f) if command == "kid" else ["metrics", f["a"], f["b"], "--metrics", "kid"]
        )
        calls.clear()
        _report(capsys, *argv, "--device", "cpu")
        assert calls
        assert all(args[0] == "cpu" for args, _ in calls)
        _refused(capsys, *argv, "--subsets", "2", "--device", "cpu", match="not to --subsets")


def check_backend(capsys, f, command, monkeypatch):
    # The tests run Triton kernels in its interpreter (tests/conftest.py).
    if command in ("kid", "cmmd", "prdc", "authpct"):
        small = [command, f["a_small"], f["b_small"]]
        # Kernel sums (KID, CMMD) and decisions (PRDC, AuthPct's radii) have their own Triton
        # launchers.
        decides = command in ("prdc", "authpct")
        triton_entry = "pair_reduce_triton" if decides else "kernel_sums_triton"
        calls = _spy(monkeypatch, shardeval.kernels._triton_path, triton_entry)
        report = _report(capsys, *small, "--backend", "triton", "--shard-rows", "50")
        assert calls
        calls.clear()
        cpu = _report(capsys, *small, "--backend", "torch", "--shard-rows", "50")
        assert not calls
        key = {"kid": "kid", "cmmd": "cmmd", "prdc": "prdc_precision", "authpct": "authpct"}[
            command
        ]
        assert report[command][key] == pytest.approx(cpu[command][key], rel=1e-4, abs=1e-6)
    elif command in ("fid", "sfid", "metrics", "compare"):
        calls = _spy(monkeypatch, shardeval.kernels.moments, "shard_moments_triton")
        report = _report(capsys, *_base(command, f), "--backend", "triton")
        assert calls
    else:
        calls = _spy(monkeypatch, shardeval.kernels.lse, "_lse_torch")
        report = _report(capsys, *_base(command, f), "--backend", "triton")
        assert not calls  # the torch path was not taken
        assert _report(capsys, *_base(command, f), "--backend", "torch")
        assert calls
    assert report["settings"]["backend"] == "triton"


def check_precision(capsys, f, command, monkeypatch):
    import shardeval.kernels.moments
    import shardeval.kernels.pairs  # imported by the first pass otherwise: spied on before it

    if command in ("fid", "sfid", "metrics", "compare"):
        calls = _spy(monkeypatch, shardeval.kernels.moments, "shard_moments_numpy")
    else:
        calls = _spy(monkeypatch, shardeval.kernels.pairs, "pair_reduce")
    report = _report(capsys, *_base(command, f), "--precision", "fp64")
    assert report["settings"]["precision"] == "fp64"
    assert calls
    assert {args[0].dtype for args, _ in calls} == {np.dtype(np.float64)}


def check_nonfinite(capsys, f, command, monkeypatch):
    argv = {
        "fid": ["fid", f["nan"], f["b"]],
        "sfid": ["sfid", f["nan"], f["b"]],
        "nll": ["nll", "--iw", f["lw_nan"]],
        "ess": ["ess", f["lw_nan"]],
        "metrics": ["metrics", f["nan"], f["b"], "--metrics", "fid"],
        "compare": ["compare", f["nan"], f["b"], f["a"]],
    }[command]
    _refused(capsys, *argv, match="with NaN or inf")
    report = _report(capsys, *argv, "--nonfinite", "drop")
    dropped = {
        "fid": lambda r: r["fid"]["fid_nonfinite_dropped_real"],
        "sfid": lambda r: r["sfid"]["sfid_nonfinite_dropped_real"],
        "metrics": lambda r: r["fid"]["fid_nonfinite_dropped_real"],
        "compare": lambda r: r["gen_b"]["fid"]["fid_nonfinite_dropped_real"],
    }.get(command, lambda r: r["nonfinite_dropped"])(report)
    assert dropped == 1
    if command == "metrics":
        _refused(
            capsys,
            "metrics",
            f["a"],
            f["b"],
            "--metrics",
            "kid",
            "--nonfinite",
            "drop",
            match="every row",
        )


def check_out(capsys, f, command, monkeypatch):
    path = f["tmp"] / f"out-{command}.json"
    code, out, _ = _run(capsys, *_base(command, f), "--out", path, "-q")
    assert code == 0
    expected = "fid" if command == "metrics" else command
    assert json.loads(path.read_text())["metric"] == expected
    assert not out.startswith("{")
    os.remove(path)


def check_json(capsys, f, command, monkeypatch):
    _, out, _ = _run(capsys, *_base(command, f), "-q")
    assert not out.startswith("{")
    assert json.loads(_run(capsys, *_base(command, f), "--json", "-q")[1])


def check_overwrite(capsys, f, command, monkeypatch):
    path = f["tmp"] / f"ow-{command}.json"
    _refused(capsys, *_base(command, f), "--overwrite", match="--overwrite applies to the report")
    if command in ("prdc", "authpct", "metrics"):
        _refused(capsys, *_base(command, f), "--overwrite", match="the per-sample group written")
    assert _run(capsys, *_base(command, f), "--out", path, "-q")[0] == 0
    _refused(capsys, *_base(command, f), "--out", path, match="pass --overwrite")
    assert _run(capsys, *_base(command, f), "--out", path, "--overwrite", "-q")[0] == 0


def check_reff(capsys, f, command, monkeypatch):
    default = _report(capsys, *_base(command, f))
    correlated = _report(capsys, *_base(command, f), "--reff", "0.2")
    if command == "ess":
        assert correlated["tail"] > default["tail"]
    else:
        assert correlated["settings"]["reff"] == 0.2
        assert correlated["per_row"]["khat_quantiles"] != default["per_row"]["khat_quantiles"]
    _refused(capsys, "nll", f["ll"], "--reff", "0.5", match="--reff does not apply to nll loglik")


# --- command-specific checks -----------------------------------------------------------------


def check_extract_quiet(capsys, f, command, monkeypatch):
    code, _, err = _run(capsys, *_extract(f))
    assert code == 0
    assert "images: " in err
    code, _, err = _run(capsys, *_extract(f), "-q")
    assert code == 0
    assert err == ""


def check_extract_output(capsys, f, command, monkeypatch):
    argv = _extract(f)
    report = _report(capsys, *argv)
    assert report["output"] == str(argv[3])
    assert _features(report).shape == (5, 2048)
    existing = f["tmp"] / "not-ours"
    existing.mkdir(exist_ok=True)
    (existing / "notes.txt").write_text("keep")
    _refused(capsys, *argv[:3], existing, *argv[4:], match="not a feature store written by")
    assert (existing / "notes.txt").read_text() == "keep"


def check_extract_encoder(capsys, f, command, monkeypatch):
    assert _report(capsys, *_extract(f))["encoder"] == "inception"
    argv = ["extract", f["tmp"] / "images", "-o", f["tmp"] / "dino.zarr", "-q"]
    _refused(capsys, *argv, "--encoder", "dinov2-vitl14", match="dinov2")
    assert not (f["tmp"] / "dino.zarr").exists()


def check_extract_resize(capsys, f, command, monkeypatch):
    legacy = _report(capsys, *_extract(f))
    clean = _report(capsys, *_extract(f, "--resize", "clean"))
    assert (legacy["resize"], clean["resize"]) == ("legacy-pytorch", "clean")
    assert not np.array_equal(_features(legacy), _features(clean))
    argv = ["extract", f["tmp"] / "images", "-o", f["tmp"] / "r.zarr"]
    _refused(capsys, *argv, "--encoder", "clip-vitl14-336", "--resize", "clean", match="--resize")


def check_extract_weights(capsys, f, command, monkeypatch):
    one = _features(_report(capsys, *_extract(f, weights=1)))
    two = _features(_report(capsys, *_extract(f, weights=2)))
    assert not np.array_equal(one, two)
    argv = ["extract", f["tmp"] / "images", "-o", f["tmp"] / "w.zarr"]
    _refused(capsys, *argv, "--weights", f["tmp"] / "none.pth", match="do not exist")


def check_extract_batch_size(capsys, f, command, monkeypatch):
    argv = _extract(f, "--batch-size", "2")
    two = _report(capsys, *argv)
    five = _report(capsys, *_extract(f, "--batch-size", "5"))
    assert (two["chunks"], five["chunks"]) == (3, 1)
    np.testing.assert_allclose(_features(two), _features(five), rtol=1e-5, atol=1e-6)
    # A finished store is reused whatever the batch size (features do not depend on it).
    again = _report(capsys, *argv[:-1], "5")
    assert (again["already_complete"], again["computed"]) == (True, 0)
    # An unfinished one is laid out by its batches: the refusal says what to pass.
    from shardeval.pipeline.images.extract import INCOMPLETE_NOTE
    from shardeval.pipeline.io.stores import INCOMPLETE_ATTR

    group = zarr.open_group(two["output"], mode="r+")
    group.attrs.put({**dict(group.attrs), INCOMPLETE_ATTR: INCOMPLETE_NOTE, "complete": False})
    os.remove(os.path.join(two["output"], "features", "c", "1", "0"))
    _refused(capsys, *argv[:-1], "5", match="re-run with --batch-size 2 to finish it")
    resumed = _report(capsys, *argv[:-2])
    assert (resumed["resumed"], resumed["computed"]) == (True, 1)


def check_extract_device(capsys, f, command, monkeypatch):
    assert _report(capsys, *_extract(f, "--device", "cpu"))["devices"] == ["cpu"]
    import torch

    if not torch.cuda.is_available():
        _refused(capsys, *_extract(f, "--device", "cuda"), match="no CUDA GPU")


def check_extract_skip_bad(capsys, f, command, monkeypatch):
    _refused(capsys, *_extract(f, images="bad-images"), match="2.png")
    _refused(capsys, *_extract(f, images="bad-images"), match="or pass --skip-bad to leave it")
    report = _report(capsys, *_extract(f, "--skip-bad", images="bad-images"))
    assert report["rows"] == 4
    assert [name for name, _ in report["skipped"]] == ["2.png"]
    # The counts say what was kept; the reason names the image, readably.
    code, out, err = _run(capsys, *_extract(f, "--skip-bad", images="bad-images"), "-q")
    assert code == 0, err
    assert out.startswith("extracted 4 of 5 images (1 bad image left out) -> ")
    bad = str(f["tmp"] / "bad-images" / "2.png")
    assert f"  left out: image {bad!r} cannot be decoded (" in out
    assert report["skipped"][0][1].startswith(f"image {bad!r} cannot be decoded (")


def check_extract_overwrite(capsys, f, command, monkeypatch):
    argv = _extract(f)
    assert not _report(capsys, *argv)["already_complete"]
    assert _report(capsys, *argv)["already_complete"]  # the same settings: nothing computed
    other = [*argv[:5], f["tmp"] / "inception-2.pth"]
    _refused(capsys, *other, match="pass --overwrite")
    report = _report(capsys, *other, "--overwrite")
    assert report["computed"] == report["chunks"]


def check_extract_json(capsys, f, command, monkeypatch):
    _, out, _ = _run(capsys, *_extract(f), "-q")
    assert out.startswith("extracted 5 images")
    report = json.loads(_run(capsys, *_extract(f), "--json", "-q")[1])
    assert report["rows"] == 5
    assert report["engine"]["scheduler"] == "threads"


def check_extract_spatial(capsys, f, command, monkeypatch):
    plain = _report(capsys, *_extract(f))
    assert "spatial" not in zarr.open_group(plain["output"], mode="r")
    report = _report(capsys, *_extract(f, "--spatial"))
    assert report["spatial"] == 2023
    assert zarr.open_group(report["output"], mode="r")["spatial"].shape == (5, 2023)


EXTRACT = {
    "scheduler": check_scheduler,
    "threads": check_threads,
    "cluster": check_cluster,
    "performance_report": check_performance_report,
    "quiet": check_extract_quiet,
    "output": check_extract_output,
    "encoder": check_extract_encoder,
    "resize": check_extract_resize,
    "weights": check_extract_weights,
    "batch_size": check_extract_batch_size,
    "device": check_extract_device,
    "skip_bad": check_extract_skip_bad,
    "overwrite": check_extract_overwrite,
    "json": check_extract_json,
}


def check_fid_ref(capsys, f, command, monkeypatch):
    direct = _report(capsys, "fid", f["s"], f["b"])["fid"]
    assert _report(capsys, "fid", f["b"], "--ref", f["s"])["fid"] == direct
    _refused(capsys, "fid", f["a"], f["b"], "--ref", f["s"], match="got 3 inputs")


def check_stats_option(option, value):
    def check(capsys, f, command, monkeypatch):
        out = f["tmp"] / f"st-{option}.zarr"
        argv = ["stats", f["g"] if option == "array" else f["a"], "-o", out, "-q"]
        if option in ("scheduler", "threads", "cluster", "performance_report"):
            extra = {
                "scheduler": ["--scheduler", "sync"],
                "threads": ["--threads", "1"],
                "cluster": ["--cluster", f["spec"]],
                "performance_report": [
                    "--cluster",
                    f["spec"],
                    "--performance-report",
                    f["tmp"] / "st.html",
                ],
            }[option]
            assert _run(capsys, *argv, *extra)[0] == 0
            if option == "performance_report":
                assert (f["tmp"] / "st.html").exists()
            _refused(
                capsys,
                "stats",
                "merge",
                f["s"],
                f["s"],
                "-o",
                f["tmp"] / "m.zarr",
                *extra,
                match="not apply to `stats merge`",
            )
            return
        flag = "--" + option.replace("_", "-")
        assert _run(capsys, *argv, flag, value)[0] == 0
        settings = zarr.open_group(str(out), mode="r").attrs["settings"]
        assert str(settings[option]) == str(value)
        _refused(
            capsys,
            "stats",
            "merge",
            f["s"],
            f["s"],
            "-o",
            f["tmp"] / "m.zarr",
            flag,
            value,
            match="not apply to `stats merge`",
        )

    return check


def check_stats_quiet(capsys, f, command, monkeypatch):
    out = f["tmp"] / "sq.zarr"
    assert "shards" in _run(capsys, "stats", f["a"], "-o", out)[2]
    assert _run(capsys, "stats", f["a"], "-o", out, "--overwrite", "-q")[2] == ""


def check_stats_output(capsys, f, command, monkeypatch):
    out = f["tmp"] / "so.npz"
    assert _run(capsys, "stats", f["a"], "-o", out, "-q")[0] == 0
    with np.load(out) as archive:  # pytorch-fid's layout, with n and how it was made
        assert set(archive) == {"mu", "sigma", "n", "shardeval_provenance"}
        assert json.loads(str(archive["shardeval_provenance"]))["n"] == int(archive["n"])


def check_stats_overwrite(capsys, f, command, monkeypatch):
    out = f["tmp"] / "sow.zarr"
    assert _run(capsys, "stats", f["a"], "-o", out, "-q")[0] == 0
    _refused(capsys, "stats", f["a"], "-o", out, match="pass --overwrite")
    assert _run(capsys, "stats", f["a"], "-o", out, "--overwrite", "-q")[0] == 0


def check_nll_mode(capsys, f, command, monkeypatch):
    iw = _report(capsys, "nll", "--iw", f["lw"])
    assert iw["method"] == "importance"
    gauss = _report(capsys, "nll", "--gaussian", f["s"], f["a"])
    assert gauss["method"] == "gaussian"
    parzen = _report(capsys, "nll", "--parzen", f["a"], f["b"], "--bandwidth", "1.0")
    assert parzen["method"] == "parzen"
    _refused(capsys, "nll", "--iw", f["lw"], "--gaussian", f["s"], match="choose one of")


def check_nll_bandwidth(capsys, f, command, monkeypatch):
    one = _report(capsys, "nll", "--parzen", f["a"], f["b"], "--bandwidth", "1.0")["nll"]
    two = _report(capsys, "nll", "--parzen", f["a"], f["b"], "--bandwidth", "2.0")["nll"]
    assert one != two
    _refused(capsys, "nll", "--iw", f["lw"], "--bandwidth", "1.0", match="does not apply to nll iw")


def check_nll_dims(capsys, f, command, monkeypatch):
    assert _report(capsys, "nll", f["ll"])["bits_per_dim"] is None
    assert _report(capsys, "nll", f["ll"], "--dims", "4")["bits_per_dim"] is not None
    _refused(
        capsys, "nll", "--gaussian", f["s"], f["a"], "--dims", "4", match="--dims does not apply"
    )


def check_nll_ci(capsys, f, command, monkeypatch):
    plain = _report(capsys, "nll", f["ll"])
    got = _report(capsys, "nll", f["ll"], "--ci", "0.9")
    assert plain["ci_low"] is None
    assert got["nll"] == plain["nll"]
    assert got["ci_low"] < got["nll"] < got["ci_high"]
    gaussian = _report(capsys, "nll", "--gaussian", f["s"], f["a"], "--ci", "0.9")
    assert gaussian["ci_low"] < gaussian["nll"] < gaussian["ci_high"]
    _refused_by_the_parser(capsys, "nll", f["ll"], "--ci", "1.5", match="argument --ci")


def check_ess_ci(capsys, f, command, monkeypatch):
    # exp of t₃ log-weights: a tail far too heavy for a fourth moment, so the interval is
    # withheld, in one line saying why, with exit 0 and every other figure as without --ci.
    plain = _report(capsys, "ess", f["lw"])
    got = _report(capsys, "ess", f["lw"], "--ci", "0.9")
    assert plain["ess_ci_method"] is None
    assert plain["ess_ci_withheld"] is None
    assert (got["ess"], got["khat"]) == (plain["ess"], plain["khat"])
    assert got["khat"] >= 0.25
    assert got["ess_ci_low"] is None
    assert got["ess_ci_withheld"].startswith("no interval: Pareto k̂")
    assert got["settings"]["ci"] == 0.9
    _refused_by_the_parser(capsys, "ess", f["lw"], "--ci", "1", match="argument --ci")


def check_nll_kernel_refusal(option, value):
    def check(capsys, f, command, monkeypatch):
        shared = {
            "device": check_device,
            "backend": check_backend,
            "split_every": check_split_every,
        }
        shared[option](capsys, f, command, monkeypatch)
        mode = ["nll", f["ll"]] if option != "split_every" else ["nll", "--parzen", f["a"], f["b"]]
        flag = "--" + option.replace("_", "-")
        _refused(capsys, *mode, flag, value, match=f"{flag} does not apply")

    return check


def check_nll_gmm(capsys, f, command, monkeypatch):
    one = _report(capsys, "nll", "--gmm", "1", f["a"], f["b"])
    two = _report(capsys, "nll", "--gmm", "2", f["a"], f["b"])
    assert (one["method"], one["k"], two["k"]) == ("gmm", 1, 2)
    assert one["nll"] != two["nll"]
    _refused(capsys, "nll", "--gmm", "2", f["a"], match="nll gmm takes STORE TEST")
    _refused(capsys, "nll", "--gmm", "2", "--iw", f["lw"], match="choose one of")


def check_nll_gmm_option(option, value, changes, k="2"):
    """``option`` at ``value`` changes the report's ``changes`` under --gmm K, and is refused by
    the other modes."""

    def check(capsys, f, command, monkeypatch):
        flag = "--" + option.replace("_", "-")
        base = ["nll", "--gmm", k, f["a"], f["b"], "--shard-rows", "100"]
        default, given = _report(capsys, *base), _report(capsys, *base, flag, value)
        assert given[changes] != default[changes]
        _refused(capsys, "nll", "--parzen", f["a"], f["b"], flag, value, match="does not apply")

    return check


def check_run_option(option):
    def check(capsys, f, command, monkeypatch):
        tmp = f["tmp"] / f"run-{option}"
        tmp.mkdir()
        (tmp / "job.toml").write_text(
            f'[job]\nhistory = "h.zarr"\n[reference]\nstore = "{f["a"]}"\n'
            f'[[entries]]\nstore = "{f["b"]}"\nname = "b"\nstep = 1\n[metrics.fid]\n'
        )
        job = str(tmp / "job.toml")
        from shardeval.workflows.history import History

        history = History(tmp / "h.zarr")
        if option == "scheduler":
            assert _run(capsys, "run", job, "--scheduler", "sync", "-q")[0] == 0
            assert '"sync"' in str(history.load()["engine"].values[0])
        elif option == "force":
            assert _run(capsys, "run", job, "-q")[1].count("1 computed") == 1
            assert "0 computed" in _run(capsys, "run", job, "-q")[1]
            assert "1 computed" in _run(capsys, "run", job, "--force", "-q")[1]
        elif option == "verify":
            assert _run(capsys, "run", job, "-q")[0] == 0
            assert str(history.load()["content_digest"].values[0]) == ""
            assert "1 computed" in _run(capsys, "run", job, "--verify", "-q")[1]
            assert len(str(history.load()["content_digest"].values[0])) == 32
            assert "0 computed" in _run(capsys, "run", job, "--verify", "-q")[1]
        else:
            assert _run(capsys, "run", job)[2] != ""
            assert _run(capsys, "run", job, "--force", "-q")[2] == ""

    return check


def _history(f):
    path = f["tmp"] / "hist.zarr"
    if not path.exists():
        from shardeval.pipeline.metrics import METRICS
        from shardeval.workflows.history import History, HistoryRow

        declared = {m: METRICS[m].declaration() for m in ("fid", "nll_gaussian")}
        row = HistoryRow("e", "x", 1, "", "f", "o", "r", "rf", "j", "{}", 0.1, "now")
        History(path).append(row, {"fid": 1.0, "nll_gaussian": 2.0}, declared, d=4)
    return str(path)


def check_history_metric(capsys, f, command, monkeypatch):
    all_rows = json.loads(_run(capsys, "history", _history(f), "--format", "json")[1])
    fid_rows = json.loads(
        _run(capsys, "history", _history(f), "--format", "json", "--metric", "fid")[1]
    )
    assert "nll_gaussian" in all_rows[0]
    assert "nll_gaussian" not in fid_rows[0]


def check_history_format(capsys, f, command, monkeypatch):
    outs = {
        fmt: _run(capsys, "history", _history(f), "--format", fmt)[1]
        for fmt in ("table", "csv", "json")
    }
    assert outs["csv"].startswith("name,step,tags,created,")
    assert json.loads(outs["json"])[0]["name"] == "e"
    assert outs["table"].split()[0] == "name"


def check_report_output(capsys, f, command, monkeypatch):
    out = f["tmp"] / "rep.html"
    assert _run(capsys, "report", _history(f), "-o", out)[0] == 0
    assert out.exists()
    assert out.with_suffix(".md").exists()


def check_report_overwrite(capsys, f, command, monkeypatch):
    out = f["tmp"] / "rep2.html"
    assert _run(capsys, "report", _history(f), "-o", out)[0] == 0
    _refused(capsys, "report", _history(f), "-o", out, match="pass --overwrite")
    assert _run(capsys, "report", _history(f), "-o", out, "--overwrite")[0] == 0


def check_synth(option, value):
    def check(capsys, f, command, monkeypatch):
        base = f["tmp"] / f"syn-base-{option}.zarr"
        other = f["tmp"] / f"syn-{option}.zarr"
        assert _run(capsys, "synth", base, "--n", "300", "--d", "3")[0] == 0
        if option == "overwrite":
            _refused(capsys, "synth", base, "--n", "300", "--d", "3", match="pass --overwrite")
            assert _run(capsys, "synth", base, "--n", "30", "--d", "3", "--overwrite")[0] == 0
            assert zarr.open_array(str(base)).shape == (30, 3)
            return
        flag = "--" + option.replace("_", "-")
        argv = {"n": ["--d", "3"], "d": ["--n", "300"]}.get(option, ["--n", "300", "--d", "3"])
        assert _run(capsys, "synth", other, *argv, flag, value)[0] == 0
        x, y = zarr.open_array(str(base)), zarr.open_array(str(other))
        if option == "chunk_rows":
            assert x.chunks != y.chunks
        elif option in ("n", "d"):
            assert x.shape != y.shape
        else:
            assert not np.array_equal(x[...], y[...])

    return check


#: Each encoder option on the measurement commands: a value, and what the extraction is given.
_IMAGE_OPTIONS = {
    "encoder": ("dinov2-vitl14", "dinov2-vitl14"),
    "resize": ("clean", "clean"),
    "weights": ("inception-2.pth", "inception-2.pth"),
    "batch_size": ("3", 3),
    "cache_root": ("image-cache", "image-cache"),
    "verify": (None, True),  # switches: no value on the command line
    "skip_bad": (None, True),
}


def check_image_option(option):
    """Refused without an image input; with one, handed to the extraction (whose options
    change the features: see the extract checks above). ``is`` also refuses an encoder
    without class logits."""

    def check(capsys, f, command, monkeypatch):
        flag = "--" + option.replace("_", "-")
        value, given = _IMAGE_OPTIONS[option]
        logits = command == "is" and option == "encoder"
        if logits:  # the Inception Score takes the one encoder with class logits
            value = given = "inception"
        if option in ("weights", "cache_root"):
            value = given = str(f["tmp"] / value)
        given_flag = [flag] if value is None else [flag, value]
        stats_out = f["tmp"] / f"image-stats-{next(_OUTPUTS)}.zarr"
        features = ["stats", f["a"], "-o", stats_out] if command == "stats" else _base(command, f)
        _refused(capsys, *features, *given_flag, match=f"{flag} applies to image inputs")
        calls = []

        def extraction(source, **kwargs):
            calls.append(kwargs)
            # What the report reads of a cache entry (its features: the logits for is).
            return types.SimpleNamespace(
                path=f["logits"] if command == "is" else f["b"],
                images=source,
                key="0" * 32,
                reused=True,
                content=None,
                stale=False,
                extraction=types.SimpleNamespace(skipped=()),
            )

        monkeypatch.setattr("shardeval.pipeline.images.cache.cached_features", extraction)
        images = str(f["tmp"] / "images")
        if command == "stats":
            argv = ["stats", images, "-o", stats_out]
        elif command == "is":
            argv = ["is", images]
        else:
            argv = [*_base(command, f)[:2], images, *_base(command, f)[3:]]
        code, _out, err = _run(capsys, *argv, *given_flag, "-q")
        assert code == 0, err
        assert [c[option] for c in calls] == [given]
        if logits:
            _refused(capsys, *argv, flag, "dinov2-vitl14", match="has no class logits")

    return check


def check_is_splits(capsys, f, command, monkeypatch):
    argv = _base("is", f) if command == "is" else ["metrics", f["logits"], "--metrics", "is"]
    exact = _section(_report(capsys, *argv), "is")
    split = _section(_report(capsys, *argv, "--splits", "4"), "is")
    assert (exact["splits"], exact["split_mean"], split["splits"]) == (0, None, 4)
    assert split["split_mean"] > 0
    assert split["split_std"] > 0
    # The same sums, added split by split: the same score to rounding.
    assert split["is"] == pytest.approx(exact["is"], rel=1e-12)
    if command == "metrics":
        _refused(capsys, *_base(command, f), "--splits", "4", match="which is not asked for")
    _refused(capsys, *argv, "--splits", "601", match="exceeds the 600 rows")


def check_is_seed(capsys, f, command, monkeypatch):
    def splits(*seed):
        return _section(_report(capsys, *_base(command, f), "--splits", "4", *seed), "is")

    one, two = splits("--seed", "1"), splits("--seed", "2")
    assert (one["seed"], two["seed"]) == (1, 2)
    assert (one["split_mean"], one["split_std"]) != (two["split_mean"], two["split_std"])
    zero, default = splits("--seed", "0"), splits()
    assert zero["seed"] == 0
    assert (zero["split_mean"], zero["split_std"]) != (default["split_mean"], default["split_std"])
    _refused(capsys, *_base(command, f), "--seed", "0", match="--seed applies with --splits")


def check_as_logits(capsys, f, command, monkeypatch):
    # The numbers of f["logits"] in a store nothing names as logits: refused, then declared.
    argv = ["is", f["a"]] if command == "is" else ["metrics", f["a"], "--metrics", "is"]
    _refused(capsys, *argv, match="say so with --as-logits")
    declared = _section(_report(capsys, *argv, "--as-logits"), "is")
    named = _section(_report(capsys, *_base("is", f)), "is")
    assert (declared["as_logits"], named["as_logits"]) == (True, False)
    assert declared["is"] == named["is"]
    if command == "metrics":
        _refused(capsys, *_base(command, f), "--as-logits", match="which is not asked for")


def check_infinity(capsys, f, command, monkeypatch):
    assert "fid_inf" not in _report(capsys, "fid", f["a"], f["b"])
    report = _report(capsys, "fid", f["a"], f["b"], "--infinity")
    assert len(report["fid_inf"]["fid_inf_sizes"]) == 15
    _refused(capsys, "fid", f["a"], f["s"], "--infinity", match="fid_inf needs its rows")


def check_fid_seed(capsys, f, command, monkeypatch):
    _refused(capsys, "fid", f["a"], f["b"], "--seed", "0", match="--seed applies to --infinity")
    one = _section(_report(capsys, "fid", f["a"], f["b"], "--infinity", "--seed", "1"), "fid_inf")
    two = _section(_report(capsys, "fid", f["a"], f["b"], "--infinity", "--seed", "2"), "fid_inf")
    assert one["seed"] == 1
    assert one["sizes"] != two["sizes"] or one["fids"] != two["fids"]


def check_ci(capsys, f, command, monkeypatch):
    metric = "sfid" if command == "sfid" else "fid"
    plain = _one_metric(capsys, f, command, metric)
    got = _one_metric(capsys, f, command, metric, "--ci", "0.9")
    assert plain["standard_error"] is None
    assert got["ci"] == 0.9
    # With «ci» the moments are the groups' merged: the same rows summed in another order.
    assert got[metric] == pytest.approx(plain[metric], rel=1e-6)
    assert got["standard_error"] > 0
    assert got["ci_low"] < got[metric] < got["ci_high"]


def check_kid_ci(capsys, f, command, monkeypatch):
    plain = _one_metric(capsys, f, command, "kid")
    got = _one_metric(capsys, f, command, "kid", "--ci", "0.9")
    assert plain["ci_low"] is None
    assert got["kid"] == plain["kid"]
    assert got["ci_low"] < got["kid"] < got["ci_high"]
    _refused(capsys, *_base(command, f), "--ci", "0.9", "--subsets", "3", match="--subsets")


def check_se_target(capsys, f, command, monkeypatch):
    metrics = ("fid", "fid_inf", "kid", "cmmd") if command == "metrics" else (command,)
    for metric in metrics:
        argv = [f["a"], f["b"]] if command != "metrics" else ["--metrics", metric, f["a"], f["b"]]
        _refused(capsys, command, *argv, "--se-target", "0.1", match="applies with --ci")
        plain = _one_metric(capsys, f, command, metric, "--ci", "0.9")
        got = _one_metric(capsys, f, command, metric, "--ci", "0.9", "--se-target", "0.1")
        assert plain["rows_for_se_target"] is None
        assert got["se_target"] == 0.1
        n = got["n"] if got["n"] is not None else plain["n"]
        assert got["rows_for_se_target"] == max(
            2, math.ceil(n * (got["standard_error"] / 0.1) ** 2)
        )


def _refused_by_the_parser(capsys, *argv, match):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    assert match in capsys.readouterr().err


def check_cmmd_ci(capsys, f, command, monkeypatch):
    plain = _one_metric(capsys, f, command, "cmmd")
    got = _one_metric(capsys, f, command, "cmmd", "--ci", "0.9")
    assert plain["ci_low"] is None
    assert (got["cmmd"], got["standard_error"]) == (plain["cmmd"], plain["standard_error"])
    assert got["ci_low"] < got["cmmd"] < got["ci_high"]
    _refused_by_the_parser(capsys, *_base(command, f), "--ci", "1", match="argument --ci")


def check_is_ci(capsys, f, command, monkeypatch):
    plain = _section(_report(capsys, *_base("is", f)), "is")
    got = _section(_report(capsys, *_base("is", f), "--ci", "0.9"), "is")
    assert plain["ci_low"] is None
    assert got["is"] == plain["is"]
    assert got["ci_low"] < got["is"] < got["ci_high"]
    _refused_by_the_parser(capsys, *_base("is", f), "--ci", "-0.1", match="argument --ci")


def check_is_se_target(capsys, f, command, monkeypatch):
    _refused(capsys, *_base("is", f), "--se-target", "0.1", match="applies with --ci")
    got = _section(_report(capsys, *_base("is", f), "--ci", "0.9", "--se-target", "0.1"), "is")
    expected = max(2, math.ceil(got["n"] * (got["standard_error"] / 0.1) ** 2))
    assert got["rows_for_se_target"] == expected


def check_prdc_ci(capsys, f, command, monkeypatch):
    plain = _one_metric(capsys, f, command, "prdc")
    got = _one_metric(capsys, f, command, "prdc", "--ci", "0.9")
    for value in ("precision", "recall", "density", "coverage"):
        assert plain[f"{value}_ci_low"] is None
        assert got[value] == plain[value]
        assert got[f"{value}_ci_low"] <= got[value] <= got[f"{value}_ci_high"]
    assert got["ci"] == 0.9


def check_ci_groups(capsys, f, command, monkeypatch):
    metric = "sfid" if command == "sfid" else "fid"
    argv = [f["a"], f["b"]] if command != "metrics" else ["--metrics", "fid", f["a"], f["b"]]
    _refused(capsys, command, *argv, "--ci-groups", "5", match="--ci-groups applies with --ci")
    five = _one_metric(capsys, f, command, metric, "--ci", "0.9", "--ci-groups", "5")
    ten = _one_metric(capsys, f, command, metric, "--ci", "0.9")
    assert five["ci_groups"] == 5
    assert five["standard_error"] != ten["standard_error"]


def check_ci_seed(capsys, f, command, monkeypatch):
    metric = "sfid" if command == "sfid" else "fid"
    one = _one_metric(capsys, f, command, metric, "--ci", "0.9", "--ci-seed", "1")
    two = _one_metric(capsys, f, command, metric, "--ci", "0.9", "--ci-seed", "2")
    assert one["ci_seed"] == 1
    assert one["standard_error"] != two["standard_error"]


def _section(report, metric):
    """A metric's section of a report (the same on every route): its declared outputs (names
    without the metric's prefix) with the options it ran with."""
    view = {name.removeprefix(metric + "_"): v for name, v in report[metric].items()}
    return {**view, **report["options"][metric]}


def _one_metric(capsys, f, command, metric, *extra):
    """The metric's figures and options, from its own command or from `metrics`."""
    if command != "metrics":
        return _section(_report(capsys, metric, f["a"], f["b"], *extra), metric)
    report = _report(capsys, "metrics", f["a"], f["b"], "--metrics", metric, *extra)
    return _section(report, metric)


def check_subsets(capsys, f, command, monkeypatch):
    exact = _one_metric(capsys, f, command, "kid")
    got = _one_metric(capsys, f, command, "kid", "--subsets", "3", "--subset-size", "50")
    assert got["subsets"] == 3
    assert got["kid"] != exact["kid"]
    assert (exact["subsets"], got["subsets"]) == (0, 3)


def check_subset_size(capsys, f, command, monkeypatch):
    a = _one_metric(capsys, f, command, "kid", "--subsets", "3", "--subset-size", "50")
    b = _one_metric(capsys, f, command, "kid", "--subsets", "3", "--subset-size", "80")
    assert (a["subset_size"], b["subset_size"]) == (50, 80)
    assert a["kid"] != b["kid"]
    kid = (
        ["metrics", f["a"], f["b"], "--metrics", "kid"] if command == "metrics" else _base("kid", f)
    )
    _refused(capsys, *kid, "--subset-size", "50", match="applies with --subsets")
    if command == "metrics":
        _refused(capsys, *_base(command, f), "--subset-size", "50", match="which is not asked for")


def check_kid_seed(capsys, f, command, monkeypatch):
    subsets = ("--subsets", "3", "--subset-size", "50")
    a = _one_metric(capsys, f, command, "kid", *subsets, "--seed", "1")
    b = _one_metric(capsys, f, command, "kid", *subsets, "--seed", "2")
    assert a["kid"] != b["kid"]
    # Seed 0 is a seed (0 == False once dropped it for the default).
    zero = _one_metric(capsys, f, command, "kid", *subsets, "--seed", "0")
    default = _one_metric(capsys, f, command, "kid", *subsets)
    assert zero["seed"] == 0
    assert zero["kid"] != default["kid"]
    if command == "kid":
        _refused(
            capsys, "kid", f["a"], f["b"], "--seed", "0", match="--seed applies with --subsets"
        )
    else:
        inf = _report(capsys, "metrics", f["a"], f["b"], "--metrics", "fid_inf", "--seed", "4")
        assert inf["options"]["fid_inf"]["seed"] == 4
        _refused(capsys, *_base(command, f), "--seed", "1", match="--seed applies to fid_inf")


def check_unbiased(capsys, f, command, monkeypatch):
    v = _one_metric(capsys, f, command, "cmmd")
    u = _one_metric(capsys, f, command, "cmmd", "--unbiased")
    assert (v["unbiased"], u["unbiased"]) == (False, True)
    assert v["cmmd"] != u["cmmd"]
    if command == "metrics":
        _refused(capsys, *_base(command, f), "--unbiased", match="which is not asked for")


def _per_sample_run(capsys, f, command, metric, out, *extra):
    """A run writing ``metric``'s per-row values to ``out``; its report and the group."""
    argv = (
        ["metrics", f["a"], f["g"], "--metrics", metric]
        if command == "metrics"
        else [metric, f["a"], f["g"]]
    )
    report = _section(_report(capsys, *argv, "--array", "v", "--per-sample", out, *extra), metric)
    return report, zarr.open_group(str(out), mode="r")


def check_per_sample(capsys, f, command, monkeypatch):
    metrics = ("prdc", "authpct") if command == "metrics" else (command,)
    for metric in metrics:
        plain = _one_metric(capsys, f, command, metric)
        out = f["tmp"] / f"rows-{command}-{metric}.zarr"
        rows, group = _per_sample_run(capsys, f, command, metric, out)
        assert (plain["per_sample"], rows["per_sample"]) == (False, True)
        arrays = {
            "prdc": ("realism",),
            "authpct": ("nearest_distance", "nearest_index", "authentic"),
        }[metric]
        for name in arrays:
            assert plain[name] is None
            assert len(rows[name]) == rows["n"] == 500
            np.testing.assert_array_equal(
                group[f"{metric}_{name}"][:], np.asarray(rows[name], dtype=float)
            )
        headline = "precision" if metric == "prdc" else "authpct"
        assert group.attrs["metric"] == metric
        assert group.attrs["rows"] == 500
        assert "names" not in group  # g.zarr has none: the rows are known by index
        # Refused, one line, exit 2: the group exists (no --overwrite), or is something else.
        argv = (
            ["metrics", f["a"], f["b"], "--metrics", metric]
            if command == "metrics"
            else [metric, f["a"], f["b"]]
        )
        _refused(capsys, *argv, "--per-sample", out, match="pass --overwrite")
        _refused(capsys, *argv, "--per-sample", f["a"], match="is not a shardeval per-sample")
        _per_sample_run(capsys, f, command, metric, out, "--overwrite")
        assert rows[headline] == plain[headline]
    if command == "metrics":
        out = f["tmp"] / "rows-metrics-fid.zarr"
        _refused(capsys, *_base(command, f), "--per-sample", out, match="which are not asked")
        assert not out.exists()


def check_sigma(capsys, f, command, monkeypatch):
    a = _one_metric(capsys, f, command, "cmmd")
    b = _one_metric(capsys, f, command, "cmmd", "--sigma", "0.5")
    assert (a["sigma"], b["sigma"]) == (10.0, 0.5)
    assert a["cmmd"] != b["cmmd"]


def check_k(capsys, f, command, monkeypatch):
    a = _one_metric(capsys, f, command, "prdc")
    b = _one_metric(capsys, f, command, "prdc", "--k", "2")
    assert (a["k"], b["k"]) == (5, 2)
    assert a["density"] != b["density"]
    _refused(capsys, "prdc", f["a"], f["b"], "--k", "5000", match="need more rows than k")


def check_pr_k(capsys, f, command, monkeypatch):
    a = _one_metric(capsys, f, command, "prdc")
    b = _one_metric(capsys, f, command, "prdc", "--pr-k", "1")
    assert (a["pr_k"], b["pr_k"]) == (3, 1)
    assert a["precision"] != b["precision"]


def check_ridge(capsys, f, command, monkeypatch):
    a = _one_metric(capsys, f, command, "kl_gaussian")
    b = _one_metric(capsys, f, command, "kl_gaussian", "--ridge", "0.5")
    assert (a["ridge"], b["ridge"]) == (0.0, 0.5)
    assert a["kl_gaussian"] != b["kl_gaussian"]
    _refused(capsys, *_base(command, f), "--ridge", "0.5", match="which is not asked for")
    _parse_refused(capsys, "metrics", f["a"], f["b"], "--metrics", "kl_gaussian", "--ridge", "-1")


def check_vendi_q(capsys, f, command, monkeypatch):
    one = ["metrics", f["b"], "--metrics", "vendi"]
    a = _section(_report(capsys, *one), "vendi")
    b = _section(_report(capsys, *one, "--q", "2"), "vendi")
    assert (a["q"], b["q"]) == (1.0, 2.0)
    assert a["vendi"] != b["vendi"]
    _parse_refused(capsys, *one, "--q", "0")


def _parse_refused(capsys, *argv):
    """A value its declaration refuses, as the parser words it (exit code 2)."""
    with pytest.raises(SystemExit) as caught:
        main([str(a) for a in argv])
    assert caught.value.code == 2
    flag = argv[-2]
    assert f"argument {flag}: expected a finite number" in capsys.readouterr().err


def check_metrics(capsys, f, command, monkeypatch):
    one = _report(capsys, "metrics", f["a"], f["b"], "--metrics", "fid")
    all_ = _report(capsys, "metrics", f["a"], f["b"], "--metrics", "fid,fid_inf,kid,cmmd,prdc")
    assert "kid" not in one
    assert {"fid", "fid_inf", "kid", "cmmd", "prdc"} <= set(all_)
    # With fid_inf, FID comes from the band moments: the same rows, other fp32 roundings.
    assert all_["fid"]["fid"] == pytest.approx(one["fid"]["fid"], rel=1e-6)


def _difference(capsys, f, *extra):
    """The FID section of `compare` (B against A, and A against itself)."""
    return _report(capsys, *_base("compare", f), *extra)["fid"]


def check_compare_ci(capsys, f, command, monkeypatch):
    default, got = _difference(capsys, f), _difference(capsys, f, "--ci", "0.8")
    assert (default["fid_difference_level"], got["fid_difference_level"]) == (0.95, 0.8)
    assert got["fid_difference"] == default["fid_difference"]
    width = got["fid_difference_ci_high"] - got["fid_difference_ci_low"]
    assert width < default["fid_difference_ci_high"] - default["fid_difference_ci_low"]
    _refused(capsys, *_base(command, f), "--ci", "1", match="--ci: expected")


def check_compare_ci_groups(capsys, f, command, monkeypatch):
    five, ten = _difference(capsys, f, "--ci-groups", "5"), _difference(capsys, f)
    assert "over 5 groups" in five["fid_difference_method"]
    assert five["fid_difference_standard_error"] != ten["fid_difference_standard_error"]


def check_compare_ci_seed(capsys, f, command, monkeypatch):
    one, two = (_difference(capsys, f, "--ci-seed", s) for s in ("1", "2"))
    assert "seed 1" in one["fid_difference_method"]
    assert one["fid_difference_standard_error"] != two["fid_difference_standard_error"]


def check_compare_metrics(capsys, f, command, monkeypatch):
    one = _report(capsys, *_base(command, f))
    both = _report(capsys, *_base(command, f), "--metrics", "kid,fid")
    assert (one["metrics"], both["metrics"]) == (["fid"], ["kid", "fid"])
    assert both["kid"]["kid_difference_standard_error"] > 0
    _refused(capsys, *_base(command, f), "--metrics", "prdc", match="compare supports fid, kid")


ENGINE = {
    "scheduler": check_scheduler,
    "threads": check_threads,
    "cluster": check_cluster,
    "performance_report": check_performance_report,
    "quiet": check_quiet,
    "shard_rows": check_shard_rows,
    "array": check_array,
    "split_every": check_split_every,
    "device": check_device,
    "backend": check_backend,
    "nonfinite": check_nonfinite,
    "out": check_out,
    "json": check_json,
    "overwrite": check_overwrite,
}

PAIRS = {
    k: ENGINE[k]
    for k in (
        "scheduler",
        "threads",
        "cluster",
        "performance_report",
        "quiet",
        "shard_rows",
        "array",
        "split_every",
        "device",
        "backend",
        "out",
        "json",
        "overwrite",
    )
}

CHECKS = {
    ("fid", "infinity"): check_infinity,
    ("fid", "seed"): check_fid_seed,
    **{(c, "ci"): check_ci for c in ("fid", "sfid", "metrics")},
    ("kid", "ci"): check_kid_ci,
    **{(c, "se_target"): check_se_target for c in ("fid", "sfid", "kid", "cmmd", "metrics")},
    ("is", "se_target"): check_is_se_target,
    ("cmmd", "ci"): check_cmmd_ci,
    ("is", "ci"): check_is_ci,
    ("prdc", "ci"): check_prdc_ci,
    **{(c, "ci_groups"): check_ci_groups for c in ("fid", "metrics")},
    **{(c, "ci_seed"): check_ci_seed for c in ("fid", "metrics")},
    **{(c, "ci_groups"): check_ci_groups for c in ("fid", "sfid", "metrics")},
    **{(c, "ci_seed"): check_ci_seed for c in ("fid", "sfid", "metrics")},
    **{(c, k): v for c in ("kid", "cmmd", "prdc", "authpct") for k, v in PAIRS.items()},
    **{(c, "precision"): check_precision for c in ("kid", "cmmd", "prdc", "authpct", "metrics")},
    **{(c, "subsets"): check_subsets for c in ("kid", "metrics")},
    **{(c, "subset_size"): check_subset_size for c in ("kid", "metrics")},
    **{(c, "seed"): check_kid_seed for c in ("kid", "metrics")},
    **{(c, "unbiased"): check_unbiased for c in ("cmmd", "metrics")},
    **{(c, "sigma"): check_sigma for c in ("cmmd", "metrics")},
    **{(c, "k"): check_k for c in ("prdc", "metrics")},
    **{(c, "pr_k"): check_pr_k for c in ("prdc", "metrics")},
    **{(c, "per_sample"): check_per_sample for c in ("prdc", "authpct", "metrics")},
    ("metrics", "metrics"): check_metrics,
    **{("compare", k): v for k, v in ENGINE.items()},
    ("compare", "precision"): check_precision,
    ("compare", "ci"): check_compare_ci,
    ("compare", "ci_groups"): check_compare_ci_groups,
    ("compare", "ci_seed"): check_compare_ci_seed,
    ("compare", "metrics"): check_compare_metrics,
    ("metrics", "ridge"): check_ridge,
    ("metrics", "q"): check_vendi_q,
    **{("is", k): v for k, v in PAIRS.items() if k not in ("device", "backend")},
    **{("is", o): check_image_option(o) for o in _IMAGE_OPTIONS},
    **{(c, "splits"): check_is_splits for c in ("is", "metrics")},
    ("is", "seed"): check_is_seed,
    **{(c, "as_logits"): check_as_logits for c in ("is", "metrics")},
    **{("extract", k): v for k, v in EXTRACT.items()},
    **{("metrics", k): v for k, v in ENGINE.items()},
    **{("fid", k): v for k, v in ENGINE.items()},
    ("fid", "precision"): check_precision,
    **{("sfid", k): v for k, v in ENGINE.items()},
    ("sfid", "precision"): check_precision,
    ("extract", "spatial"): check_extract_spatial,
    ("fid", "ref"): check_fid_ref,
    **{("ess", k): v for k, v in ENGINE.items()},
    ("ess", "reff"): check_reff,
    ("ess", "ci"): check_ess_ci,
    **{("nll", k): v for k, v in ENGINE.items()},
    ("nll", "reff"): check_reff,
    ("nll", "iw"): check_nll_mode,
    ("nll", "gaussian"): check_nll_mode,
    ("nll", "parzen"): check_nll_mode,
    ("nll", "bandwidth"): check_nll_bandwidth,
    ("nll", "dims"): check_nll_dims,
    ("nll", "ci"): check_nll_ci,
    ("nll", "device"): check_nll_kernel_refusal("device", "cpu"),
    ("nll", "backend"): check_nll_kernel_refusal("backend", "torch"),
    ("nll", "split_every"): check_nll_kernel_refusal("split_every", "3"),
    ("nll", "gmm"): check_nll_gmm,
    ("nll", "covariance"): check_nll_gmm_option("covariance", "diag", "nll"),
    ("nll", "reg_covar"): check_nll_gmm_option("reg_covar", "10", "nll"),
    ("nll", "tol"): check_nll_gmm_option("tol", "0.5", "iterations"),
    ("nll", "max_iter"): check_nll_gmm_option("max_iter", "1", "converged"),
    # With more components than the data has clusters, k-means starts from another optimum.
    ("nll", "seed"): check_nll_gmm_option("seed", "5", "train_loglik", k="3"),
    **{
        ("stats", k): check_stats_option(k, v)
        for k, v in {
            "scheduler": None,
            "threads": None,
            "cluster": None,
            "performance_report": None,
            "shard_rows": 200,
            "array": "u",
            "split_every": 3,
            "device": "cpu",
            "backend": "torch",
            "precision": "fp64",
            "nonfinite": "drop",
        }.items()
    },
    **{
        (command, option): check_image_option(option)
        for command in ("fid", "kid", "cmmd", "prdc", "authpct", "metrics", "compare", "stats")
        for option in _IMAGE_OPTIONS
    },
    **FETCH_CHECKS,
    **{("ct", k): v for k, v in PAIRS.items()},
    ("ct", "precision"): check_precision,
    **CT_CHECKS,
    **{("fld", k): v for k, v in PAIRS.items() if k not in ("device", "backend", "array")},
    **FLD_CHECKS,
    ("stats", "quiet"): check_stats_quiet,
    ("stats", "output"): check_stats_output,
    ("stats", "overwrite"): check_stats_overwrite,
    **{("run", k): check_run_option(k) for k in ("scheduler", "force", "verify", "quiet")},
    ("history", "metric"): check_history_metric,
    ("history", "format"): check_history_format,
    ("report", "output"): check_report_output,
    ("report", "overwrite"): check_report_overwrite,
    **{
        ("synth", k): check_synth(k, v)
        for k, v in {
            "n": "40",
            "d": "5",
            "seed": "9",
            "mean": "2.5",
            "scale": "3",
            "chunk_rows": "64",
            "overwrite": None,
        }.items()
    },
}


def _parser_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {
        (name, action.dest)
        for name, command in sub.choices.items()
        for action in command._actions
        if action.option_strings and action.dest != "help"
    }


def test_every_option_has_a_check():
    assert _parser_options() == set(CHECKS)


@pytest.mark.parametrize(("command", "option"), sorted(CHECKS))
def test_option_changes_something_or_is_refused(files, capsys, monkeypatch, command, option):
    CHECKS[(command, option)](capsys, files, command, monkeypatch)
