"""Saving and loading whole models (config + weights) and checked ``state_dict`` loading.

File format (version 1): a ``torch.save`` archive of a dict holding only strings and tensors,
so it loads with ``torch.load(..., weights_only=True)`` and never executes code::

    {"format": "hybridflow", "version": 1,
     "config": JSON string of hybridflow.config.get_config(model),
     "metadata": JSON string (user data), "state_dict": {name: tensor}}

Writes are atomic: a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from hybridflow.config import from_config, get_config

__all__ = [
    "FORMAT_VERSION",
    "atomic_torch_save",
    "atomic_write",
    "load",
    "load_state_dict",
    "save",
]

FORMAT_VERSION = 1
_FORMAT = "hybridflow"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers see the old content or the whole new one, never a part.

    ``write`` fills a temporary file in the same folder, which is flushed to disk and then
    renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows); the file gets
    the permissions of any newly created file (the process's umask). If ``write``
    raises, or the process dies before the rename, ``path`` keeps its previous content and the
    temporary file is removed (when the process survives to do it). This is the one atomic
    writer of the package: model files, checkpoints, figures and reports all go through it.

    Args:
        path: the destination; its folder is created if needed.
        write: called with the open binary temporary file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "note.txt", lambda file: file.write(b"done")).read_text()
        'done'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name opened exclusively: the file gets the permissions of any new file (umask)
    temp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    handle = temp.open("xb")
    try:
        with handle as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``
    (:func:`atomic_write`).

    An interrupted write leaves any previous file at ``path`` untouched.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: folder {path.parent} does not exist")
    atomic_write(path, lambda file: torch.save(obj, file))


def save(
    model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> None:
    """Save a configurable hybridflow model (its config and its weights) to ``path``.

    Raises:
        TypeError: if the model, or an argument it was built with, cannot be written as
            plain data (a custom ``subnet`` callable, say); save its ``state_dict`` instead.
    """
    config = get_config(model)
    payload = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "config": json.dumps(config),
        "metadata": json.dumps(dict(metadata or {})),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)


def load(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model saved by :func:`save`; returns ``(model, metadata)``.

    Only registered hybridflow classes are built (import the module defining your own blocks
    first); the file is read with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a hybridflow model file")
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version!r}; this hybridflow reads up to "
            f"{FORMAT_VERSION}: upgrade hybridflow"
        )
    model = from_config(json.loads(payload["config"]))
    load_state_dict(model, payload["state_dict"])
    return model, json.loads(payload["metadata"])


def load_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """``module.load_state_dict(state_dict)`` that checks everything before changing anything.

    ``nn.Module.load_state_dict`` copies every matching tensor before it reports mismatches;
    here missing keys, unexpected keys and shape mismatches are all named in one
    ``ValueError`` and the module is left as it was.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"checkpoint does not fit {type(module).__name__}: " + ", ".join(problems))
    module.load_state_dict(state_dict)
