"""Output folders of the command line: checked before any work, removed again when it fails.

The files in them are written by :mod:`hybridflow.io` (atomically)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hybridflow.cli.errors import UsageError
from hybridflow.deprecation import moved_names

__all__ = [
    "OutputError",
    "check_output_folder",
    "output_folder",
]


class OutputError(UsageError):
    """An output folder or file that cannot be written; the message names the path."""


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check that files can be created in it.

    Called before any work starts, so that a run never computes for minutes and then fails
    to write, and never leaves half its outputs behind.

    Raises:
        OutputError: the path is a file, lies under a file, or is not writable.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> file = Path(tempfile.mkdtemp()) / "file"
        >>> _ = file.write_text("")
        >>> try:
        ...     check_output_folder(file / "out")
        ... except OutputError as error:
        ...     print(str(error).endswith(f"{file} is a file"))
        True
    """
    path = Path(folder)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot use {path} as output folder: {parent} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
    except OSError as error:
        raise OutputError(
            f"cannot use {path} as output folder: {error.strerror or error}"
        ) from error
    os.close(handle)
    os.unlink(probe)
    return path


@contextmanager
def output_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``folder`` for the work done in the body (checked by
    :func:`check_output_folder`); if the body fails, the folders this created are removed
    again while they are empty, so a failed run leaves no empty folder behind.

    Enter it when the work starts, after every input has been checked.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> out = Path(tempfile.mkdtemp()) / "run" / "figures"
        >>> try:
        ...     with output_folder(out):
        ...         raise ValueError("the work failed")
        ... except ValueError:
        ...     pass
        >>> out.parent.exists()
        False
    """
    path = Path(folder)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        yield check_output_folder(path)
    except BaseException:
        for made in created:
            try:
                made.rmdir()  # only an empty folder is removed
            except OSError:
                break
        raise


# pyplot, save_figure and write_text write any file, not only the command line's: hybridflow.io
__getattr__ = moved_names(__name__, "hybridflow.io", ("pyplot", "save_figure", "write_text"))
