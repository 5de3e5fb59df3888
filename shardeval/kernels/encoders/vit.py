"""The ViT encoders, through Hugging Face ``transformers`` (an optional extra, imported only
here, only when such an encoder is loaded):

* ``dinov2-vitl14``: ``Dinov2Model`` of ``facebook/dinov2-large``, the CLS token after the final
  layer norm (``pooler_output``), 1024-d, as dgm-eval takes it from torch hub's
  ``dinov2_vitl14``; ``dinov2-vits14``, ``-vitb14``, ``-vitg14`` the same of
  ``facebook/dinov2-small`` (384-d), ``-base`` (768-d), ``-giant`` (1536-d).
* ``clip-vitl14-336``: ``CLIPVisionModelWithProjection`` of
  ``openai/clip-vit-large-patch14-336``, ``image_embeds`` (768-d) divided by their L2 norm, as
  CMMD uses them.
* ``siglip-so400m-patch14-384``: ``SiglipVisionModel`` of ``google/siglip-so400m-patch14-384``
  (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023), ``pooler_output``:
  the multihead attention-pooling ("MAP") head's output on the last layer's normed tokens,
  1152-d, **not** L2-normalised (SigLIP's own image-text logits normalise it; the features here
  are the raw pooled vector, as ``SiglipVisionModel`` returns it); ``siglip-base-patch16-224``
  the same of ``google/siglip-base-patch16-224`` (768-d). A full SigLIP checkpoint loads: its
  text tower is not read.

Position embeddings of DINOv2: the checkpoint holds a 37 × 37 grid (518 px) and dgm-eval feeds
224 px (16 × 16 patches), so the grid is interpolated. torch hub's DINOv2 passes
``scale_factor = (16 + 0.1) / 37`` to the bicubic ``F.interpolate`` (an offset against a
rounding problem of an old torch), where ``transformers`` passes ``size = 16``: the two sample
the grid at slightly different places, and the features differ by far more than rounding. To
give dgm-eval's features, :func:`use_hub_interpolation` replaces the model's interpolation with
the hub's arithmetic (other things equal, the remaining differences are rounding of the two
attention implementations).
"""

from __future__ import annotations

import math
import types
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from shardeval.kernels.encoders.errors import MissingDependencyError, WeightsError

if TYPE_CHECKING:
    from shardeval.kernels.encoders.registry import EncoderSpec

#: The offset torch hub's DINOv2 adds to the patch grid when it computes the scale factor.
HUB_INTERPOLATE_OFFSET = 0.1


def _transformers(encoder: str) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            f"«encoder='{encoder}'» needs the transformers package, which is not installed: "
            "pip install transformers (or the extra shardeval[encoders])"
        ) from exc
    return transformers


