"""Extraction speed: images per second per encoder on this machine's CPU, peak memory, and a
roofline *estimate* (not a measurement) of what a GPU could reach.

Each method runs in its own child process (``benchmarks._harness``), so its peak resident
memory is its own; the timed region starts after the encoder is loaded and warmed up:

* ``decode``             Pillow decoding of 256 × 256 PNGs (one thread): the CPU side of any
                         extraction, which a GPU worker must keep up with
* ``inception``          preprocessing (pytorch-fid's resize) + the FID Inception, batch 32, one
                         thread (the rate per core)
* ``inception-extract``  ``extract_features`` end to end from a PNG folder into Zarr (listing,
                         decoding, Dask threads, chunk writes)
* ``dinov2-vitl14``, ``clip-vitl14-336``  preprocessing + ViT-L/14, one thread (needs
                         ``transformers``)

Weights: the real ones when the standard caches hold them, else random weights of the same
architecture (speed does not depend on the values). ViT-L is slow on a CPU (seconds per image),
so it runs on a few images only (``--vit-images``).

FLOPs per image are counted by ``torch.utils.flop_counter`` on the real architectures (on the
``meta`` device: nothing is computed), as 2 × multiply-adds.

Usage:
    python -m benchmarks.extract [--images 64] [--vit-images 4] [--batch 32] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks._harness import child, cpu_name, medians, run_child

DATA_DIR = os.environ.get("SHARDEVAL_BENCH_DATA", "bench-data")

#: GPU peaks the roofline assumes (NVIDIA H100 SXM, dense, published figures).
GPU_PEAKS = {"H100 SXM fp32 (CUDA cores)": 67e12, "H100 SXM tf32 tensor cores": 495e12}

#: ViT-L/14 (both DINOv2 and CLIP): width, depth, MLP width, patch.
VIT_L = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
         "intermediate_size": 4096, "patch_size": 14}  # fmt: skip


def _images(n: int, seed: int = 0, side: int = 256) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def _png_folder(n: int) -> str:
    from PIL import Image

    folder = os.path.join(DATA_DIR, f"extract-png-{n}")
    if len(os.listdir(folder) if os.path.isdir(folder) else []) == n:
        return folder
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(_images(n)):
        Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.png"))
    return folder


def _inception_weights() -> tuple[str, bool]:
    """(weights file, real?) — the cached file, or random weights in a temporary file."""
    import torch

    from shardeval.kernels.encoders import WeightsError, locate_weights
    from shardeval.kernels.encoders.inception import random_state_dict

    try:
        return locate_weights("inception"), True
    except WeightsError:
        path = os.path.join(tempfile.mkdtemp(), "random-inception.pth")
        torch.save(random_state_dict(0), path)
        return path, False


def _vit(name: str, meta: bool = False) -> tuple[Any, bool]:
    """(network, real?) of a ViT encoder: the cached weights, or the architecture at random."""
    import torch

    from shardeval.kernels.encoders import WeightsError, locate_weights
    from shardeval.kernels.encoders import vit as v

    if not meta:
        try:
            path = locate_weights(name)
            return (v.load_dinov2(path) if name == "dinov2-vitl14" else v.load_clip(path)), True
        except WeightsError:
            pass
    import transformers

    with torch.device("meta") if meta else torch.device("cpu"):
        if name == "dinov2-vitl14":
            model = transformers.Dinov2Model(transformers.Dinov2Config(image_size=518, **VIT_L))
            v.use_hub_interpolation(model)
            return v.DinoV2Features(model).eval(), False
        config = transformers.CLIPVisionConfig(image_size=336, projection_dim=768, **VIT_L)
        return v.ClipFeatures(transformers.CLIPVisionModelWithProjection(config)).eval(), False


def _encoder(name: str) -> tuple[Any, bool]:
    from functools import partial

    from shardeval.kernels.encoders import ENCODERS, Encoder, load_encoder
    from shardeval.kernels.encoders import resize as pre

    if name == "inception":
        path, real = _inception_weights()
        return load_encoder("inception", path), real
    network, real = _vit(name)
    spec = ENCODERS[name]
    prep = partial(pre.dinov2 if name == "dinov2-vitl14" else pre.clip, size=spec.size)
    return Encoder(spec, spec.default_resize, network, prep, "cpu"), real


def _timed_encode(name: str, n: str, batch: str) -> dict[str, Any]:
    import torch

    # One thread: the rate per core. Extraction runs one single-threaded task per core (as
    # the engine budgets threads), which on this 2-core machine beats one two-threaded forward.
    torch.set_num_threads(1)
    encoder, real = _encoder(name)
    images = _images(int(n))
    encoder.encode(images[:1], 1)  # warm-up: allocator, thread pool
    start = time.perf_counter()
    encoder.encode(images, int(batch))
    seconds = time.perf_counter() - start
    return {"images_per_s": int(n) / seconds, "real_weights": real}


def _timed_extract(n: str, batch: str) -> dict[str, Any]:
    from shardeval.pipeline.images.extract import extract_features

    folder = _png_folder(int(n))
    weights, real = _inception_weights()
    out = os.path.join(tempfile.mkdtemp(), "features.zarr")
    start = time.perf_counter()
    extract_features(folder, out, weights=weights, batch_size=int(batch), device="cpu")
    seconds = time.perf_counter() - start
    return {"images_per_s": int(n) / seconds, "real_weights": real}


def _timed_decode(n: str, batch: str) -> dict[str, Any]:
    from shardeval.pipeline.images.sources import open_images

    refs = open_images(_png_folder(int(n))).refs(range(int(n)))
    start = time.perf_counter()
    refs.read(threads=1)
    return {"images_per_s": int(n) / (time.perf_counter() - start), "real_weights": None}


def _method(name: str) -> Any:
    if name == "decode":
        return _timed_decode
    if name == "inception-extract":
        return _timed_extract
    return lambda n, batch: _timed_encode(name, n, batch)


METHODS = ("decode", "inception", "inception-extract", "dinov2-vitl14", "clip-vitl14-336")


def flops_per_image() -> dict[str, float]:
    """FLOPs (2 × multiply-adds) of one forward pass per image, counted on the architectures
    (meta tensors). ViTs are counted only where ``transformers`` is installed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from shardeval.kernels.encoders import ENCODERS
    from shardeval.kernels.encoders.inception import FIDInception

    out = {}
    nets: dict[str, Any] = {}
    with torch.device("meta"):
        nets["inception"] = FIDInception().eval()
    try:
        for name in ("dinov2-vitl14", "clip-vitl14-336"):
            nets[name] = _vit(name, meta=True)[0]
    except ImportError:
        pass
    for name, net in nets.items():
        side = ENCODERS[name].size
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.empty(1, 3, side, side, device="meta"))
        out[name] = float(counter.get_total_flops())
    return out


