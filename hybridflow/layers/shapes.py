"""Small shape helpers shared by the layers: per-channel and per-sample views and reductions."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["batch_view", "channel_view", "per_sample_sum", "reduce_except_channels"]


def channel_view(values: Tensor, like: Tensor) -> Tensor:
    """View a per-channel vector ``(C,)`` so that it broadcasts against ``like`` ``(B, C, ...)``."""
    return values.view(1, -1, *([1] * (like.dim() - 2)))


def reduce_except_channels(x: Tensor, reduce: Callable[..., Tensor]) -> Tensor:
    """Reduce ``(B, C, ...)`` to ``(C,)`` over the batch and every spatial dimension."""
    dims = [0, *range(2, x.dim())]
    return reduce(x, dim=dims)


def per_sample_sum(x: Tensor) -> Tensor:
    """Sum ``(B, ...)`` to ``(B,)``: a log determinant from its per-entry terms."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def batch_view(values: Tensor, like: Tensor) -> Tensor:
    """View a per-sample vector ``(B,)`` so that it broadcasts against ``like`` ``(B, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))
