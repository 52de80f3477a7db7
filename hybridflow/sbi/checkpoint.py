"""Atomic files: checkpoints (tensors and plain data only) and other outputs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from hybridflow.serialization import atomic_torch_save

__all__ = ["atomic_write", "load_checkpoint", "save_checkpoint"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers see the old content or the whole new one, never a part.

    ``write`` fills a temporary file in the same folder, which is flushed to disk and then
    renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows). If ``write``
    raises, or the process dies before the rename, ``path`` keeps its previous content and the
    temporary file is removed (when the process survives to do it).

    Args:
        path: the destination; its folder is created if needed.
        write: called with the open binary temporary file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return target


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save a checkpoint atomically with :func:`hybridflow.serialization.atomic_torch_save`
    (temporary file, then :func:`os.replace`), creating its folder if needed.

    ``state`` must hold only what ``torch.load(..., weights_only=True)`` reads back: tensors,
    numbers, strings, ``None``, and lists, tuples and dicts of them (state dicts of modules,
    optimizers and schedulers are such). Configurations are stored as plain dicts, never as
    pickled objects.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, target)
    return target


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``: no
    code is run and no object is unpickled.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint dictionary.
    """
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"load_checkpoint: {path} holds a {type(state).__name__}, not a dict")
    return state
