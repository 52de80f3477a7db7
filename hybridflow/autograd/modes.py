"""Chain modes, and running every chain of a block in one mode without touching its attribute."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

from hybridflow.arguments import one_of

__all__ = ["Mode", "active_mode", "chains_in_mode"]

Mode = Literal["store", "invert", "auto"]
"""How a :class:`~hybridflow.Chain` keeps what backward needs: ``"store"`` (plain autograd),
``"invert"`` (rebuild by inversion) or ``"auto"`` (store when what plain autograd keeps is
small, invert otherwise: :mod:`hybridflow.autograd.auto_mode`)."""


class _Override:
    """The mode every chain runs in now, if one is imposed (a plain attribute: ``torch.compile``
    traces it, see :class:`~hybridflow.autograd.scopes.NestingCount`)."""

    def __init__(self) -> None:
        self.mode: Mode | None = None


_OVERRIDE = _Override()


@contextmanager
def chains_in_mode(mode: Mode) -> Iterator[None]:
    """Run every :class:`~hybridflow.Chain` called in the block in ``mode``, whatever its own
    ``mode``; no chain's attributes change (the previous setting comes back on exit).

    Composition code (the graph's runtime and profiler) uses it to run a user's modules in the
    mode of the plan without setting attributes on them. It covers the calls made in the
    block: a backward run later (``loss.backward()``) reconstructs with what the forward
    pass recorded, and a recomputation (``torch.utils.checkpoint``) must enter the block again
    itself.

    Example:
        >>> import torch, hybridflow as hf
        >>> chain = hf.Chain(hf.layers.ActNorm(2), mode="invert")
        >>> with chains_in_mode("store"):
        ...     y, _ = chain(torch.randn(4, 2, requires_grad=True))
        >>> y.grad_fn.name(), chain.mode
        ('AddBackward0', 'invert')
    """
    one_of(mode, "mode", "chains_in_mode", get_args(Mode))
    previous = _OVERRIDE.mode
    _OVERRIDE.mode = mode
    try:
        yield
    finally:
        _OVERRIDE.mode = previous


def active_mode(own: Mode) -> Mode:
    """The mode a chain whose own setting is ``own`` runs in now."""
    return own if _OVERRIDE.mode is None else _OVERRIDE.mode
