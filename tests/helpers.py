"""Builders shared by the tests: Glow-like chains and a scalar loss of a flow's output."""

from __future__ import annotations

import torch
from torch import Tensor

import hybridflow as hf
from hybridflow.layers import ActNorm, AffineCoupling, InvConv1x1, Squeeze


def glow_steps(
    channels: int, depth: int, hidden: int = 8, cond: int = 0, spatial_dims: int = 2
) -> list[hf.InvertibleModule]:
    """``depth`` Glow steps: ActNorm -> InvConv1x1 -> AffineCoupling."""
    return [
        module
        for _ in range(depth)
        for module in (
            ActNorm(channels),
            InvConv1x1(channels),
            AffineCoupling(channels, hidden=hidden, cond_features=cond, spatial_dims=spatial_dims),
        )
    ]


def glow_chain(
    channels: int,
    depth: int,
    mode: hf.Mode,
    *,
    hidden: int = 8,
    cond: int = 0,
    spatial_dims: int = 2,
    squeeze: bool = False,
    seed: int = 0,
    perturb: float = 0.1,
    **kwargs,
) -> hf.Chain:
    """A reproducible chain (same parameters for the same seed, whatever the mode).

    Parameters are perturbed away from the identity initialisation so that zero-initialised
    conditioners do not hide mistakes. With ``squeeze`` the chain starts with ``Squeeze(2)``
    and its steps act on ``4 * channels`` (2D) channels.
    """
    torch.manual_seed(seed)
    width = channels * 2**spatial_dims if squeeze else channels
    layers = ([Squeeze(2)] if squeeze else []) + glow_steps(
        width, depth, hidden, cond, spatial_dims
    )
    chain = hf.Chain(*layers, mode=mode, **kwargs)
    with torch.no_grad():
        for p in chain.parameters():
            p.add_(perturb * torch.randn_like(p))
        for m in chain.modules():
            if isinstance(m, ActNorm):
                m.mark_initialized()
    return chain


def flow_loss(y: Tensor, logdet: Tensor) -> Tensor:
    """A loss that uses the output nonlinearly and the log determinant (Gaussian NLL + extra)."""
    return 0.5 * (y**2).sum() - logdet.sum() + torch.sin(y).sum()
