"""Builders shared by the tests: Glow-like chains, a small graph, a scalar loss of a flow's
output, parameters moved away from their identity initialisation, and a trained CLI run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

import hybridflow as hf
from hybridflow.cli.main import main
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
    perturb_parameters(chain, perturb)
    return chain


class NoisyCoupling(AffineCoupling):
    """An affine coupling with dropout in its conditioner: reconstruction must replay its
    random mask."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            channels,
            subnet=lambda i, o: nn.Sequential(
                nn.Linear(i, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, o)
            ),
        )


class ExplodingInverse(hf.InvertibleModule):
    """Inverse that overflows to Inf: reconstruction cannot rebuild the input."""

    def forward(self, x, cond=None):
        return x * 2, torch.full(x.shape[:1], x.shape[1] * 0.6931471805599453)

    def inverse(self, y, cond=None):
        return y / 2 + float("inf") * (y.abs() > 0.5), -self.forward(y)[1]


def perturb_parameters(module: nn.Module, scale: float) -> None:
    """Add ``scale`` times standard normal noise to every parameter (away from the identity
    initialisation) and mark every ActNorm initialised (no data-dependent init on the first
    call, which would undo the noise)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.mark_initialized(True)


def small_graph() -> hf.Graph:
    """x (4 features) -> proj (autograd Linear) -> norm (ActNorm) -> coupling (AffineCoupling
    conditioned on c, 2 features)."""
    return (
        hf.Graph()
        .input("x")
        .input("c")
        .autograd("proj", nn.Linear(4, 4), "x")
        .invertible("norm", ActNorm(4), "proj")
        .invertible("coupling", AffineCoupling(4, hidden=8, cond_features=2), "norm", "c")
        .output("coupling")
    )


def with_value(x: Tensor, index: tuple[int, ...], value: float) -> Tensor:
    """A copy of ``x`` with ``value`` at ``index``."""
    x = x.clone()
    x[index] = value
    return x


def flow_loss(y: Tensor, logdet: Tensor) -> Tensor:
    """A loss that uses the output nonlinearly and the log determinant (Gaussian NLL + extra)."""
    return 0.5 * (y**2).sum() - logdet.sum() + torch.sin(y).sum()


def train_from_recipe(folder: Path, recipe: str) -> Path:
    """Write the TOML ``recipe`` to ``folder/recipe.toml``, run ``hybridflow train --quiet`` on it
    (checking that it succeeds) and return its run folder, ``folder/run``."""
    config = folder / "recipe.toml"
    config.write_text(recipe)
    out = folder / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    return out
