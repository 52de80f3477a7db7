"""Running statistics: buffers a forward pass updates, kept exact under reconstruction.

A BatchNorm in training mode (inside a coupling's conditioner, say) updates its running mean
and variance on every forward call. Reconstruction re-runs conditioners during backward, which
would update them a second time per step. :func:`frozen_running_stats` snapshots those
buffers around a layer's reconstruction and puts them back, so that after a step they are
exactly what plain autograd leaves (the re-run computes the same batch statistics for its
output, which is all a training-mode BatchNorm's output depends on).

Other modules whose buffers change during a forward pass (a counter, a running average their
output depends on) cannot be re-run faithfully: :func:`check_no_hidden_state` refuses them
when an invert-mode chain records its first pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from hybridflow.errors import ReconstructionError

__all__ = ["buffer_versions", "check_no_hidden_state", "frozen_running_stats", "running_buffers"]


def _tracks_running_stats(module: nn.Module) -> bool:
    # _NormBase is the base of BatchNorm1d/2d/3d, SyncBatchNorm and the InstanceNorms
    return isinstance(module, _NormBase) and module.training and module.track_running_stats


def running_buffers(module: nn.Module) -> list[Tensor]:
    """The buffers of ``module`` (and its submodules) that its forward pass updates."""
    return [
        buffer
        for sub in module.modules()
        if _tracks_running_stats(sub)
        for buffer in sub.buffers(recurse=False)
    ]


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of ``module`` after the enclosed re-run."""
    buffers = running_buffers(module)
    if not buffers:
        yield
        return
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def buffer_versions(module: nn.Module) -> list[tuple[str, Tensor, int]]:
    """``(name, buffer, version)`` of every buffer that is not a running statistic."""
    running = {id(b) for b in running_buffers(module)}
    return [(n, b, b._version) for n, b in module.named_buffers() if id(b) not in running]


def check_no_hidden_state(
    layer: nn.Module, before: list[tuple[str, Tensor, int]], where: str
) -> None:
    """Refuse ``layer`` when its forward pass changed a buffer other than running statistics.

    Args:
        layer: the layer that just ran.
        before: :func:`buffer_versions` of the layer taken before it ran.
        where: the layer's place, for the message.
    """
    for name, buffer, version in before:
        if buffer._version != version:
            raise ReconstructionError(
                f"buffer {name!r} changed during the forward pass; invert mode re-runs the "
                "layer during backward and would see (and change) that state again, so its "
                "gradients could not be trusted. Use mode='store' for this chain, or keep "
                "the state out of the buffers",
                layer=where,
                where=(where,),
            )
