"""The encoders: one declaration (:class:`EncoderSpec`) per encoder, everything else made from it.

A declaration says what an encoder is before anything is loaded: its name, the features it gives
(dimension, the label stores carry), its preprocessing modes (``«resize»``, the first the
default), the network's loader, where its weights are when none are given and which digest
``shardeval fetch`` pins for them, and its class logits if it has any. The names and help texts
of the command line, the checks of the ``encoder`` option, the weights' lookup, the weights'
status in reports and the arrays of an extraction store all read these declarations; adding an
encoder is one entry of :data:`ENCODERS` (and its weights source: a ``fetch`` artifact, or a
Hugging Face model id).

Besides the registered names, an encoder may be the user's own
(:func:`~shardeval.kernels.encoders.declare.resolve_encoder`):

* ``timm:NAME``, ``open_clip:NAME:PRETRAINED``, ``hf:MODEL_ID``: a model of that library,
  loaded from the local cache only (nothing is downloaded), with the library's own
  preprocessing for evaluation (:mod:`shardeval.kernels.encoders.providers`);
* in Python, a ``torch.nn.Module`` or callable taking (B, 3, H, W) images and returning (B, d)
  rows, declared with :func:`~shardeval.kernels.encoders.declare.python_encoder`.

Their features are recorded with their name (``timm:resnet50.a1_in1k``, ``python:NAME``),
their source and their weights' digest; no public digest is pinned for them, so reports call
their weights ``unpinned``. This module imports nothing heavy: the command line reads it to
list the encoders.

Example:
    >>> sorted(ENCODERS)  # doctest: +NORMALIZE_WHITESPACE
    ['clip-vitl14-336', 'dinov2-vitb14', 'dinov2-vitg14', 'dinov2-vitl14', 'dinov2-vits14',
     'inception', 'siglip-base-patch16-224', 'siglip-so400m-patch14-384']
    >>> ENCODERS["inception"].dim, ENCODERS["inception"].default_resize
    (2048, 'legacy-pytorch')
    >>> spec_by_name("timm:resnet18").source
    'timm'
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardeval.kernels.encoders.errors import EncoderError

#: Where the functions the declarations name live (``module:function``, imported on use).
_KERNELS = "shardeval.kernels.encoders"

#: What an encoder's source is: a registered encoder, a library's model, the user's module.
REGISTERED, PYTHON = "shardeval", "python"

#: The libraries whose models are encoders by name (``timm:NAME`` ...), and how to write them.
PROVIDER_FORMS = {
    "timm": "timm:NAME",
    "open_clip": "open_clip:NAME:PRETRAINED",
    "hf": "hf:MODEL_ID",
}


@dataclass(frozen=True)
class Resize:
    """One preprocessing mode: one decoded image in, the network's input out.

    Attributes:
        name: the ``«resize»`` value.
        function: ``module:function`` called as ``function(image, size, **options)``,
            (H, W, 3) uint8 → (3, S, S) tensor; empty: the network's own ``preprocess``
            (a library's model brings its transform).
        summary: what it reproduces, for the help.
        options: keyword arguments of ``function``.
    """

    name: str
    function: str
    summary: str = ""
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's weights are when none are given, and what is pinned of them.

    Attributes:
        kind: ``torch-hub`` (a checkpoint file in torch hub's checkpoint folder), ``hf`` (a
            Hugging Face model snapshot in its hub cache), ``timm`` / ``open_clip`` (a
            library's own weights file in the caches it downloads to), ``python`` (the module
            holds them).
        file: the checkpoint's file name (``torch-hub``).
        model_id: the Hugging Face model id (``hf``).
        fetch: the name ``shardeval fetch`` downloads them by; its pinned SHA-256 decides
            whether weights are the published file. None: nothing pinned (``unpinned``).
        origin: where else a user finds the file, for the message when it is missing.
        random: ``module:function(seed)`` building the network with seeded random weights
            (``«weights='random:SEED'»``, a smoke test), or "" where that is not offered.
        locate: ``module:function(spec, weights)`` finding them where a library caches its
            downloads (``timm``, ``open_clip``), or "" (the kind says where).
    """

    kind: str
    file: str = ""
    model_id: str = ""
    fetch: str | None = None
    origin: str = ""
    random: str = ""
    locate: str = ""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is, before anything is loaded.

    Attributes:
        name: the ``«encoder»`` name features record (``inception``, ``timm:NAME``,
            ``python:NAME``).
        title: what it is, for people (``the FID Inception``).
        dim: features per image; None where it is known only once the network ran (a user's
            encoder: one image through it tells).
        feature_extractor: the label stores and reports carry.
        size: the side of the square input the network sees (None: the images' own, or the
            library's transform decides).
        resizes: its preprocessing modes, the default first.
        network: ``module:function`` loading the network from its located weights
            (``function(spec, located)``); "" for a module given in Python.
        weights: where its weights are and what is pinned of them.
        logits: class logits per image a forward pass also gives (0: none).
        logits_note: what those logits are (an extraction store's ``logits`` attribute).
        spatial: sFID's spatial values per image a forward pass also gives (0: none).
        spatial_note: what they are (an extraction store's ``spatial`` attribute).
        summary: what its features are, for the help (``FID's 2048-d pool3``).
        source: :data:`REGISTERED`, a library of :data:`PROVIDER_FORMS`, or :data:`PYTHON`.
        module: the user's module or callable (source ``python``).
        digest: the weights' digest, where it is known before anything is located (source
            ``python``: computed once, when declared).
        input: what the user's callable takes: ``float`` (float32 in [0, 1]) or ``uint8``.
    """

    name: str
    title: str
    dim: int | None
    feature_extractor: str
    size: int | None
    resizes: tuple[Resize, ...]
    network: str
    weights: WeightsSource
    logits: int = 0
    logits_note: str = ""
    spatial: int = 0
    spatial_note: str = ""
    summary: str = ""
    source: str = REGISTERED
    module: Any = field(default=None, compare=False, repr=False)
    digest: str | None = None
    input: str = "float"

    def __post_init__(self) -> None:
        # A declaration that cannot run is refused where it is written, never dispatched.
        if not self.resizes:
            raise ValueError(f"encoder {self.name!r} declares no preprocessing")
        if not self.network and self.source != PYTHON:
            raise ValueError(f"encoder {self.name!r} declares no network loader")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"encoder {self.name!r} declares dim {self.dim}")
        if self.logits and not self.logits_note:
            raise ValueError(f"encoder {self.name!r} has logits but does not say what they are")
        if self.spatial and not self.spatial_note:
            raise ValueError(f"encoder {self.name!r} has spatial features but does not say what")

    @property
    def default_resize(self) -> str:
        return self.resizes[0].name

    @property
    def resize_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resizes)

    def resolve_resize(self, resize: str | None) -> str:
        """The preprocessing mode this encoder runs with: ``resize``, or its default.

        Raises:
            EncoderError: a mode it does not have.
        """
        if resize is None:
            return self.default_resize
        if resize not in self.resize_names:
            raise EncoderError(
                f"«resize='{resize}'» does not apply to «encoder='{self.name}'», whose "
                f"preprocessing is {' or '.join(self.resize_names)}"
                + (" (fixed to match its reference)" if len(self.resizes) == 1 else "")
            )
        return resize

    def resize_of(self, mode: str) -> Resize:
        return self.resizes[self.resize_names.index(self.resolve_resize(mode))]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        # What the encoder is, not the bytes of a user's module (which may be large).
        return ("shardeval.encoder", self.name, self.source, self.digest, id(self.module))


def function_ref(name: str) -> str:
    """``module:function`` of a function in this package (``resize:clean``)."""
    return f"{_KERNELS}.{name}"


#: The FID Inception's preprocessing modes: pytorch-fid's (the default), clean-fid's, and TF
#: 1.x's bilinear of the original FID code (torch-fidelity's); see
#: :mod:`shardeval.kernels.encoders.resize`.
_INCEPTION_RESIZES = (
    # legacy-pytorch first: with this network it reproduces pytorch-fid end to end, the
    # implementation behind most published FIDs.
    Resize(
        "legacy-pytorch",
        function_ref("resize:legacy_pytorch"),
        "pytorch-fid's bilinear resize, its features exactly",
    ),
    Resize("clean", function_ref("resize:clean"), "clean-fid's PIL bicubic"),
    Resize(
        "legacy-tensorflow",
        function_ref("resize:legacy_tensorflow"),
        "TF 1.x bilinear of the original FID code, as torch-fidelity",
    ),
)

_REGISTERED = (
    EncoderSpec(
        name="inception",
        title="the FID Inception",
        dim=2048,
        feature_extractor="inception-2015-12-05/pool3",
        size=299,
        resizes=_INCEPTION_RESIZES,
        network=function_ref("inception:load_network"),
        weights=WeightsSource(
            "torch-hub",
            file="pt_inception-2015-12-05-6726825d.pth",
            fetch="inception",
            origin="pytorch-fid's release file",
            random=function_ref("inception:random_inception"),
        ),
        logits=1008,
        logits_note=(
            "pool3 · fc.weightᵀ of the TF Inception graph, without the fc bias: the logits "
            "the Inception Score takes (Salimans et al.'s code, torch-fidelity's "
            "logits_unbiased)"
        ),
        # 17 × 17 × 7 (inception.SPATIAL_DIM; not imported: that module loads torch)
        spatial=2023,
        spatial_note=(
            "channels 0-6 of the TF Inception graph's mixed_6/conv (Mixed_6d's 1x1 branch after "
            "batch norm and ReLU), 17 x 17 x 7 flattened height-width-channel: sFID's features "
            "as guided-diffusion's evaluator takes them (docs/sfid.md)"
        ),
        summary="FID's 2048-d pool3, as pytorch-fid, clean-fid and torch-fidelity",
    ),
    *(
        EncoderSpec(
            name=f"dinov2-vit{size}14",
            title=f"DINOv2 ViT-{size.upper()}/14",
            dim=dim,
            feature_extractor=f"dinov2-vit{size}14/cls",
            size=224,
            resizes=(Resize("pil-bicubic-224", function_ref("resize:dinov2"), "dgm-eval's"),),
            network=function_ref("vit:dinov2_network"),
            weights=WeightsSource("hf", model_id=f"facebook/dinov2-{model}"),
            summary=f"{dim}-d CLS, as dgm-eval{note}",
        )
        # The four sizes of the DINOv2 paper (torch hub's dinov2_vit{s,b,l,g}14); ViT-L/14 is
        # dgm-eval's FD-DINOv2, listed first.
        for size, dim, model, note in (
            ("l", 1024, "large", " (its FD-DINOv2)"),
            ("s", 384, "small", ""),
            ("b", 768, "base", ""),
            ("g", 1536, "giant", ""),
        )
    ),
    EncoderSpec(
        name="clip-vitl14-336",
        title="CLIP ViT-L/14-336",
        dim=768,
        feature_extractor="clip-vitl14-336/image-embeds-l2",
        size=336,
        resizes=(Resize("center-crop-pil-bicubic-336", function_ref("resize:clip"), "CMMD's"),),
        network=function_ref("vit:clip_network"),
        weights=WeightsSource("hf", model_id="openai/clip-vit-large-patch14-336"),
        summary="768-d unit-norm embeddings, as CMMD",
    ),
    *(
        EncoderSpec(
            name=f"siglip-{model}",
            title=f"SigLIP {title}",
            dim=dim,
            feature_extractor=f"siglip-{model}/pooled",
            size=size,
            resizes=(
                Resize(
                    f"siglip-pil-bicubic-{size}",
                    function_ref("resize:siglip"),
                    "transformers' SiglipImageProcessor",
                ),
            ),
            network=function_ref("vit:siglip_network"),
            weights=WeightsSource("hf", model_id=f"google/siglip-{model}"),
            summary=f"{dim}-d raw attention-pooled output, as transformers' SiglipVisionModel",
        )
        # The vision towers of SigLIP (Zhai et al. 2023); shape-optimised So400m/14 at 384 px
        # first, the one vision-language models build on.
        for model, title, dim, size in (
            ("so400m-patch14-384", "So400m/14-384", 1152, 384),
            ("base-patch16-224", "B/16-224", 768, 224),
        )
    ),
)

#: The registered encoders by name (the first is the default of ``extract``).
ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in _REGISTERED}

#: The encoder of image inputs when none is named.
DEFAULT_ENCODER = "inception"


# -------------------------------------------------------------------------------------------
# names, help, resolution


def known_forms() -> str:
    """The encoders a name may give, in one phrase: the registered names and the forms of the
    libraries' models."""
    return f"{', '.join(sorted(ENCODERS))}, or {', '.join(PROVIDER_FORMS.values())}"


def encoder_help() -> str:
    """The help of the ``encoder`` option, made from the declarations."""
    registered = ", ".join(
        f"{s.name} ({'default: ' if s.name == DEFAULT_ENCODER else ''}{s.summary})"
        for s in ENCODERS.values()
    )
    forms = ", ".join(PROVIDER_FORMS.values())
    return f"{registered}; or {forms}: a model of that library from the local cache"


def resize_names() -> tuple[str, ...]:
    """Every registered encoder's preprocessing modes, each encoder's default first."""
    return tuple(r.name for s in ENCODERS.values() for r in s.resizes)


def resize_help() -> str:
    """The help of the ``resize`` option, made from the declarations."""
    parts = []
    for spec in ENCODERS.values():
        modes = [f"{r.name} ({r.summary})" if r.summary else r.name for r in spec.resizes]
        if len(modes) > 1:
            modes[0] = modes[0].replace(" (", " (default; ", 1)
            parts.append(f"{spec.name}: {', '.join(modes)}")
    fixed = ", ".join(s.name for s in ENCODERS.values() if len(s.resizes) == 1)
    return "; ".join(parts) + (f"; fixed for {fixed}" if fixed else "")


NAME_PATTERN = re.compile(r"\w[\w.+/@-]*")


def name_problem(name: object) -> str | None:
    """Why ``name`` names no encoder (one line listing those it may name), or None."""
    if not isinstance(name, str):
        return f"expected an encoder name, got {name!r}"
    if name in ENCODERS:
        return None
    source, sep, rest = name.partition(":")
    if sep and source in PROVIDER_FORMS:
        parts = rest.split(":")
        if not rest or not all(NAME_PATTERN.fullmatch(p) for p in parts[:1]):
            return f"{name!r} names no model; write {PROVIDER_FORMS[source]}"
        if source == "open_clip" and len(parts) == 1:
            return (
                f"{name!r} names no weights, and open_clip would build random ones: write "
                f"{PROVIDER_FORMS[source]} (a tag, or a checkpoint file)"
            )
        if (len(parts) > 1) != (source == "open_clip") or not all(parts):
            return f"{name!r}: write {PROVIDER_FORMS[source]}"
        return None
    return f"unknown encoder {name!r}; choose one of {known_forms()}"


def spec_by_name(name: str) -> EncoderSpec:
    """The declaration of an encoder given by name: a registered one, or a library's model
    (``timm:NAME``, ``open_clip:NAME:PRETRAINED``, ``hf:MODEL_ID``).

    Raises:
        EncoderError: an unknown name, in one line listing the known ones.
    """
    problem = name_problem(name)
    if problem is not None:
        raise EncoderError(problem)
    if name in ENCODERS:
        return ENCODERS[name]
    source, _, rest = name.partition(":")
    return _provider_spec(source, rest)


def load_function(reference: str) -> Callable[..., Any]:
    """The function a declaration names as ``module:function``."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


# -------------------------------------------------------------------------------------------
# the libraries' models and the user's modules


def _provider_spec(source: str, rest: str) -> EncoderSpec:
    """A library's model as an encoder: its name, its own transform, weights in its cache."""
    name = f"{source}:{rest}"
    outputs = {
        "timm": "pooled features (num_classes=0)",
        "open_clip": "encode_image embeddings",
        "hf": "image features (get_image_features, else pooler_output)",
    }
    return EncoderSpec(
        name=name,
        title=name,
        dim=None,
        feature_extractor=name,
        size=None,
        resizes=(Resize(source, "", f"{source}'s own evaluation transform"),),
        network=function_ref(f"providers:load_{source}"),
        weights=WeightsSource(
            source,
            model_id=rest if source == "hf" else "",
            locate="" if source == "hf" else function_ref(f"providers:locate_{source}"),
        ),
        summary=outputs[source],
        source=source,
    )
