"""Encoders of other libraries by name, from the local cache only: ``timm:NAME``,
``open_clip:NAME:PRETRAINED`` and ``hf:MODEL_ID``
(:func:`~shardeval.kernels.encoders.declare.resolve_encoder` declares them).

Each is loaded from a weights file or model folder found where the library itself caches its
downloads, never downloaded: a missing one is a one-line :class:`WeightsError` naming the file
or model id to cache and the ``«weights»`` alternative; a missing library a
:class:`MissingDependencyError` naming what to install. Each takes the library's own evaluation
preprocessing, so its features are the ones the library gives:

* ``timm:NAME``: ``timm.create_model(NAME, pretrained=True, num_classes=0)`` with the weights
  file found in the Hugging Face cache (``timm/...`` models) or torch hub's checkpoint folder,
  the pooled features (B, num_features); preprocessing
  ``timm.data.create_transform(**resolve_data_config(model=model))``.
* ``open_clip:NAME:PRETRAINED``: ``open_clip.create_model_and_transforms(NAME, pretrained=FILE)``
  with PRETRAINED a tag (its file found in the Hugging Face cache or ``~/.cache/clip``) or a
  checkpoint file; ``model.encode_image`` (not normalised); preprocessing: its evaluation
  transform. Without PRETRAINED open_clip would build random weights, so it is required.
* ``hf:MODEL_ID``: the checkpoint's own base-model class (config.json ``architectures``; else
  ``transformers.AutoModel``) and its ``AutoImageProcessor`` (Pillow backend) from the cached
  snapshot (or «weights=DIR»); ``get_image_features`` where the model has it (CLIP), else its
  ``image_embeds`` (a CLIP vision tower with projection), else ``pooler_output``.

The weights' digest is the file's (or folder's) SHA-256, as for the registered encoders; no
public digest is pinned for them (status ``unpinned``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from shardeval.kernels.encoders.errors import (
    EncoderError,
    MissingDependencyError,
    WeightsError,
)
from shardeval.kernels.encoders.weights import (
    check_hf_folder,
    hf_hub_cache,
    hf_snapshot,
    torch_home,
)

if TYPE_CHECKING:
    from shardeval.kernels.encoders.registry import EncoderSpec


def _library(module: str, spec: EncoderSpec, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"«encoder='{spec.name}'» needs the {package} package, which is not installed: "
            f"pip install {package}"
        ) from exc


def _given_file(spec: EncoderSpec, weights: str | os.PathLike[str]) -> str:
    path = os.path.abspath(os.path.expanduser(os.fspath(weights)))
    if not os.path.isfile(path):
        raise WeightsError(f"«weights» for {spec.name} must be an existing file, not {path!r}")
    return path


def _cached(spec: EncoderSpec, what: str, candidates: list[str], fetch_hint: str) -> str:
    """The first existing file of ``candidates``, or a one-line error naming what to cache."""
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise WeightsError(
        f"the {spec.name} weights ({what}) are not in the local cache ({candidates[0]!r} is "
        f"missing): {fetch_hint} on a machine with network and copy the cache here, or pass "
        "«weights=FILE»; nothing is downloaded"
    )


def _hf_files(repo: str, names: tuple[str, ...]) -> list[str]:
    """Where files of a Hugging Face repo are in the local cache (its snapshot's, in order)."""
    snapshot = hf_snapshot(repo)
    base = snapshot or os.path.join(hf_hub_cache(), "models--" + repo.replace("/", "--"))
    return [os.path.join(base, n) for n in names]


class _Features(nn.Module):
    """A library's model as an encoder: its forward gives the (B, d) features, ``preprocess``
    the library's evaluation transform of one (H, W, 3) uint8 image."""

    def __init__(self, model: nn.Module, transform: Any, features: Any) -> None:
        super().__init__()
        self.model = model
        self.transform = transform
        self._features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(self.model, x)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        from PIL import Image

        from shardeval.kernels.encoders.resize import check_rgb

        out = self.transform(Image.fromarray(check_rgb(image)))
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))


