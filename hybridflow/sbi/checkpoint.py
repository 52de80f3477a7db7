"""Checkpoints (tensors and plain data only), checksummed and written atomically;
``atomic_write`` for other outputs is :func:`hybridflow.serialization.atomic_write`,
re-exported here.

On disk a checkpoint is ``{"format": "hybridflow-checkpoint", "version": 1, "state": state,
"checksum": digest}``, where ``digest`` is :func:`hybridflow.integrity.digest` of the other
three entries. Files without that envelope (checkpoints of hybridflow before checksums) are
refused: they cannot be verified, so start those runs afresh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hybridflow.errors import ArgumentTypeError, FileFormatError
from hybridflow.integrity import digest, read_torch_file, verify_digest
from hybridflow.serialization import atomic_torch_save, atomic_write

__all__ = ["CHECKPOINT_VERSION", "atomic_write", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_VERSION = 1
"""The version of the checkpoint envelope that :func:`save_checkpoint` writes."""
_FORMAT = "hybridflow-checkpoint"
_ENTRIES = {"format", "version", "state", "checksum"}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save a checkpoint atomically with :func:`hybridflow.serialization.atomic_torch_save`
    (temporary file, then :func:`os.replace`), creating its folder if needed, with a SHA-256
    checksum over everything in it.

    ``state`` must hold only what ``torch.load(..., weights_only=True)`` reads back: tensors,
    numbers, strings, ``None``, and lists, tuples and dicts of them (state dicts of modules,
    optimizers and schedulers are such). Configurations are stored as plain dicts, never as
    pickled objects.

    Raises:
        ArgumentTypeError: ``state`` is not a dict or holds anything else (the message gives
            the path of the entry); nothing is written then.
    """
    if not isinstance(state, dict):
        raise ArgumentTypeError(
            f"save_checkpoint: state must be a dict, got {type(state).__name__}",
            argument="state",
        )
    envelope: dict[str, Any] = {"format": _FORMAT, "version": CHECKPOINT_VERSION, "state": state}
    envelope["checksum"] = digest(envelope, "checkpoint")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(envelope, target)
    return target


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True`` (no
    code is run and no object is unpickled), and verify its checksum.

    Returns:
        The ``state`` dict that was saved.

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: the file is empty, truncated, not a torch file, holds pickled
            objects, is not a hybridflow checkpoint (or one written before checksums), or
            fails its checksum; the message names the file.
    """
    path = Path(path)
    envelope = read_torch_file(path, map_location=map_location, what="checkpoint")

    def refuse(detail: str) -> FileFormatError:
        return FileFormatError(f"{path}: {detail}", path=path)

    if not isinstance(envelope, dict):
        raise refuse(f"not a hybridflow checkpoint (it holds a {type(envelope).__name__})")
    if envelope.get("format") != _FORMAT:
        if isinstance(envelope.get("format"), str) and "checksum" not in envelope:
            raise refuse(
                f"a checkpoint without checksum (format {envelope['format']!r}, written by an "
                "older hybridflow, or not by hybridflow): it cannot be verified; start the run "
                "afresh (resume=False, or hybridflow train --overwrite)"
            )
        raise refuse(f"not a hybridflow checkpoint (format {envelope.get('format')!r})")
    version = envelope.get("version")
    if version != CHECKPOINT_VERSION or isinstance(version, bool):
        raise refuse(
            f"checkpoint version {version!r}; this hybridflow reads version "
            f"{CHECKPOINT_VERSION} (a newer hybridflow wrote it, or the file is damaged)"
        )
    if set(envelope) != _ENTRIES:
        missing, unexpected = sorted(_ENTRIES - set(envelope)), sorted(set(envelope) - _ENTRIES)
        raise refuse(f"entries missing {missing}, unexpected {unexpected} (a damaged file?)")
    body = {k: v for k, v in envelope.items() if k != "checksum"}
    verify_digest(body, envelope["checksum"], path)
    if not isinstance(envelope["state"], dict):
        raise refuse(f"its state is a {type(envelope['state']).__name__}, not a dict")
    return envelope["state"]
