"""Default conditioner networks of coupling layers: an MLP for vectors, a CNN for fields."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hybridflow.arguments import one_of, positive_int
from hybridflow.errors import ArgumentTypeError

__all__ = ["ConstantConditioner", "Subnet", "check_subnet", "default_conditioner"]

Subnet = Callable[[int, int], nn.Module]
"""A conditioner factory: ``subnet(in_features, out_features) -> nn.Module``."""

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def default_conditioner(
    in_features: int, out_features: int, hidden: int, spatial_dims: int
) -> nn.Module:
    """Glow's conditioner, with a zero-initialised last layer so the coupling starts as identity.

    * ``spatial_dims == 0`` (vectors ``(B, D)``): Linear -> ReLU -> Linear -> ReLU -> Linear.
    * ``spatial_dims in (1, 2, 3)``: Conv k3 -> ReLU -> Conv k1 -> ReLU -> Conv k3 with "same"
      padding, using Conv1d/2d/3d.

    Every parameter takes part in every forward pass (nothing unused, as
    ``DistributedDataParallel`` without ``find_unused_parameters`` requires).
    """
    positive_int(hidden, "hidden", "default_conditioner")
    one_of(spatial_dims, "spatial_dims", "default_conditioner", (0, 1, 2, 3))
    if spatial_dims == 0:
        layers = [
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_features),
        ]
    else:
        conv = _CONV[spatial_dims]
        layers = [
            conv(in_features, hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            conv(hidden, hidden, kernel_size=1),
            nn.ReLU(),
            conv(hidden, out_features, kernel_size=3, padding=1),
        ]
    last = layers[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers)


def check_subnet(subnet: object, where: str) -> None:
    """Refuse a ``subnet`` that is neither ``None`` nor a callable factory (an ``nn.Module``
    instance is a network, not a factory: pass ``lambda i, o: MyNet(i, o)``)."""
    if subnet is not None and (not callable(subnet) or isinstance(subnet, nn.Module)):
        raise ArgumentTypeError(
            "subnet must be a factory subnet(in_features, out_features) -> nn.Module or None, "
            f"got {type(subnet).__name__}",
            argument="subnet",
            where=(where,),
        )


class ConstantConditioner(nn.Module):
    """A learned output that depends on nothing: the conditioner of a layer with no input to
    condition on (an unconditional :class:`~hybridflow.layers.ConditionalSpline`).

    ``forward(x)`` with ``x`` of shape ``(B, 0, *S)`` returns the zero-initialised parameter
    broadcast to ``(B, out_features, *S)``, so the layer starts as the identity.

    Args:
        out_features: channels of the output.
        spatial_dims: trailing spatial dimensions of the input (0 for vectors).
    """

    draws_random_numbers = False

    def __init__(self, out_features: int, spatial_dims: int = 0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.value = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        shape = (x.shape[0], self.value.numel(), *x.shape[2:])
        return self.value.view(1, -1, *([1] * self.spatial_dims)).expand(shape)
