"""Trusting a file only after checking it: checksums of plain data and checked ``torch.load``.

Model files (:func:`hybridflow.save`) and training checkpoints
(:func:`hybridflow.sbi.save_checkpoint`) hold only tensors and plain data, and store the
:func:`digest` of what they hold. :func:`read_torch_file` is the one place that reads such a
file: it loads with ``torch.load(..., weights_only=True)``, so no code from the file ever
runs, and turns every way a file can be broken (empty, truncated, not a torch file, pickled
objects) into one :class:`~hybridflow.errors.FileFormatError` that names the file.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridflow.errors import ArgumentTypeError, FileFormatError

__all__ = ["digest", "first_line", "read_torch_file", "verify_digest"]

_ZIP_MAGIC = b"PK\x03\x04"


def _encode(hasher: Any, value: Any, where: str) -> None:
    """Feed ``value`` to ``hasher`` in a form that is unambiguous: every item is tagged with
    its type and, where it has one, its length."""

    def put(tag: bytes, text: str) -> None:
        data = text.encode()
        hasher.update(tag + str(len(data)).encode() + b":" + data)

    if value is None:
        hasher.update(b"N")
    elif isinstance(value, bool):
        hasher.update(b"B1" if value else b"B0")
    elif isinstance(value, int):
        put(b"I", str(value))
    elif isinstance(value, float):
        put(b"F", value.hex() if math.isfinite(value) else repr(value))
    elif isinstance(value, str):
        put(b"S", value)
    elif isinstance(value, Tensor):
        if value.layout is not torch.strided or value.is_quantized:
            raise ArgumentTypeError(
                f"{where} is a {value.layout} tensor; only dense tensors can be checksummed",
                argument=where,
            )
        flat = value.detach().cpu().contiguous().reshape(-1)
        put(b"X", f"{flat.dtype}{tuple(value.shape)}")
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        hasher.update(str(raw.numel()).encode() + b":")
        hasher.update(raw.numpy())
    elif isinstance(value, dict):
        put(b"D", str(len(value)))
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise ArgumentTypeError(
                    f"{where} has a key of type {type(key).__name__}; keys must be str or int",
                    argument=where,
                )
            _encode(hasher, key, where)
            _encode(hasher, item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        put(b"L" if isinstance(value, list) else b"T", str(len(value)))
        for index, item in enumerate(value):
            _encode(hasher, item, f"{where}[{index}]")
    else:
        raise ArgumentTypeError(
            f"{where} is a {type(value).__name__}; a checksummed file holds only tensors, "
            "numbers, strings, None, and lists, tuples and dicts of them",
            argument=where,
        )


def digest(value: Any, where: str = "value") -> str:
    """The SHA-256 digest (64 hex digits) of nested plain data and tensors.

    Covers every tensor's dtype, shape and bytes, every number (floats exactly, by their hex
    form), string, key and the nesting itself, so any changed bit gives another digest. The
    encoding does not depend on the device a tensor is on.

    Args:
        value: tensors, ``None``, bools, ints, floats, strings, and lists, tuples and dicts
            (str or int keys, in their order) of them.
        where: how errors name ``value``.

    Raises:
        ArgumentTypeError: ``value`` holds anything else (the message gives its path).

    Example:
        >>> import torch
        >>> digest({"w": torch.zeros(2)}) == digest({"w": torch.zeros(2)})
        True
        >>> digest({"w": torch.zeros(2)}) == digest({"w": torch.zeros(2, dtype=torch.float64)})
        False
    """
    hasher = hashlib.sha256()
    _encode(hasher, value, where)
    return hasher.hexdigest()


def verify_digest(value: Any, stored: object, path: str | os.PathLike[str]) -> None:
    """Check that ``value`` has the digest ``stored`` (read from the file at ``path``).

    Raises:
        FileFormatError: the stored checksum is not a digest, or ``value`` differs from what
            was written: the file was changed or damaged after it was written.
    """
    if not (isinstance(stored, str) and len(stored) == 64):
        raise FileFormatError(
            f"{path}: its checksum is not a SHA-256 digest ({stored!r})", path=path
        )
    try:
        actual = digest(value, "the file's contents")
    except ArgumentTypeError as error:
        raise FileFormatError(f"{path}: {error}", path=path) from error
    if actual != stored:
        raise FileFormatError(
            f"{path}: checksum mismatch (stored {stored[:12]}..., computed {actual[:12]}...): "
            "the file was changed or damaged after it was written",
            path=path,
        )


def first_line(error: BaseException) -> str:
    """``"Type: first line of the message"``: what a one-line report quotes of an error raised
    by code outside hybridflow (torch's messages can run over many lines)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_torch_file(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = None,
    what: str = "file",
) -> Any:
    """``torch.load(path, map_location, weights_only=True)``, every failure named and typed.

    Args:
        path: the file.
        map_location: passed to :func:`torch.load`.
        what: what the file should be, for messages (``"model file"``, ``"checkpoint"``).

    Returns:
        What the file holds (tensors and plain data only).

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: ``path`` is a folder, is empty, truncated or not a file written by
            :func:`torch.save`, or holds pickled objects (which are never loaded: loading them
            could run code). The message is one line and names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    if not path.is_file():
        raise FileFormatError(f"{path} is not a file; expected a {what}", path=path)
    with path.open("rb") as file:
        head = file.read(len(_ZIP_MAGIC))
        if not head:
            raise FileFormatError(
                f"{path} is empty; expected a {what} (was its write cut short?)", path=path
            )
        if not zipfile.is_zipfile(file):
            if head == _ZIP_MAGIC:
                raise FileFormatError(
                    f"{path} is truncated: its archive has no end (was its write cut short?)",
                    path=path,
                )
            raise FileFormatError(
                f"{path} is not a {what}: not an archive written by torch.save", path=path
            )
        file.seek(0)
        try:
            return torch.load(file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise FileFormatError(
                f"{path} is refused: it holds something other than tensors and plain data "
                "(a pickled object, which loading could run as code, or damaged data); "
                "hybridflow never writes such files",
                path=path,
            ) from error
        except Exception as error:  # torch.load names no set of errors for damaged archives
            raise FileFormatError(
                f"{path} cannot be read as a {what} ({first_line(error)})", path=path
            ) from error
