"""Checkpoints (tensors and plain data only), written atomically; ``atomic_write`` for other
outputs is :func:`hybridflow.serialization.atomic_write`, re-exported here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hybridflow.serialization import atomic_torch_save, atomic_write

__all__ = ["atomic_write", "load_checkpoint", "save_checkpoint"]


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
