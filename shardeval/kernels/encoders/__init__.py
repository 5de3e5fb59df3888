"""Image encoders: decoded RGB images in, float32 feature rows out, on one device.

Per-batch compute that knows nothing of Dask or Zarr. Every encoder is one declaration of
:mod:`~shardeval.kernels.encoders.registry` (:data:`ENCODERS`): a network plus the exact
preprocessing of the reference tool whose features it reproduces (its ``summary`` names it),
where its weights are, what digest is pinned for them, its dimension and its class logits. The
registered ones reproduce pytorch-fid, clean-fid and torch-fidelity (``inception``, by its
resize modes), dgm-eval (``dinov2-vitl14``; DINOv2's other sizes ``dinov2-vits14``, ``-vitb14``,
``-vitg14`` alike) and CMMD (``clip-vitl14-336``), and SigLIP's vision tower as
``transformers`` runs it (``siglip-so400m-patch14-384``, ``siglip-base-patch16-224``).

Users bring their own: ``timm:NAME``, ``open_clip:NAME:PRETRAINED`` or ``hf:MODEL_ID`` from the
local cache (:mod:`~shardeval.kernels.encoders.providers`), or a torch module or callable in
Python (:func:`~shardeval.kernels.encoders.declare.python_encoder`).

Importing this package imports nothing heavy (the CLI lists the names); torch, Pillow and the
model libraries are imported when an encoder is loaded.

Example:
    >>> from shardeval.kernels.encoders import ENCODERS
    >>> sorted(ENCODERS)  # doctest: +NORMALIZE_WHITESPACE
    ['clip-vitl14-336', 'dinov2-vitb14', 'dinov2-vitg14', 'dinov2-vitl14', 'dinov2-vits14',
     'inception', 'siglip-base-patch16-224', 'siglip-so400m-patch14-384']
    >>> ENCODERS["inception"].dim
    2048
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use: the command line reads the registry alone (its names and
# help), and should not pay for the rest.
_EXPORTS = {
    "Encoder": "encoder",
    "load_encoder": "encoder",
    "module_device": "encoder",
    "DEFAULT_ENCODER": "registry",
    "ENCODERS": "registry",
    "EncoderSpec": "registry",
    "Resize": "registry",
    "WeightsSource": "registry",
    "locate_weights": "weights",
    "python_encoder": "declare",
    "resolve_encoder": "declare",
    "resolve_resize": "declare",
    "RANDOM_WEIGHTS": "weights",
    "EncoderError": "errors",
    "MissingDependencyError": "errors",
    "WeightsError": "errors",
    "check_digest": "weights",
    "random_seed": "weights",
    "tensors_digest": "weights",
    "weights_digest": "weights",
}

if TYPE_CHECKING:
    from shardeval.kernels.encoders.declare import python_encoder, resolve_encoder, resolve_resize
    from shardeval.kernels.encoders.encoder import Encoder, load_encoder, module_device
    from shardeval.kernels.encoders.errors import (
        EncoderError,
        MissingDependencyError,
        WeightsError,
    )
    from shardeval.kernels.encoders.registry import (
        DEFAULT_ENCODER,
        ENCODERS,
        EncoderSpec,
        Resize,
        WeightsSource,
    )
    from shardeval.kernels.encoders.weights import (
        RANDOM_WEIGHTS,
        check_digest,
        locate_weights,
        random_seed,
        tensors_digest,
        weights_digest,
    )

    #: The Inception's resize modes, the default first (from its declaration).
    INCEPTION_RESIZES: tuple[str, ...]


def __getattr__(name: str) -> Any:
    if name == "INCEPTION_RESIZES":
        return __getattr__("ENCODERS")["inception"].resize_names
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "INCEPTION_RESIZES",
    "RANDOM_WEIGHTS",
    "Encoder",
    "EncoderError",
    "EncoderSpec",
    "MissingDependencyError",
    "Resize",
    "WeightsError",
    "WeightsSource",
    "check_digest",
    "load_encoder",
    "locate_weights",
    "module_device",
    "python_encoder",
    "random_seed",
    "resolve_encoder",
    "resolve_resize",
    "tensors_digest",
    "weights_digest",
]
