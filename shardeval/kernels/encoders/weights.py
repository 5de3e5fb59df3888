"""Where an encoder's weights are, what they are (a digest), and how they are read.

Nothing here downloads anything and no model is ever left randomly initialised: a missing file
is a one-line :class:`WeightsError` naming the file that is needed, where to put it, the
command that fetches it when one can (``shardeval fetch``, :mod:`shardeval.pipeline.io.fetch`,
which writes to the very place read here), and the ``«weights»`` alternative. Locations follow
the caches the reference tools use:

* the FID Inception: torch hub's checkpoint folder, ``$TORCH_HOME/hub/checkpoints`` (TORCH_HOME
  defaults to ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``), file
  ``pt_inception-2015-12-05-6726825d.pth`` as pytorch-fid stores it;
* the ViTs: the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``), one model snapshot.

Which encoder reads what is declared in :mod:`shardeval.kernels.encoders.registry` (its
weights source); :func:`locate_weights` reads the declaration, and a library's model is found
where the library caches it (:mod:`shardeval.kernels.encoders.providers`). Nothing here
imports torch except :func:`tensors_digest`; reading a checkpoint is
:mod:`shardeval.kernels.encoders.checkpoint`.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from shardeval.kernels.encoders.errors import WeightsError
from shardeval.kernels.encoders.registry import (
    ENCODERS,
    PYTHON,
    EncoderSpec,
    load_function,
    spec_by_name,
)

if TYPE_CHECKING:
    pass

#: pytorch-fid's port of the TF Inception graph of 2015-12-05, as torch hub caches it (the
#: Inception's declaration names it).
INCEPTION_FILE = ENCODERS["inception"].weights.file

#: The command that downloads :data:`INCEPTION_FILE` into :func:`inception_path`.
FETCH_INCEPTION = "shardeval fetch inception"

#: The ``weights`` value that asks for the FID Inception with seeded random weights (a smoke test
#: of the image path where the published file is absent): ``random`` (seed 0) or
#: ``random:SEED``. Their digest is ``random:SEED``; a file of that name is given as
#: ``./random``.
RANDOM_WEIGHTS = "random"

#: Files of a Hugging Face snapshot that decide the model (configuration and tensors).
_HF_MODEL_FILES = ("config.json",)
_HF_TENSOR_SUFFIXES = (".safetensors", ".bin")

_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def torch_home() -> str:
    """torch hub's root folder, resolved as ``torch.hub`` resolves it (without importing torch)."""
    if os.environ.get("TORCH_HOME"):
        return os.path.expanduser(os.environ["TORCH_HOME"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.expanduser(os.path.join(cache, "torch"))


def torch_hub_file(file: str) -> str:
    """Where torch hub keeps the checkpoint ``file`` (its checkpoint folder)."""
    return os.path.join(torch_home(), "hub", "checkpoints", file)


def inception_path() -> str:
    """Where the FID Inception weights are read from when none are given (and where ``shardeval
    fetch inception`` puts them): torch hub's checkpoint folder, as pytorch-fid caches them."""
    return torch_hub_file(INCEPTION_FILE)


def hf_hub_cache() -> str:
    """The Hugging Face hub cache folder, resolved as ``huggingface_hub`` resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.expanduser(os.path.join(cache, "huggingface", "hub"))


def hf_snapshot(model_id: str) -> str | None:
    """The cached snapshot folder of ``model_id`` (the one ``refs/main`` names, else the only
    one), or None."""
    root = os.path.join(hf_hub_cache(), "models--" + model_id.replace("/", "--"))
    snapshots = os.path.join(root, "snapshots")
    try:
        with open(os.path.join(root, "refs", "main")) as fh:
            revision = fh.read().strip()
        if os.path.isdir(os.path.join(snapshots, revision)):
            return os.path.join(snapshots, revision)
    except OSError:
        pass
    try:
        found = sorted(os.listdir(snapshots))
    except OSError:
        return None
    return os.path.join(snapshots, found[0]) if len(found) == 1 else None


def _hf_tensor_files(folder: str) -> list[str]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [n for n in names if n.endswith(_HF_TENSOR_SUFFIXES)]


def check_hf_folder(folder: str, what: str) -> None:
    """Refuse a folder that is not a Hugging Face model folder (config.json and tensors)."""
    if not os.path.isfile(os.path.join(folder, "config.json")) or not _hf_tensor_files(folder):
        raise WeightsError(
            f"{what} {folder!r} is not a Hugging Face model folder: it needs config.json and "
            "model.safetensors (or pytorch_model.bin)"
        )


def random_seed(weights: str | os.PathLike[str] | None) -> int | None:
    """The seed of random weights asked for by ``weights`` (``random``: 0, ``random:SEED``),
    else None (a path, or nothing).

    Raises:
        WeightsError: ``random:`` followed by something that is not a seed.
    """
    if not isinstance(weights, str):
        return None
    if weights == RANDOM_WEIGHTS:
        return 0
    if not weights.startswith(RANDOM_WEIGHTS + ":"):
        return None
    seed = weights[len(RANDOM_WEIGHTS) + 1 :]
    if not seed.isdigit() or int(seed) >= 2**63:
        raise WeightsError(
            f"«weights={weights!r}» is not random weights of a seed: give «weights='random'» "
            "(seed 0) or «weights='random:SEED'» with SEED a non-negative integer"
        )
    return int(seed)


def locate_weights(
    encoder: str | EncoderSpec, weights: str | os.PathLike[str] | None = None
) -> str:
    """The weights an encoder will load: the file or model folder its declaration names.

    Args:
        encoder: an encoder's name or declaration (see
            :func:`~shardeval.kernels.encoders.registry.spec_by_name`).
        weights: a path the user gave; default: the standard cache of its weights source.

    Returns:
        An absolute path that exists; for seeded random weights (:data:`RANDOM_WEIGHTS`),
        ``random:SEED``; for a module given in Python, "" (it holds its weights).

    Raises:
        WeightsError: the weights are not there; the message names the file or model id
            needed, where to put it, the command that fetches it where there is one, and the
            ``«weights»`` alternative. Random weights for an encoder that does not offer them.
        MissingDependencyError: the library of ``timm:`` / ``open_clip:`` is not installed.
    """
    spec = encoder if isinstance(encoder, EncoderSpec) else spec_by_name(encoder)
    source = spec.weights
    seed = random_seed(weights)
    if seed is not None:
        if not source.random:
            offered = [s.title for s in ENCODERS.values() if s.weights.random]
            raise WeightsError(
                f"«weights={weights!r}» (seeded random weights, for a smoke test) is offered "
                f"for {' and '.join(offered)} only, not {spec.name}"
            )
        return f"{RANDOM_WEIGHTS}:{seed}"
    if source.kind == PYTHON:
        if weights is not None:
            raise WeightsError(
                f"«weights» does not apply to «encoder='{spec.name}'»: a module given in Python "
                "holds its weights"
            )
        return ""
    if source.locate:  # a library's own cache: the library knows its file names
        return str(load_function(source.locate)(spec, weights))
    if weights is not None:
        path = os.path.abspath(os.path.expanduser(os.fspath(weights)))
        if not os.path.exists(path):
            raise WeightsError(f"weights {path!r} do not exist")
        if source.kind == "hf":
            if not os.path.isdir(path):
                raise WeightsError(
                    f"«weights» for {spec.name} must be a Hugging Face model folder "
                    f"(config.json and model.safetensors), not the file {path!r}"
                )
            check_hf_folder(path, "«weights»")
        elif not os.path.isfile(path):
            raise WeightsError(f"«weights» for {spec.name} must be a file, not the folder {path!r}")
        return path
    if source.kind == "torch-hub":
        return _hub_file(spec)
    folder = hf_snapshot(source.model_id)
    if folder is None:
        raise WeightsError(
            f"the {spec.name} weights (Hugging Face model {source.model_id!r}) are not in the "
            f"cache {hf_hub_cache()!r}: copy a cache holding them there (`huggingface-cli "
            f"download {source.model_id}` on a machine with network; HF_HOME moves it) or pass "
            "«weights=DIR» with config.json and model.safetensors; nothing is downloaded"
        )
    check_hf_folder(folder, f"the cached snapshot of {source.model_id!r}")
    return folder


def _hub_file(spec: EncoderSpec) -> str:
    """The checkpoint of a ``torch-hub`` weights source in torch hub's folder."""
    source = spec.weights
    path = torch_hub_file(source.file)
    if os.path.isfile(path):
        return path
    fetch = (
        f"`shardeval fetch {source.fetch}` (in Python shardeval.fetch('{source.fetch}')) "
        "downloads them there against their pinned SHA-256, or "
        if source.fetch
        else ""
    )
    origin = f"copy {source.origin} there" if source.origin else "copy the file there"
    raise WeightsError(
        f"{spec.title} weights {source.file} are not at {path!r}: {fetch}{origin} (TORCH_HOME "
        "moves the folder), or pass «weights=PATH»; nothing is downloaded implicitly"
    )


def _digest_files(path: str) -> list[tuple[str, str]]:
    """(name recorded in the digest, file read) for a weights file or model folder."""
    if os.path.isfile(path):
        return [(os.path.basename(path), path)]
    names = [n for n in _HF_MODEL_FILES if os.path.isfile(os.path.join(path, n))]
    return [(n, os.path.join(path, n)) for n in [*names, *_hf_tensor_files(path)]]


def weights_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the weights: a file's bytes (its name and place do not count: the digest
    ``shardeval fetch`` pins and ``sha256sum`` prints), or a model folder's configuration and
    tensor files (name and bytes, in name order). Remembered per (path, size, mtime), so a
    process that already hashed a file does not read it again.

    Returns:
        ``"sha256:<hex>"``; for random weights (``random:SEED``), that name itself.

    Raises:
        WeightsError: the weights cannot be read.
    """
    seed = random_seed(os.fspath(path))
    if seed is not None:
        return f"{RANDOM_WEIGHTS}:{seed}"
    path = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(path)
        files = _digest_files(path)
        stamp = max([stat.st_mtime_ns] + [os.stat(f).st_mtime_ns for _, f in files])
        size = sum(os.stat(f).st_size for _, f in files)
    except OSError as exc:
        raise WeightsError(f"weights {path!r} cannot be read: {exc.strerror}") from exc
    key = (path, size, stamp)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    import hashlib

    digest = hashlib.sha256()
    try:
        for name, file in files:
            if os.path.isdir(path):  # a file is digested by its bytes alone, wherever it is
                digest.update(name.encode() + b"\0")
            with open(file, "rb") as fh:
                while block := fh.read(1 << 24):
                    digest.update(block)
    except OSError as exc:
        raise WeightsError(f"weights {path!r} cannot be read: {exc.strerror}") from exc
    value = f"sha256:{digest.hexdigest()}"
    with _digests_lock:
        _digests[key] = value
    return value


def check_digest(path: str, expected: str | None) -> None:
    """Fail when the weights at ``path`` are not the ones ``expected`` names (a worker of a
    cluster whose copy of the file differs from the one the output records).

    Raises:
        WeightsError: the digests differ.
    """
    if expected is None:
        return
    found = weights_digest(path)
    if found != expected:
        raise WeightsError(
            f"weights {path!r} have digest {found}, but this extraction uses {expected}: every "
            "worker must see the same weights file"
        )


def tensors_digest(network: Any) -> str:
    """SHA-256 of a torch module's weights as it holds them: every tensor of its
    ``state_dict()`` (parameters and buffers) in name order, each as its name, dtype, shape and
    bytes. The digest of an encoder given as a module in Python, whose weights are no file;
    the same weights give the same digest whatever device or file they came from.

    Args:
        network: a ``torch.nn.Module``.

    Returns:
        ``"sha256:<hex>"``.
    """
    import hashlib

    import torch

    digest = hashlib.sha256(b"shardeval.state-dict\n")
    state = network.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):  # extra state a module chose to keep
            digest.update(f"{name}\0{type(tensor).__name__}\0{tensor!r}\n".encode())
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return f"sha256:{digest.hexdigest()}"
