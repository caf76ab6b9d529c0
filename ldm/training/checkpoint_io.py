"""Checkpoint files that survive a kill -9 and never run code when they are read.

Why a plugin: Lightning's `TorchCheckpointIO` writes through an fsspec transaction, which for local paths
stages the bytes in the system temp folder and *moves* them (a copy when /tmp is another filesystem), with
no fsync: a kill or power cut can still leave a half-written `last.ckpt`. Here the temp file sits beside
the target (same filesystem, so `os.replace` is one atomic rename), is fsynced before the rename, and the
folder is fsynced after it. Reads always use `torch.load(weights_only=True)`: tensors and plain data only,
so a tampered file cannot execute a payload, and any unreadable file is one error naming it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ldm.errors import UserError

# What torch.load raises for a truncated, empty, foreign or tampered file (never code execution with
# weights_only=True: a disallowed global is refused by the unpickler with an UnpicklingError).
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError)


class CheckpointLoadError(UserError):
    """A checkpoint or weights file that can't be read safely; the message names the file and the reason."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a sibling temp file, fsync, `os.replace`: readers see the old file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' `save_file` to a sibling temp file, then renamed: a kill leaves the old file or the new one.

    Why through a path: `safetensors.torch.save` would first build the whole file in memory (2 GB for SD1.5).
    """
    atomic_write_path(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(temp_path)` for a temp file in `path`'s folder, fsync it, then rename it onto `path`.

    Why a path and not a file object: some writers (safetensors' `save_file`) only take a file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other users' tools
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call `write(binary_file)` on a temp file in `path`'s folder, then rename it onto `path`."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write_path(path, to_file)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders can't be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)` with one clear error for a missing, truncated or tampered file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointLoadError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointLoadError(
            f"checkpoint {str(path)!r} can't be loaded safely ({type(error).__name__}: {first_line}). "
            "It is truncated, not a PyTorch checkpoint, or holds objects other than tensors and plain data; "
            "only weights_only=True loading is allowed, so nothing in it was executed."
        ) from None


def load_weights_file(path: str | os.PathLike) -> Any:
    """A weights file by its suffix: `.safetensors` (tensors only by design) or a weights-only torch pickle."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return safe_torch_load(path)
    if not path.is_file():
        raise CheckpointLoadError(f"checkpoint {str(path)!r} does not exist")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointLoadError(f"checkpoint {str(path)!r} is not a readable safetensors file ({error})") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning `CheckpointIO`: atomic, fsynced writes and weights-only reads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Always weights-only: an explicit `weights_only=False` is refused rather than silently honoured."""
        if weights_only is False:
            raise ValueError(f"{type(self).__name__} loads checkpoints with weights_only=True only")
        return safe_torch_load(path, map_location=map_location)