def vit_flops(tokens: int, width: int = 1024, depth: int = 24, mlp: int = 4096) -> float:
    """Analytic FLOPs of a ViT's blocks: per layer QKV + output projections (4·N·w²), MLP
    (2·N·w·mlp) and attention (2·N²·w) multiply-adds, × 2 for FLOPs; the patch embedding and
    norms are below 1%."""
    macs = depth * (4 * tokens * width**2 + 2 * tokens * width * mlp + 2 * tokens**2 * width)
    return 2.0 * macs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images for the Inception runs")
    parser.add_argument("--vit-images", type=int, default=4, help="images for the ViT runs")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "N", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch  # noqa: F401  (imports outside the timed region)

        import shardeval.kernels.encoders.inception
        import shardeval.pipeline.images.extract  # noqa: F401

        child({m: _method(m) for m in METHODS}, args.child[0], args.child[1:])
        return
    import importlib.util

    has_vit = importlib.util.find_spec("transformers") is not None
    print(f"# {cpu_name()}; batch {args.batch}; 256 x 256 images; medians")
    print(f"{'method':<18} {'images':>6} {'images/s':>9} {'peak MiB':>9}  weights")
    for method in METHODS:
        vit = method.endswith(("vitl14", "336"))
        if vit and not has_vit:
            print(f"{method:<18} {'-':>6} {'-':>9} {'-':>9}  skipped: transformers not installed")
            continue
        n = args.vit_images if vit else args.images
        if method in ("decode", "inception-extract"):
            _png_folder(n)
        runs = [run_child("benchmarks.extract", method, n, args.batch) for _ in range(args.repeats)]
        med = medians(runs)
        value = runs[0]["value"]
        rate = float(np.median([r["value"]["images_per_s"] for r in runs]))
        weights = {True: "real", False: "random", None: "-"}[value["real_weights"]]
        print(f"{method:<18} {n:>6} {rate:>9.2f} {med['peak_rss_mib']:>9.0f}  {weights}")
    print()
    print("# ESTIMATE, not a measurement: GPU roofline from FLOPs per image (compute-bound,")
    print("# at 100% of peak; real runs reach perhaps 30-60% and need the CPU to decode as fast)")
    counted = flops_per_image()
    analytic = {"dinov2-vitl14": vit_flops(1 + 16 * 16), "clip-vitl14-336": vit_flops(1 + 24 * 24)}
    for name in ("inception", "dinov2-vitl14", "clip-vitl14-336"):
        flops = counted.get(name, analytic.get(name))
        how = "counted" if name in counted else "analytic"
        bounds = ", ".join(
            f"{label}: {peak / flops:,.0f} img/s" for label, peak in GPU_PEAKS.items()
        )
        print(f"{name:<16} {flops / 1e9:7.1f} GFLOP/image ({how}); {bounds}")


if __name__ == "__main__":
    main()
