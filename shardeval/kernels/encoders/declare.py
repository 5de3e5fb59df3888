"""Any encoder as a declaration: a name (a registered one, or a library's model), a declaration,
or a user's torch module or callable (:func:`python_encoder`), whose weights' digest is taken
from its tensors once, when it is declared."""

from __future__ import annotations

from typing import Any

from shardeval.kernels.encoders.errors import EncoderError
from shardeval.kernels.encoders.registry import (
    NAME_PATTERN,
    PYTHON,
    EncoderSpec,
    Resize,
    WeightsSource,
    function_ref,
    known_forms,
    spec_by_name,
)
from shardeval.kernels.encoders.weights import tensors_digest


def resolve_encoder(encoder: Any) -> EncoderSpec:
    """The declaration of an encoder given by name, declaration or module.

    Args:
        encoder: a registered name (:data:`~shardeval.kernels.encoders.registry.ENCODERS`),
            ``timm:NAME``, ``open_clip:NAME:PRETRAINED``, ``hf:MODEL_ID``, a declaration
            (:class:`~shardeval.kernels.encoders.registry.EncoderSpec`), or a
            ``torch.nn.Module`` or callable (declared as :func:`python_encoder` declares it,
            its weights' digest computed now).

    Raises:
        EncoderError: an unknown name, in one line listing the known ones; a module that
            cannot be declared (see :func:`python_encoder`).
    """
    if isinstance(encoder, EncoderSpec):
        return encoder
    if isinstance(encoder, str):
        return spec_by_name(encoder)
    if callable(encoder):
        return python_encoder(encoder)
    raise EncoderError(
        f"«encoder» must be a name ({known_forms()}) or, in Python, a torch module or "
        f"callable; got {type(encoder).__name__}"
    )


def resolve_resize(encoder: Any, resize: str | None) -> str:
    """The preprocessing mode an encoder runs with: ``resize``, or the encoder's default.

    Raises:
        EncoderError: an unknown encoder, or a mode it does not have.
    """
    return resolve_encoder(encoder).resolve_resize(resize)


def python_encoder(
    module: Any,
    *,
    name: str | None = None,
    digest: str | None = None,
    size: int | None = None,
    dim: int | None = None,
    input: str = "float",
) -> EncoderSpec:
    """Declare a torch module or callable as an encoder.

    It is called on (B, 3, H, W) images, float32 in [0, 1] (``input="float"``, as
    torchvision's ``ToTensor`` makes them) or uint8 (``input="uint8"``), on the device its
    parameters are on, in inference mode, and must return (B, d) rows. It is never moved or
    put in another mode: give it in eval mode.

    Args:
        module: a ``torch.nn.Module`` or any callable.
        name: what features record (``python:NAME``); default: its class's (or function's)
            qualified name.
        digest: its weights' digest; default for a module: :func:`~shardeval.kernels.encoders.
            weights.tensors_digest` of its state dict, computed now (declare the encoder again
            after changing its weights). Required for a callable that is not a module.
        size: resize every image to ``size`` × ``size`` (PIL's antialiased bicubic) first;
            default: images go in at their own size (a batch's images must share it).
        dim: features per image, where known (default: one image through it tells).
        input: ``float`` or ``uint8``.

    Returns:
        The encoder's declaration (source ``python``, weights status ``unpinned``).

    Raises:
        EncoderError: not callable; a module in training mode; a callable that is not a module
            without ``digest``; a name, size, dim or input that cannot be.

    Example:
        >>> import torch
        >>> mean_rgb = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> spec = python_encoder(mean_rgb.eval(), name="mean-rgb", dim=3)
        >>> spec.name, spec.source, spec.digest.startswith("sha256:")
        ('python:mean-rgb', 'python', True)
    """
    if not callable(module):
        raise EncoderError(f"«encoder» must be callable, got {type(module).__name__}")
    is_module = _is_torch_module(module)
    if is_module and module.training:
        raise EncoderError(
            f"«encoder» is a torch module in training mode ({type(module).__name__}): dropout "
            "and batch norm would change its features from call to call; call .eval() on it "
            "first"
        )
    label = name if name is not None else _qualified_name(module)
    if not isinstance(label, str) or not NAME_PATTERN.fullmatch(label) or ":" in label:
        raise EncoderError(
            f"an encoder's name is letters, digits and . _ - + / @ (no ':'), got {label!r}"
        )
    for what, value in (("size", size), ("dim", dim)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise EncoderError(f"an encoder's {what} is a positive integer, got {value!r}")
    if input not in ("float", "uint8"):
        raise EncoderError(f"an encoder's input is 'float' or 'uint8', got {input!r}")
    if digest is None:
        if not is_module:
            raise EncoderError(
                f"«encoder» {label!r} is a callable, not a torch module, so its weights cannot "
                "be digested: declare them with shardeval.encoder(fn, name=..., digest=...) "
                "(any string that changes when they do)"
            )
        digest = tensors_digest(module)
    elif not isinstance(digest, str) or not digest:
        raise EncoderError(f"an encoder's digest is a non-empty string, got {digest!r}")
    options = (("uint8", input == "uint8"),)
    if size is None:
        resize = Resize("none", function_ref("resize:pixels"), "the images as they are", options)
    else:
        resize = Resize(
            f"pil-bicubic-{size}", function_ref("resize:pil_pixels"), "PIL bicubic", options
        )
    full = f"{PYTHON}:{label}"
    return EncoderSpec(
        name=full,
        title=full,
        dim=dim,
        feature_extractor=full,
        size=size,
        resizes=(resize,),
        network="",
        weights=WeightsSource(PYTHON),
        summary="the user's module",
        source=PYTHON,
        module=module,
        digest=digest,
        input=input,
    )


def _is_torch_module(x: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a module made without torch cannot be one
    return torch is not None and isinstance(x, torch.nn.Module)


def _qualified_name(x: Any) -> str:
    owner = x if hasattr(x, "__qualname__") else type(x)
    return (
        f"{getattr(owner, '__module__', '') or ''}.{owner.__qualname__}".strip(".")
        .replace("<", "")
        .replace(">", "")
    )
