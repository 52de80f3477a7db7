"""Process-wide nesting counters: how many scopes of one kind enclose the running code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["NestingCount"]


class NestingCount:
    """How many scopes of one kind are open right now (in this process).

    A plain attribute rather than a ``ContextVar``: ``torch.compile`` traces attribute updates
    but falls back to eager at ``ContextVar`` calls. Autograd runs a backward while the thread
    that called it waits, so one counter per process is enough.
    """

    def __init__(self) -> None:
        self.value = 0

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Open one scope for the enclosed block."""
        self.value += 1
        try:
            yield
        finally:
            self.value -= 1

    @property
    def active(self) -> bool:
        """Whether any scope is open."""
        return self.value > 0
