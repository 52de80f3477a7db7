"""Saving and loading whole models (config + weights) and checked ``state_dict`` loading.

File format (version 2): a ``torch.save`` archive of a dict holding only strings and tensors,
so it loads with ``torch.load(..., weights_only=True)`` and never executes code::

    {"format": "hybridflow", "version": 2,
     "config": JSON string of hybridflow.config.get_config(model),
     "metadata": JSON string (user data), "state_dict": {name: tensor},
     "checksum": hybridflow.io.digest of the other five entries}

:func:`load` trusts nothing it has not checked: the archive, the format and version, the
checksum, that config and metadata are JSON, the whole config tree (registered classes and
their arguments only), and that the weights have exactly the names, shapes and kinds of
dtype the config's modules have, checked on a model built on the ``meta`` device (no
memory), before the real model is built: a small file cannot ask for a huge layer. Every
failure is a :class:`~hybridflow.errors.FileFormatError` naming the file. Files of version 1
(written before checksums) are still read, with every check but the checksum.

Writes are atomic (:func:`hybridflow.io.atomic_write`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hybridflow.config import check_config, from_config, get_config
from hybridflow.errors import ArgumentError, ArgumentTypeError, CheckpointMismatch, FileFormatError
from hybridflow.io.atomic import atomic_torch_save
from hybridflow.io.integrity import digest, first_line, read_torch_file, verify_digest
from hybridflow.io.state_dict import check_state_dict

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "load",
    "save",
]

FORMAT_VERSION = 2
"""The version :func:`save` writes."""
READABLE_VERSIONS = (1, 2)
"""The versions :func:`load` reads (1: before checksums)."""
_FORMAT = "hybridflow"
_ENTRIES = {"format", "version", "config", "metadata", "state_dict"}


def save(
    model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> None:
    """Save a configurable hybridflow model (its config and its weights) to ``path``, with a
    checksum over both (format version :data:`FORMAT_VERSION`).

    Raises:
        ArgumentTypeError: the model, or an argument it was built with, cannot be written as
            plain data (a custom ``subnet`` callable, say): save its ``state_dict`` instead;
            or ``metadata`` is not JSON data. Nothing is written then.
    """
    config = get_config(model)
    try:
        metadata_text = json.dumps(dict(metadata or {}))
    except (TypeError, ValueError) as error:
        raise ArgumentTypeError(
            f"save: metadata must be JSON data (dicts, lists, numbers, strings): {error}",
            argument="metadata",
        ) from error
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "config": json.dumps(config),
        "metadata": metadata_text,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload["checksum"] = digest(payload, "model file")
    atomic_torch_save(payload, path)


def load(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model saved by :func:`save`; returns ``(model, metadata)``.

    Everything in the file is checked (see the module's docstring) before the model is built.
    Only registered hybridflow classes are built (import the module defining your own blocks
    first), and each must be buildable on the ``meta`` device (as every ``torch.nn`` layer
    is), where the sizes the config asks for are checked against the stored weights; the
    file is read with ``weights_only=True``. A model whose weights were all of one
    floating dtype (a ``.double()`` model, say) is returned in that dtype.

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: the file is not a sound hybridflow model file; the message names it
            and says what is wrong.
    """
    path = Path(path)
    payload = read_torch_file(path, map_location=map_location, what="model file")
    config, metadata, state_dict = _checked_payload(payload, path)
    try:
        check_config(config)
    except (ArgumentError, ArgumentTypeError) as error:
        raise FileFormatError(f"{path}: {error}", path=path) from error
    except RecursionError as error:
        raise FileFormatError(f"{path}: its config is nested too deeply", path=path) from error
    _fits_own_weights(_skeleton(config, path), state_dict, path)
    model = _build(config, path)
    dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    model.load_state_dict(state_dict)
    return model, metadata


def _checked_payload(
    payload: Any, path: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
    """Config, metadata and state_dict of a model file, each checked; raises
    :class:`FileFormatError` naming what is wrong."""

    def refuse(detail: str) -> FileFormatError:
        return FileFormatError(f"{path}: {detail}", path=path)

    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        kind = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise refuse(f"not a hybridflow model file (it holds {kind!r})")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise refuse(f"invalid format version {version!r} (versions start at 1)")
    if version not in READABLE_VERSIONS:
        raise refuse(
            f"format version {version}; this hybridflow reads versions "
            f"{list(READABLE_VERSIONS)}: upgrade hybridflow"
        )
    entries = _ENTRIES | ({"checksum"} if version >= 2 else set())
    missing, unexpected = sorted(entries - set(payload)), sorted(set(payload) - entries)
    if missing or unexpected:
        raise refuse(f"entries missing {missing}, unexpected {unexpected} (a damaged file?)")
    for key in ("config", "metadata"):
        if not isinstance(payload[key], str):
            raise refuse(f"its {key} is a {type(payload[key]).__name__}, not a JSON string")
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict):
        raise refuse(f"its state_dict is a {type(state_dict).__name__}, not a dict of tensors")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise refuse(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
    if version >= 2:
        body = {k: v for k, v in payload.items() if k != "checksum"}
        verify_digest(body, payload["checksum"], path)
    parsed = {}
    for key in ("config", "metadata"):
        try:
            parsed[key] = json.loads(payload[key])
        except (ValueError, RecursionError) as error:
            raise refuse(f"its {key} is not valid JSON ({error})") from error
        if not isinstance(parsed[key], dict):
            raise refuse(f"its {key} is a JSON {type(parsed[key]).__name__}, not an object")
    return parsed["config"], parsed["metadata"], state_dict


def _skeleton(config: dict[str, Any], path: Path) -> nn.Module:
    """The model built on the ``meta`` device: shapes and dtypes, no memory."""
    try:
        with torch.device("meta"):
            return from_config(config)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        raise FileFormatError(
            f"{path}: its config does not build a model (built on the meta device, where "
            f"sizes are checked before any memory is allocated): {first_line(error)}",
            path=path,
        ) from error


def _build(config: dict[str, Any], path: Path) -> nn.Module:
    try:
        return from_config(config)
    except (TypeError, ValueError, RuntimeError) as error:  # its sizes were checked on meta
        raise FileFormatError(
            f"{path}: its config does not build a model: {first_line(error)}", path=path
        ) from error


def _fits_own_weights(model: nn.Module, state_dict: Mapping[str, Tensor], path: Path) -> None:
    try:
        check_state_dict(model, state_dict)
    except CheckpointMismatch as error:
        raise FileFormatError(
            f"{path}: its weights do not fit its config: {error.detail}", path=path
        ) from error
