"""Input validation shared by every layer: shapes, conditions and finiteness."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["check_condition", "check_finite", "check_input", "inside_chain", "is_inside_chain"]


class _ChainDepth:
    """How many chains are running their layers right now (in this process).

    While it is positive, the outermost chain has already checked what entered it, so layers
    skip the full-tensor finiteness pass (one per layer would cost a device sync each). A plain
    attribute rather than a ``ContextVar``: ``torch.compile`` traces attribute updates but
    falls back to eager at ``ContextVar`` calls. Autograd runs a backward while the thread that
    called it waits, so one counter per process is enough.
    """

    def __init__(self) -> None:
        self.value = 0


_DEPTH = _ChainDepth()


@contextmanager
def inside_chain() -> Iterator[None]:
    """Mark the enclosed calls as running inside a chain that validated its input."""
    _DEPTH.value += 1
    try:
        yield
    finally:
        _DEPTH.value -= 1


def is_inside_chain() -> bool:
    """Whether the caller runs as a layer of a chain (the chain validated the entry)."""
    return _DEPTH.value > 0


def check_finite(tensor: Tensor, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``tensor`` has NaN or Inf entries."""
    if is_inside_chain() or torch.isfinite(tensor).all():
        return
    bad = int((~torch.isfinite(tensor)).sum())
    raise ValueError(
        f"{where}: input has {bad} NaN/Inf value(s) out of {tensor.numel()}; an inverse "
        "cannot reconstruct from non-finite values"
    )


def check_input(tensor: object, where: str, channels: int, spatial_dims: int | None) -> None:
    """Check a layer input: a tensor of shape ``(B, channels, *spatial)``.

    Args:
        tensor: what the caller passed.
        where: the layer's name for the message.
        channels: expected size of dimension 1.
        spatial_dims: expected number of spatial dimensions (0 for vectors ``(B, D)``), or
            ``None`` to accept any.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() < 2:
        raise ValueError(
            f"{where}: expected a batch of shape (B, {channels}, ...), got shape "
            f"{tuple(tensor.shape)}"
        )
    if spatial_dims is not None and tensor.dim() != 2 + spatial_dims:
        layout = {0: "(B, C)", 1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}
        raise ValueError(
            f"{where}: expected rank {2 + spatial_dims} input {layout.get(spatial_dims, '')}, "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[1] != channels:
        raise ValueError(
            f"{where}: expected {channels} channels/features in dimension 1, got shape "
            f"{tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise TypeError(f"{where}: expected a floating-point tensor, got {tensor.dtype}")


def check_condition(cond: object, x: Tensor, where: str, cond_features: int) -> None:
    """Check a condition against the layer's declared ``cond_features`` and the input ``x``.

    Unconditional layers (``cond_features == 0``) accept and ignore any condition. A
    condition is either a vector ``(B, cond_features)`` (broadcast over space) or a tensor
    with the same spatial shape as ``x``: ``(B, cond_features, *x.shape[2:])``.
    """
    if cond_features == 0:
        return  # an unconditional layer ignores the condition its chain passes to every layer
    if cond is None:
        raise ValueError(
            f"{where}: missing condition; the layer was built with cond_features={cond_features}"
        )
    if not isinstance(cond, Tensor):
        raise TypeError(f"{where}: condition must be a torch.Tensor, got {type(cond).__name__}")
    if cond.dtype != x.dtype or cond.device != x.device:
        raise TypeError(
            f"{where}: condition is {cond.dtype} on {cond.device} but the input is {x.dtype} "
            f"on {x.device}; move both to one dtype and device"
        )
    spatial = tuple(x.shape[2:])
    ok_vector = cond.dim() == 2
    ok_field = cond.dim() == x.dim() and tuple(cond.shape[2:]) == spatial
    if (
        cond.dim() < 2
        or cond.shape[0] != x.shape[0]
        or cond.shape[1] != cond_features
        or not (ok_vector or ok_field)
    ):
        expected = f"(B={x.shape[0]}, {cond_features})"
        if spatial:
            expected += f" or (B={x.shape[0]}, {cond_features}, {', '.join(map(str, spatial))})"
        raise ValueError(f"{where}: condition has shape {tuple(cond.shape)}, expected {expected}")