def _check_loaded(info: dict[str, Any], folder: str, encoder: str) -> None:
    """Parameters the checkpoint did not provide would stay randomly initialised: refuse."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        keys = (missing or mismatched)[:3]
        raise WeightsError(
            f"weights {folder!r} do not fit {encoder} ({'missing' if missing else 'mismatched'}: "
            f"{', '.join(keys)}{' ...' if len(missing or mismatched) > 3 else ''}); give the "
            "model's own Hugging Face folder"
        )


def _load(cls: Any, folder: str, encoder: str) -> Any:
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"weights {folder!r} cannot be loaded as {encoder}: {reason}") from exc
    _check_loaded(info, folder, encoder)
    return model.to(torch.float32).eval().requires_grad_(False)


def _hub_interpolate_pos_encoding(
    self: nn.Module, embeddings: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """torch hub DINOv2's interpolation of the position grid (bound to a ``Dinov2Embeddings``)."""
    pos: torch.Tensor = self.position_embeddings  # type: ignore[assignment]
    patches, positions = embeddings.shape[1] - 1, pos.shape[1] - 1
    if patches == positions and height == width:
        return pos
    size: Any = self.patch_embeddings.patch_size  # type: ignore[union-attr]
    ph, pw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rows, cols = height // ph, width // pw
    side = math.isqrt(positions)
    dim = pos.shape[-1]
    grid = pos[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((rows + HUB_INTERPOLATE_OFFSET) / side, (cols + HUB_INTERPOLATE_OFFSET) / side)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != (rows, cols):
        raise ValueError(f"interpolated position grid {tuple(grid.shape[-2:])} != {(rows, cols)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pos[:, :1].float(), grid], dim=1).to(pos.dtype)


def use_hub_interpolation(model: nn.Module) -> None:
    """Make a ``Dinov2Model`` interpolate position embeddings as torch hub's DINOv2 does.

    Raises:
        WeightsError: the model does not have the embeddings this replaces (a ``transformers``
            version with another layout); better to refuse than give other features.
    """
    embeddings = getattr(model, "embeddings", None)
    if not all(
        hasattr(embeddings, a)
        for a in ("position_embeddings", "patch_embeddings", "interpolate_pos_encoding")
    ):
        raise WeightsError(
            "this transformers version's Dinov2Model has no embeddings.interpolate_pos_encoding "
            "to align with torch hub's DINOv2; use a transformers release with it"
        )
    embeddings.interpolate_pos_encoding = types.MethodType(  # type: ignore[union-attr]
        _hub_interpolate_pos_encoding, embeddings
    )


class DinoV2Features(nn.Module):
    """(B, 3, 224, 224) ImageNet-normalised → (B, d): the CLS token after the last norm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).pooler_output


class ClipFeatures(nn.Module):
    """(B, 3, 336, 336) CLIP-normalised → (B, 768): projected image embeddings, unit norm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.model(pixel_values=x).image_embeds
        return emb / torch.linalg.vector_norm(emb, dim=-1, keepdim=True)


class SiglipFeatures(nn.Module):
    """(B, 3, S, S) in [−1, 1] → (B, d): SigLIP's attention-pooled output, as it is."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).pooler_output


def load_dinov2(
    folder: str, hub_interpolation: bool = True, name: str = "dinov2-vitl14"
) -> DinoV2Features:
    """DINOv2 from a Hugging Face model folder, on the CPU, in eval mode.

    Args:
        folder: holds config.json and model.safetensors (or pytorch_model.bin).
        hub_interpolation: interpolate position embeddings as torch hub does (dgm-eval's
            features); False keeps ``transformers``' own interpolation.
        name: the encoder's name, for messages (the sizes share this loader).

    Raises:
        MissingDependencyError: transformers is not installed.
        WeightsError: the folder cannot be loaded, or leaves parameters uninitialised.
    """
    transformers = _transformers(name)
    model = _load(transformers.Dinov2Model, folder, name)
    if hub_interpolation:
        use_hub_interpolation(model)
    return DinoV2Features(model).eval()


def load_clip(folder: str) -> ClipFeatures:
    """CLIP's vision tower and projection from a Hugging Face model folder (a full CLIP
    checkpoint: its text tower is not loaded), on the CPU, in eval mode.

    Raises:
        MissingDependencyError: transformers is not installed.
        WeightsError: the folder cannot be loaded, or leaves parameters uninitialised.
    """
    transformers = _transformers("clip-vitl14-336")
    model = _load(transformers.CLIPVisionModelWithProjection, folder, "clip-vitl14-336")
    return ClipFeatures(model).eval()


def load_siglip(folder: str, size: int, name: str) -> SiglipFeatures:
    """SigLIP's vision tower from a Hugging Face model folder (a full SigLIP checkpoint or a
    vision tower alone), on the CPU, in eval mode.

    Args:
        folder: holds config.json and model.safetensors (or pytorch_model.bin).
        size: the input side the encoder declares: the checkpoint's ``image_size`` must be it
            (its position embeddings are not interpolated).
        name: the encoder's name, for messages.

    Raises:
        MissingDependencyError: transformers is not installed.
        WeightsError: the folder cannot be loaded, leaves parameters uninitialised, has no
            attention-pooling head (``vision_use_head`` false), or is for another image size.
    """
    transformers = _transformers(name)
    model = _load(transformers.SiglipVisionModel, folder, name)
    config = model.config
    # The head is model.head from transformers 5, model.vision_model.head before: by its class.
    heads = [m for m in model.modules() if type(m).__name__.endswith("AttentionPoolingHead")]
    if not getattr(config, "vision_use_head", True) or not heads:
        raise WeightsError(
            f"weights {folder!r} have no attention-pooling head (vision_use_head is false), "
            f"whose output {name} gives; give the model's own Hugging Face folder"
        )
    side = config.image_size
    if side not in (size, [size, size], (size, size)):
        raise WeightsError(
            f"weights {folder!r} are a SigLIP for {side} px images, but {name} runs at "
            f"{size} px; give its own Hugging Face folder"
        )
    return SiglipFeatures(model).eval()


def dinov2_network(spec: EncoderSpec, folder: str) -> DinoV2Features:
    """The loader :data:`~shardeval.kernels.encoders.registry.ENCODERS` names for DINOv2 (each
    size: the folder's config says which)."""
    return load_dinov2(folder, name=spec.name)


def clip_network(spec: EncoderSpec, folder: str) -> ClipFeatures:
    """The loader :data:`~shardeval.kernels.encoders.registry.ENCODERS` names for CLIP."""
    return load_clip(folder)


def siglip_network(spec: EncoderSpec, folder: str) -> SiglipFeatures:
    """The loader :data:`~shardeval.kernels.encoders.registry.ENCODERS` names for SigLIP (each
    model: the declaration gives its input side)."""
    return load_siglip(folder, size=int(spec.size or 0), name=spec.name)
