"""A loaded encoder: its declaration, its network on one device and its preprocessing; decoded
RGB images in, float32 feature rows (and class logits, where the encoder has them) out.

Everything an encoder is comes from its declaration
(:class:`~shardeval.kernels.encoders.registry.EncoderSpec`): :func:`load_encoder` calls the
loader it names and pairs the network with the preprocessing of the mode asked for. No branch
here knows an encoder by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from shardeval.kernels.encoders.declare import resolve_encoder
from shardeval.kernels.encoders.errors import EncoderError
from shardeval.kernels.encoders.registry import (
    PYTHON,
    EncoderSpec,
    load_function,
)
from shardeval.kernels.encoders.weights import check_digest

if TYPE_CHECKING:
    import numpy as np
    import torch


class Encoder:
    """A loaded network and its preprocessing.

    Attributes:
        spec: what the encoder is.
        resize: the preprocessing mode in use.
        device: where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
        network: the network (a user's module or callable as it was given).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        resize: str,
        network: Any,
        preprocess: Callable[[np.ndarray], torch.Tensor],
        device: str,
    ) -> None:
        self.spec, self.resize, self.device = spec, resize, device
        # A user's module runs where it is and as it is (never moved or switched to eval:
        # it is theirs); ours are moved to the device, in eval mode.
        self.network = network if spec.source == PYTHON else network.to(device).eval()
        self._preprocess = preprocess

    @property
    def fp32_products(self) -> str:
        """``tf32`` when this process lets the network's fp32 convolutions or matmuls round
        their inputs to TF32 on its device (a CUDA GPU of compute capability 8.0 or later,
        with PyTorch's default cuDNN setting, unless :func:`shardeval.kernels.use_ieee_fp32` ran),
        else ``ieee``. TF32 keeps 10 mantissa bits of each input (up to 2^-11 relative error, fp32
        2^-24)."""
        import torch

        from shardeval.kernels._dispatch import tf32_convolutions, tf32_matmuls

        if not self.device.startswith("cuda"):
            return "ieee"
        if torch.cuda.get_device_capability(torch.device(self.device))[0] < 8:
            return "ieee"  # no TF32 units before Ampere
        return "tf32" if tf32_convolutions() or tf32_matmuls() else "ieee"

    def with_resize(self, resize: str) -> Encoder:
        """The same network (shared, not copied) with another preprocessing mode.

        Raises:
            EncoderError: a mode this encoder does not have.
        """
        mode = self.spec.resolve_resize(resize)
        return Encoder(
            self.spec, mode, self.network, preprocessor(self.spec, mode, self.network), self.device
        )

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB → (3, S, S) on the CPU, the network's input."""
        return self._preprocess(image)

    def _batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The network's input of a batch of decoded images, pinned for a GPU."""
        import torch

        inputs = [self.preprocess(im) for im in images]
        shapes = sorted({tuple(x.shape) for x in inputs})
        if len(shapes) > 1:
            raise EncoderError(
                f"{self.spec.name} takes the images at their own size, and one batch holds "
                f"images of {shapes[0][1]} x {shapes[0][2]} and {shapes[-1][1]} x "
                f"{shapes[-1][2]} pixels; declare the encoder with a size "
                "(shardeval.encoder(module, size=S)) or give images of one size"
            )
        batch = torch.stack(inputs)
        return batch.pin_memory() if self.device != "cpu" else batch

    def _rows(self, out: Any, images: int, what: str = "features") -> torch.Tensor:
        """A forward pass's output checked to be (images, d) numbers, as float32."""
        import torch

        if not isinstance(out, torch.Tensor):
            raise EncoderError(
                f"{self.spec.name} returned a {type(out).__name__}, not a tensor of {what}; an "
                "encoder returns a (B, d) tensor"
            )
        if out.ndim != 2 or out.shape[0] != images or out.shape[1] < 1:
            raise EncoderError(
                f"{self.spec.name} returned {what} of shape {tuple(out.shape)} for {images} "
                f"images; an encoder returns (B, d) = ({images}, d)"
            )
        if out.is_complex() or out.dtype == torch.bool:
            raise EncoderError(f"{self.spec.name} returned {what} of dtype {out.dtype}")
        return out.to(torch.float32)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → (B, d) float32 on the network's device, fp32 throughout (no
        autocast), in inference mode.

        Raises:
            EncoderError: the network returned something other than (B, d) numbers.
        """
        import torch

        with torch.inference_mode():
            out = self.network(batch.to(self.device, non_blocking=True))
        return self._rows(out, len(batch))

    def encode(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Features of decoded images, ``batch_size`` at a time.

        Args:
            images: (H, W, 3) uint8 RGB arrays; sizes may differ where the preprocessing
                resizes (each image is resized alone).
            batch_size: images per forward pass.

        Returns:
            (len(images), d) float32.

        Raises:
            EncoderError: the network returned something other than (B, d) numbers, or
                images of different sizes met an encoder that takes them as they are.
        """
        import numpy as np

        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        parts = [
            self.forward(self._batch(images[lo : lo + batch_size])).cpu().numpy()
            for lo in range(0, len(images), batch_size)
        ]
        if not parts:
            return np.empty((0, self.spec.dim or 0), np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def encode_with_logits(
        self, images: Sequence[np.ndarray], batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features and class logits of decoded images from one forward pass per batch (the
        features are :meth:`encode`'s), for an encoder whose declaration has logits: its
        network's ``forward_with_logits`` gives both.

        Returns:
            (len(images), d) features and (len(images), classes) logits, both float32.

        Raises:
            EncoderError: the encoder has no class logits.
        """
        features, logits, _ = self.encode_arrays(images, batch_size, logits=True)
        if logits is None:  # asked for, so given; a network that did not is refused above
            raise EncoderError(f"the {self.spec.name} encoder gave no class logits")
        return features, logits

    def encode_arrays(
        self,
        images: Sequence[np.ndarray],
        batch_size: int = 32,
        *,
        logits: bool = False,
        spatial: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Features, and the class logits and sFID's spatial features asked for, of decoded
        images from one forward pass per batch (the features are :meth:`encode`'s).

        Args:
            images, batch_size: as :meth:`encode`.
            logits: also the class logits (the network's ``forward_with_logits``, or its
                ``logits`` of the pool features).
            spatial: also sFID's spatial features (the network's ``forward_with_spatial``).

        Returns:
            (len(images), d) features, (len(images), classes) logits or None, and
            (len(images), spatial) spatial features or None, all float32.

        Raises:
            EncoderError: the encoder has no class logits, or no spatial features, where
                they are asked for.
        """
        import numpy as np
        import torch

        network = self.network
        if logits and (not self.spec.logits or not hasattr(network, "forward_with_logits")):
            raise EncoderError(f"the {self.spec.name} encoder has no class logits")
        if spatial and (not self.spec.spatial or not hasattr(network, "forward_with_spatial")):
            raise EncoderError(f"the {self.spec.name} encoder has no spatial features")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        parts: dict[str, list[np.ndarray]] = {"features": [], "logits": [], "spatial": []}
        for lo in range(0, len(images), batch_size):
            batch = self._batch(images[lo : lo + batch_size])
            outs: dict[str, Any] = {}
            with torch.inference_mode():
                x = batch.to(self.device, non_blocking=True)
                if spatial:
                    outs["features"], outs["spatial"] = network.forward_with_spatial(x)
                    if logits:
                        outs["logits"] = network.logits(outs["features"])
                elif logits:
                    outs["features"], outs["logits"] = network.forward_with_logits(x)
                else:
                    outs["features"] = network(x)
            for name, value in outs.items():
                what = "features" if name == "features" else name
                parts[name].append(self._rows(value, len(batch), what).cpu().numpy())
        widths = {
            "features": self.spec.dim or 0,
            "logits": self.spec.logits,
            "spatial": self.spec.spatial,
        }
        arrays = {
            name: np.concatenate(found) if found else np.empty((0, widths[name]), np.float32)
            for name, found in parts.items()
        }
        return (
            arrays["features"],
            arrays["logits"] if logits else None,
            arrays["spatial"] if spatial else None,
        )


def preprocessor(
    spec: EncoderSpec, mode: str, network: Any = None
) -> Callable[[np.ndarray], torch.Tensor]:
    """The preprocessing of an encoder's mode: the function its declaration names, or the
    network's own ``preprocess`` (a library's model brings its transform)."""
    resize = spec.resize_of(mode)
    if not resize.function:
        own = getattr(network, "preprocess", None)
        if not callable(own):
            raise EncoderError(f"{spec.name}'s network brings no preprocessing for {mode!r}")
        return own
    return partial(load_function(resize.function), size=spec.size, **dict(resize.options))


def module_device(module: Any) -> str | None:
    """The device a torch module's parameters and buffers are on (None: it has none, or is
    not a module).

    Raises:
        EncoderError: they are on several devices (shardeval moves images to one).
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not isinstance(module, torch.nn.Module):
        return None
    devices = {str(t.device) for t in (*module.parameters(), *module.buffers())}
    if len(devices) > 1:
        raise EncoderError(
            f"the encoder module's tensors are on several devices ({', '.join(sorted(devices))}); "
            "shardeval moves each batch of images to one: put the module on one device"
        )
    return devices.pop() if devices else None


def _python_device(spec: EncoderSpec, device: str) -> str:
    """Where a user's module runs: where its tensors are; a ``device`` asked that is another
    one is refused (the module is theirs: never moved)."""
    found = module_device(spec.module)
    if found is None:
        return device
    if device not in ("auto", found) and device != found.split(":")[0]:
        raise EncoderError(
            f"«device='{device}'», but the encoder module's tensors are on {found}: move the "
            f"module with .to('{device}'), or leave «device» out"
        )
    return found


def load_encoder(
    name: Any,
    weights: str,
    *,
    resize: str | None = None,
    device: str = "cpu",
    digest: str | None = None,
) -> Encoder:
    """Load an encoder's network from its weights and pair it with its preprocessing.

    Args:
        name: an encoder (a name, declaration or module:
            :func:`~shardeval.kernels.encoders.declare.resolve_encoder`).
        weights: the located weights (:func:`~shardeval.kernels.encoders.registry.
            locate_weights`): a file or model folder, or ``random:SEED`` for seeded random
            weights where the encoder offers them; "" for a module given in Python.
        resize: the preprocessing mode (default: the encoder's default).
        device: the torch device the network runs on (a module given in Python runs where its
            tensors are; ``auto`` or that device).
        digest: when given, the weights must have this digest.

    Returns:
        The encoder, in eval mode with frozen parameters (a user's module as it was given).

    Raises:
        EncoderError: unknown name or resize mode; a user's module on another device.
        WeightsError: unreadable weights, weights that do not fit, another digest.
        MissingDependencyError: the library the encoder needs is missing.
    """
    from shardeval.kernels.encoders.weights import WeightsError, random_seed

    spec = resolve_encoder(name)
    mode = spec.resolve_resize(resize)
    if spec.source == PYTHON:
        if digest is not None and digest != spec.digest:
            raise WeightsError(
                f"{spec.name} has weights of digest {spec.digest}, but this extraction uses "
                f"{digest}: the module changed; declare it again"
            )
        network = spec.module
        device = _python_device(spec, device)
    else:
        check_digest(weights, digest)
        seed = random_seed(weights)
        if seed is not None:
            network = load_function(spec.weights.random)(seed)
        else:
            network = load_function(spec.network)(spec, weights)
    return Encoder(spec, mode, network, preprocessor(spec, mode, network), device)
