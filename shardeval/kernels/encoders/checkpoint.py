"""Reading a torch checkpoint of weights safely: tensors only (``weights_only``, no code in the
file is run), and, for a file that is not one, a one-line message saying what it is."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from shardeval.kernels.encoders.errors import WeightsError

if TYPE_CHECKING:
    import torch

#: The first bytes of a torch checkpoint in the legacy (pre-1.6, non-zip) format: a pickled
#: magic number, 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: What torch's weights-only unpickler names when a checkpoint holds a class it will not build.
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _holds(reason: str) -> str:
    """What a torch checkpoint holds besides tensors, from the global torch's weights-only
    unpickler refused (never its advice, which is to run the file's code)."""
    found = _UNSAFE_GLOBAL.search(reason)
    if found is None:
        return "holding objects other than tensors"
    name = found.group(1)
    if name.split(".")[0] == "numpy":
        return f"holding numpy arrays ({name}), not torch tensors"
    return f"holding a pickled {name}, not a state dict of tensors"


def _what_file_is(path: str, reason: str) -> str:
    """What a file that torch cannot load as tensors is, by its first bytes (and, for a torch
    checkpoint, the class it holds): for a message that says it in a few words."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not head:
        return "an empty file"
    if head.startswith(_ZIP_MAGICS):
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                torch_zip = any(n.endswith("/data.pkl") for n in archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return "a damaged or truncated zip archive"
        return (
            f"a torch checkpoint {_holds(reason)}"
            if torch_zip
            else ("a zip archive that is not a torch checkpoint")
        )
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return f"a torch checkpoint of the legacy format {_holds(reason)}"
    header = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and 0 < header < 100_000_000:
        return "a safetensors file (the Hugging Face format, read in a model folder)"
    if head[:1] == b"\x80":
        return "a Python pickle, not a torch checkpoint"
    return f"not a torch checkpoint (it begins with {head[:16]!r})"


def read_state_dict(
    path: str, expected: str = "a torch state dict of tensors"
) -> dict[str, torch.Tensor]:
    """A torch checkpoint holding a state dict (plain, or under ``state_dict``), read on the
    CPU with ``weights_only`` (no code in the file is run).

    Args:
        path: the file.
        expected: what the file should be, for the message when it is not.

    Raises:
        WeightsError: the file is not a readable torch checkpoint of tensors; the message says
            in one line what it is and what is expected (never torch's advice to load it with
            ``weights_only`` off, which would run the code a file may carry).
    """
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            # torch warns of a file's pickle protocol in its weights_only words; what the file
            # is, the message below says
            warnings.simplefilter("ignore")
            loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises anything from KeyError to UnpicklingError on junk
        if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.strerror:
            raise WeightsError(f"weights {path!r} cannot be read: {exc.strerror}") from exc
        what = _what_file_is(path, str(exc))
        raise WeightsError(f"weights {path!r} are {what}; expected {expected}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        kind = type(loaded).__name__
        raise WeightsError(
            f"weights {path!r} are a torch checkpoint holding a {kind} that is not a state dict "
            f"of tensors; expected {expected}"
        )
    return dict(loaded)
