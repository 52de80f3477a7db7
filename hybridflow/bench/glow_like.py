"""The benchmarks' model: a single-scale Glow in store, invert or checkpoint mode."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hybridflow.arguments import one_of, positive_int
from hybridflow.autograd import Chain, TileSize
from hybridflow.deprecation import renamed_arguments
from hybridflow.layers.coupling import AffineCoupling
from hybridflow.layers.squeeze import Squeeze
from hybridflow.networks.steps import glow_step

__all__ = ["BenchMode", "GlowLike", "gaussian_nll", "training_step"]

BenchMode = Literal["store", "invert", "checkpoint", "auto"]
"""How a benchmark step keeps activations: all of them (plain autograd), none (hybridflow's
reconstruction), one per Glow step (``torch.utils.checkpoint``), or the chain's choice
(``"auto"``: store while plain autograd keeps at most 64 MiB)."""


class GlowLike(nn.Module):
    """A single-scale Glow: ``Squeeze(2)`` then ``depth`` x (ActNorm, InvConv1x1,
    AffineCoupling) (:func:`~hybridflow.networks.glow_step`) on images
    ``(B, num_features, H, W)``.

    Not a :class:`~hybridflow.networks.Network`: its ``"checkpoint"`` mode runs the steps
    under ``torch.utils.checkpoint``, outside any chain.

    Args:
        num_features: channels of the input image (formerly ``channels``).
        depth: number of Glow steps.
        hidden: width of the coupling conditioners.
        mode: ``"store"`` (plain autograd), ``"invert"`` (hybridflow's reconstruction) or
            ``"checkpoint"`` (``torch.utils.checkpoint`` around every Glow step, whose layers
            run in store mode), or ``"auto"`` (the chain's choice); see :data:`BenchMode`.
        anchor_every: the chain's ``anchor_every`` (``"invert"`` and ``"store"`` only).
        micro_batches: the chain's ``micro_batches`` (``"invert"`` only).
        tile_size: the chain's ``tile_size`` (``"invert"`` only): couplings run tile by tile.

    Example:
        >>> import torch
        >>> model = GlowLike(3, depth=2, hidden=8, mode="invert")
        >>> z, logdet = model(torch.randn(2, 3, 8, 8))
        >>> tuple(z.shape), tuple(logdet.shape)
        ((2, 12, 4, 4), (2,))
    """

    @renamed_arguments(channels="num_features")
    def __init__(
        self,
        num_features: int,
        depth: int,
        hidden: int,
        mode: BenchMode,
        anchor_every: int | None = None,
        micro_batches: int = 1,
        tile_size: TileSize | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_features", num_features), ("depth", depth), ("hidden", hidden)):
            positive_int(value, name, "GlowLike")
        one_of(mode, "mode", "GlowLike", get_args(BenchMode))
        width = 4 * num_features
        steps = [
            Chain(
                *glow_step(width, None, lambda: AffineCoupling(width, hidden, spatial_dims=2)),
                mode="store",
            )
            for _ in range(depth)
        ]
        self.mode: BenchMode = mode
        if mode == "checkpoint":
            self.squeeze = Squeeze(2)
            self.steps = nn.ModuleList(steps)
        else:
            self.flow = Chain(
                Squeeze(2),
                *steps,
                mode=mode,
                anchor_every=anchor_every,
                micro_batches=micro_batches,
                tile_size=tile_size,
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, logdet)`` of images ``x`` ``(B, C, H, W)``."""
        if self.mode != "checkpoint":
            return self.flow(x)
        h, logdet = self.squeeze(x)
        for step in self.steps:
            h, step_logdet = checkpoint(step, h, use_reentrant=False)
            logdet = logdet + step_logdet
        return h, logdet


def gaussian_nll(z: Tensor, logdet: Tensor) -> Tensor:
    r"""Negative log likelihood per dimension under a standard normal base:
    :math:`-\frac{1}{n}\,\mathrm{mean}_b\,[\log \mathcal N(z_b; 0, I) + \log|\det|_b]`."""
    dims = z[0].numel()
    log_pz = -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * dims * math.log(2 * math.pi)
    return -(log_pz + logdet).mean() / dims


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor) -> float:
    """Forward, Gaussian NLL with logdet, backward, optimizer step; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    z, logdet = model(x)
    loss = gaussian_nll(z, logdet)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
