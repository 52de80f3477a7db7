"""Training checkpoints (tensors and plain data only), checksummed and written atomically, and
the checked read a trainer resumes from.

On disk a checkpoint is ``{"format": "hybridflow-checkpoint", "version": 1, "state": state,
"checksum": digest}``, where ``digest`` is :func:`hybridflow.io.digest` of the other
three entries. Files without that envelope (checkpoints of hybridflow before checksums) are
refused: they cannot be verified, so start those runs afresh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridflow.errors import ArgumentError, ArgumentTypeError, CheckpointMismatch, FileFormatError
from hybridflow.io.atomic import atomic_torch_save
from hybridflow.io.integrity import digest, read_torch_file, verify_digest

__all__ = [
    "CHECKPOINT_VERSION",
    "check_config_matches",
    "load_checkpoint",
    "load_run_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 1
"""The version of the checkpoint envelope that :func:`save_checkpoint` writes."""
_FORMAT = "hybridflow-checkpoint"
_ENTRIES = {"format", "version", "state", "checksum"}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save a checkpoint atomically with :func:`hybridflow.io.atomic_torch_save`
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


def load_run_checkpoint(
    path: Path | None,
    flow: nn.Module,
    expected_format: str,
    config: dict[str, Any],
    may_change: tuple[str, ...],
    owner: str,
    kind: str,
    required: tuple[str, ...] = ("model", "optimizer", "scheduler", "history", "rng"),
) -> dict[str, Any] | None:
    """The checkpoint a trainer resumes from, checked: its checksum, its format, that it has
    the entries ``required`` and that its settings match ``config``; ``None`` when there is
    no file yet. ``kind`` names the checkpoint in errors ("an NPE", "a reverse-KL").

    Raises:
        ArgumentError: ``path`` is ``None`` (resuming needs a checkpoint path).
        FileFormatError: the file is damaged, not a checkpoint, or lacks an entry.
        CheckpointMismatch: a checkpoint of another trainer, or of other settings.
    """
    if path is None:
        raise ArgumentError(
            f"{owner}.fit: resume=True needs a checkpoint path", argument="checkpoint"
        )
    if not path.exists():
        return None
    device = next((t.device for t in (*flow.parameters(), *flow.buffers())), torch.device("cpu"))
    state = load_checkpoint(path, map_location=device)
    if state.get("format") != expected_format:
        raise CheckpointMismatch(
            f"{path} is not {kind} checkpoint (format {state.get('format')!r}, expected "
            f"{expected_format!r})",
            path=path,
        )
    missing = [key for key in ("config", *required) if key not in state]
    if missing or not isinstance(state["config"], dict):
        raise FileFormatError(
            f"{path}: {kind} checkpoint without {missing or 'a config dict'}", path=path
        )
    check_config_matches(state["config"], config, may_change, owner, path)
    return state


def check_config_matches(
    saved: dict[str, Any],
    current: dict[str, Any],
    may_change: tuple[str, ...],
    where: str,
    path: Path | None = None,
) -> None:
    """Refuse to resume a run whose settings changed (other than those in ``may_change``).

    Raises:
        CheckpointMismatch: naming each changed setting, old and new value.
    """
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if key not in may_change and saved.get(key) != current.get(key)
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        source = "the checkpoint" if path is None else str(path)
        raise CheckpointMismatch(
            f"{where}: {source} was written with other settings ({details}); resume with "
            "the same configuration, or start afresh with resume=False",
            path=path,
        )
