"""Running a command with a given number of torch CPU threads, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hybridflow.cli.errors import UsageError

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(count)`` (``None``: leave it), restoring the
    previous number at the end.

    Raises:
        UsageError: ``count`` below 1 (as ``--threads``).

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    if count is not None and count < 1:
        raise UsageError(f"--threads must be at least 1, got {count}")
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
