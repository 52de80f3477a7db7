"""Small shape helpers shared by the layers: per-channel views and reductions."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["channel_view", "reduce_except_channels"]


def channel_view(values: Tensor, like: Tensor) -> Tensor:
    """View a per-channel vector ``(C,)`` so that it broadcasts against ``like`` ``(B, C, ...)``."""
    return values.view(1, -1, *([1] * (like.dim() - 2)))


def reduce_except_channels(x: Tensor, reduce: Callable[..., Tensor]) -> Tensor:
    """Reduce ``(B, C, ...)`` to ``(C,)`` over the batch and every spatial dimension."""
    dims = [0, *range(2, x.dim())]
    return reduce(x, dim=dims)