def _called(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _encode_image(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.encode_image(x)  # type: ignore[operator]


def _frozen(model: nn.Module) -> nn.Module:
    return model.to(torch.float32).eval().requires_grad_(False)


# -------------------------------------------------------------------------------------------
# timm


def _timm_name(spec: EncoderSpec) -> str:
    return spec.name.partition(":")[2]


def locate_timm(spec: EncoderSpec, weights: str | os.PathLike[str] | None) -> str:
    """The weights file of ``timm:NAME``: ``weights``, else the file timm would download, in
    the Hugging Face cache (``timm/...`` repos) or torch hub's checkpoint folder.

    Raises:
        MissingDependencyError: timm is not installed.
        WeightsError: NAME is not a timm model with pretrained weights, or they are not cached.
    """
    timm = _library("timm", spec, "timm")
    if weights is not None:
        return _given_file(spec, weights)
    name = _timm_name(spec)
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as exc:
        raise WeightsError(
            f"«encoder='{spec.name}'»: timm has no pretrained weights of that name "
            f"({str(exc).strip()}); timm.list_pretrained() lists them"
        ) from exc
    if cfg is None or not timm.is_model(name.split(".")[0]):
        raise WeightsError(
            f"«encoder='{spec.name}'» is not a timm model with pretrained weights; "
            "timm.list_pretrained() lists them"
        )
    repo = (cfg.hf_hub_id or "").split("@")[0]
    if repo:
        names = (
            (cfg.hf_hub_filename,)
            if getattr(cfg, "hf_hub_filename", None)
            else ("model.safetensors", "pytorch_model.bin")
        )
        return _cached(
            spec,
            f"Hugging Face model {repo!r}, file {' or '.join(names)}",
            _hf_files(repo, names),
            f"`huggingface-cli download {repo}` (HF_HOME moves the cache)",
        )
    if cfg.url:
        path = os.path.join(torch_home(), "hub", "checkpoints", os.path.basename(cfg.url))
        return _cached(spec, f"{cfg.url}", [path], f"timm.create_model({name!r}, pretrained=True)")
    raise WeightsError(f"«encoder='{spec.name}'»: timm names no file for its weights")


def load_timm(spec: EncoderSpec, path: str) -> nn.Module:
    """``timm:NAME`` with the weights file ``path``: pooled features and timm's transform.

    Raises:
        MissingDependencyError: timm is not installed.
        WeightsError: the file does not load into the model.
    """
    timm = _library("timm", spec, "timm")
    name = _timm_name(spec)
    try:
        model = timm.create_model(
            name,
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay={"file": path, "source": "", "hf_hub_id": None},
        )
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"weights {path!r} cannot be loaded as {spec.name}: {reason}") from exc
    model = _frozen(model)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    return _Features(model, transform, _called)


# -------------------------------------------------------------------------------------------
# open_clip


def _open_clip_name(spec: EncoderSpec) -> tuple[str, str]:
    model, _, pretrained = spec.name.partition(":")[2].partition(":")
    return model, pretrained


def locate_open_clip(spec: EncoderSpec, weights: str | os.PathLike[str] | None) -> str:
    """The checkpoint of ``open_clip:NAME:PRETRAINED``: ``weights``, PRETRAINED when it is a
    file, else the file of that tag in the Hugging Face cache or ``~/.cache/clip``.

    Raises:
        MissingDependencyError: open_clip is not installed.
        WeightsError: an unknown model or tag, or its file is not cached.
    """
    open_clip = _library("open_clip", spec, "open_clip_torch")
    model, pretrained = _open_clip_name(spec)
    if weights is not None:
        return _given_file(spec, weights)
    if os.path.isfile(os.path.expanduser(pretrained)):
        return os.path.abspath(os.path.expanduser(pretrained))
    if model not in open_clip.list_models():
        raise WeightsError(
            f"«encoder='{spec.name}'»: open_clip has no model {model!r}; open_clip.list_models() "
            "lists them"
        )
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise WeightsError(
            f"«encoder='{spec.name}'»: open_clip has no weights {pretrained!r} for {model} "
            "(open_clip.list_pretrained_tags_by_model lists them), and no such file exists"
        )
    hub = cfg.get("hf_hub", "")
    if hub:
        # open_clip writes 'org/repo/' (its default file) or 'org/repo/file.bin'
        repo, filename = (hub[:-1], "") if hub.endswith("/") else os.path.split(hub)
        names = (
            ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
            if not filename
            else (os.path.splitext(filename)[0] + ".safetensors", filename)
        )
        return _cached(
            spec,
            f"Hugging Face model {repo!r}, file {' or '.join(names)}",
            _hf_files(repo, names),
            f"`huggingface-cli download {repo}` (HF_HOME moves the cache)",
        )
    url = cfg.get("url", "")
    path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return _cached(
        spec,
        url,
        [path],
        f"open_clip.create_model_and_transforms({model!r}, pretrained={pretrained!r})",
    )


def load_open_clip(spec: EncoderSpec, path: str) -> nn.Module:
    """``open_clip:NAME:PRETRAINED`` with the checkpoint ``path``: ``encode_image`` and
    open_clip's evaluation transform.

    Raises:
        MissingDependencyError: open_clip is not installed.
        WeightsError: the checkpoint does not load into the model.
    """
    open_clip = _library("open_clip", spec, "open_clip_torch")
    model_name, _ = _open_clip_name(spec)
    try:
        model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=path)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"weights {path!r} cannot be loaded as {spec.name}: {reason}") from exc
    return _Features(_frozen(model), transform, _encode_image)


