"""Atomic writes: readers see a file's old content or the whole new one, never a part.

A write fills a temporary file ``.NAME.<16 hex digits>.tmp`` in the same folder, then
``os.replace`` puts it over the target; temporary files of that pattern left by earlier writes
that were killed are removed by the next write of the same target.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_torch_save", "atomic_write", "write_text"]

_TEMP_DIGITS = 16


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


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write(path, lambda file: file.write(text.encode()))
