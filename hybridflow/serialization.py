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
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.config import from_config, get_config

__all__ = ["FORMAT_VERSION", "atomic_torch_save", "load", "load_state_dict", "save"]

FORMAT_VERSION = 1
_FORMAT = "hybridflow"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``.

    An interrupted write leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: folder {path.parent} does not exist")
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