# -------------------------------------------------------------------------------------------
# Hugging Face


def _hf_image_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP-like models' ``get_image_features`` (a tensor, or in recent ``transformers`` an
    output whose ``pooler_output`` holds it), else the model's ``pooler_output``."""
    get = getattr(model, "get_image_features", None)
    out = get(pixel_values=x) if callable(get) else model(pixel_values=x)
    if isinstance(out, torch.Tensor):
        return out
    for key in ("image_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise EncoderError(
        f"the Hugging Face model {type(model).__name__} gives no pooled image features "
        "(get_image_features or pooler_output); give a model that has them, or wrap it as a "
        "module in Python (shardeval.encoder)"
    )


def _hf_model_class(transformers: Any, folder: str) -> Any:
    """The class of the checkpoint's own architecture (config.json ``architectures``) where it
    is a base model (``...Model``, ``...ModelWithProjection``: a CLIP vision tower keeps its
    projection), else ``AutoModel`` (the base of a task model, its head dropped)."""
    import json

    with open(os.path.join(folder, "config.json")) as fh:
        names = json.load(fh).get("architectures") or [""]
    name = str(names[0])
    found = (
        getattr(transformers, name, None) if name.endswith(("Model", "WithProjection")) else None
    )
    return found or transformers.AutoModel


def load_hf(spec: EncoderSpec, folder: str) -> nn.Module:
    """``hf:MODEL_ID`` from its model folder: ``AutoModel`` and its ``AutoImageProcessor``
    (Pillow backend, so that features do not depend on whether torchvision is installed).

    Raises:
        MissingDependencyError: transformers is not installed.
        WeightsError: the folder has no image processor, or cannot be loaded.
    """
    transformers = _library("transformers", spec, "transformers")
    check_hf_folder(folder, f"the {spec.name} weights")
    if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        raise WeightsError(
            f"the {spec.name} weights {folder!r} have no preprocessor_config.json (the model's "
            "image processor, its preprocessing); cache the model's whole snapshot"
        )
    major = int(str(transformers.__version__).split(".")[0])
    backend = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    try:
        model, info = _hf_model_class(transformers, folder).from_pretrained(
            folder, local_files_only=True, output_loading_info=True
        )
        processor = transformers.AutoImageProcessor.from_pretrained(
            folder, local_files_only=True, **backend
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"weights {folder!r} cannot be loaded as {spec.name}: {reason}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # left randomly initialised: refused (a dropped task head is fine)
        raise WeightsError(
            f"weights {folder!r} do not fit {spec.name} (missing: {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); give the model's own Hugging Face folder"
        )

    def transform(image: Any) -> torch.Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return _Features(_frozen(model), transform, _hf_image_features)
