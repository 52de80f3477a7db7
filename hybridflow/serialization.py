"""Saving and loading whole models (config + weights) and checked ``state_dict`` loading.

File format (version 2): a ``torch.save`` archive of a dict holding only strings and tensors,
so it loads with ``torch.load(..., weights_only=True)`` and never executes code::

    {"format": "hybridflow", "version": 2,
     "config": JSON string of hybridflow.config.get_config(model),
     "metadata": JSON string (user data), "state_dict": {name: tensor},
     "checksum": hybridflow.integrity.digest of the other five entries}

:func:`load` trusts nothing it has not checked: the archive, the format and version, the
checksum, that config and metadata are JSON, the whole config tree (registered classes and
their arguments only), and that the weights have exactly the names, shapes and kinds of
dtype the config's modules have, checked on a model built on the ``meta`` device (no
memory), before the real model is built: a small file cannot ask for a huge layer. Every
failure is a :class:`~hybridflow.errors.FileFormatError` naming the file. Files of version 1
(written before checksums) are still read, with every check but the checksum.

Writes are atomic: a temporary file ``.NAME.<16 hex digits>.tmp`` in the same folder, then
``os.replace``; temporary files of that pattern left by earlier writes that were killed are
removed by the next write of the same target.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from hybridflow.config import check_config, from_config, get_config
from hybridflow.errors import ArgumentError, ArgumentTypeError, CheckpointMismatch, FileFormatError
from hybridflow.integrity import digest, first_line, read_torch_file, verify_digest

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "atomic_torch_save",
    "atomic_write",
    "check_state_dict",
    "load",
    "load_state_dict",
    "save",
]

FORMAT_VERSION = 2
"""The version :func:`save` writes."""
READABLE_VERSIONS = (1, 2)
"""The versions :func:`load` reads (1: before checksums)."""
_FORMAT = "hybridflow"
_ENTRIES = {"format", "version", "config", "metadata", "state_dict"}
_TEMP_DIGITS = 16
_SHOWN = 5  # names listed per kind of mismatch; the rest are counted


def _remove_stale_temporaries(target: Path, own: Path) -> None:
    """Remove ``.NAME.<hex>.tmp`` files of ``target`` older than ``own`` (the current write's
    temporary file): left by writes that were killed before they could clean up."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{{_TEMP_DIGITS}}}\.tmp")
    started = own.stat().st_mtime_ns
    for entry in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if entry == own or not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file() and not entry.is_symlink() and entry.stat().st_mtime_ns < started:
                entry.unlink()
        except OSError:  # removed meanwhile, or not ours to remove: the write goes on
            pass


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers see the old content or the whole new one, never a part.

    ``write`` fills a temporary file in the same folder, which is flushed to disk and then
    renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows); the file gets
    the permissions of any newly created file (the process's umask). If ``write``
    raises, or the process dies before the rename, ``path`` keeps its previous content and the
    temporary file is removed (when the process survives to do it). Temporary files of
    ``path`` that a killed process left behind (``.NAME.<16 hex digits>.tmp``, older than
    this write's) are removed by this write; nothing else in the folder is touched, so two
    processes must not write the same file at once. This is the one atomic writer of the
    package: model files, checkpoints, figures and reports all go through it.

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
    temp = target.parent / f".{target.name}.{secrets.token_hex(_TEMP_DIGITS // 2)}.tmp"
    handle = temp.open("xb")
    try:
        _remove_stale_temporaries(target, temp)
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


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return f"[{shown}]" if len(keys) <= _SHOWN else f"[{shown}, ... {len(keys) - _SHOWN} more]"


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point or dtype.is_complex:
        return "complex" if dtype.is_complex else "floating"
    return "integer"


def check_state_dict(
    module: nn.Module, state_dict: Mapping[str, Any], source: object = None
) -> None:
    """Check that ``state_dict`` fits ``module`` exactly, changing nothing.

    Keys, shapes and kinds of dtype (floating, integer, bool) must all match; floating
    precision may differ (it is cast on loading, as :meth:`nn.Module.load_state_dict` does).

    Args:
        module: what would load it.
        state_dict: names to tensors.
        source: the file it came from, for the message.

    Raises:
        CheckpointMismatch: every problem at once (missing and unexpected keys, shape and
            dtype mismatches, values that are not tensors), the first few of each named.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatch(
            f"{type(module).__name__} state_dict must be a dict of tensors, got "
            f"{type(state_dict).__name__}",
            path=source,
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    common = sorted(set(own) & set(state_dict))
    not_tensors = [k for k in common if not isinstance(state_dict[k], Tensor)]
    tensors = [k for k in common if k not in not_tensors]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}"
        for k in tensors
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    dtypes = [
        f"{k}: checkpoint {state_dict[k].dtype}, model {own[k].dtype}"
        for k in tensors
        if _kind(state_dict[k].dtype) != _kind(own[k].dtype)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_names(unexpected)}")
    if not_tensors:
        problems.append(f"values that are not tensors {_names(not_tensors)}")
    for title, found in (("shape", shapes), ("dtype", dtypes)):
        if found:
            more = f" ... {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
            problems.append(f"{title} mismatches: " + "; ".join(found[:_SHOWN]) + more)
    if problems:
        where = "" if source is None else f"{source}: "
        raise CheckpointMismatch(
            f"{where}checkpoint does not fit {type(module).__name__}: " + ", ".join(problems),
            path=source,
        )


def load_state_dict(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: object = None
) -> None:
    """``module.load_state_dict(state_dict)`` that checks everything before changing anything.

    ``nn.Module.load_state_dict`` copies every matching tensor before it reports mismatches;
    here :func:`check_state_dict` names missing keys, unexpected keys, shape and dtype
    mismatches in one :class:`~hybridflow.errors.CheckpointMismatch` (a ``ValueError``) and
    the module is left as it was.

    Args:
        module: the module to fill.
        state_dict: names to tensors.
        source: the file ``state_dict`` came from, named in the message.
    """
    check_state_dict(module, state_dict, source)
    module.load_state_dict(state_dict)
