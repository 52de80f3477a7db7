"""``MLP``: a fully connected summary network for fixed-size observations."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from hybridflow.arguments import integer, number
from hybridflow.config import Configurable
from hybridflow.errors import InputError, InputTypeError

__all__ = ["MLP", "mlp_layers"]


def mlp_layers(
    in_features: int, out_features: int, hidden: int, depth: int, dropout: float = 0.0
) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with GELU, then a linear output layer.

    ``depth == 0`` gives one linear layer. ``dropout > 0`` follows each GELU with a
    :class:`~torch.nn.Dropout` (none at 0, so the layers' indices stay those without it).
    """
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLP(nn.Module, Configurable):
    r"""Multilayer perceptron :math:`s(x) = W_L \sigma(\dots \sigma(W_1 \operatorname{vec}(x)))`.

    Each observation ``(B, *shape)`` is flattened to ``(B, in_features)``; the output is
    ``(B, out_features)``, a vector condition for couplings built with
    ``cond_features=out_features``. The activation :math:`\sigma` is GELU.

    Args:
        in_features: number of entries of one observation (or its shape, e.g. ``(4, 2)``).
        out_features: size of the summary.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        dropout: probability of zeroing a hidden unit while training (``0``: no dropout).

    Example:
        >>> import torch
        >>> from hybridflow.summary import MLP
        >>> tuple(MLP((4, 2), 6)(torch.randn(3, 4, 2)).shape)
        (3, 6)
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int,
        hidden: int = 64,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(in_features, Sequence) and not isinstance(in_features, str):
            in_features = math.prod(
                integer(s, "in_features", "MLP", minimum=1) for s in in_features
            )
        self.in_features = integer(in_features, "in_features", "MLP", minimum=1)
        self.out_features = integer(out_features, "out_features", "MLP", minimum=1)
        integer(hidden, "hidden", "MLP", minimum=1)
        integer(depth, "depth", "MLP", minimum=0)
        number(dropout, "dropout", "MLP", minimum=0, maximum=1, open_high=True)
        self.net = mlp_layers(self.in_features, self.out_features, hidden, depth, dropout)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: Tensor) -> Tensor:
        """``(B, *shape) -> (B, out_features)``; ``prod(shape)`` must equal ``in_features``."""
        if not isinstance(x, Tensor):
            raise InputTypeError(f"expected a tensor, got {type(x).__name__}", where=("MLP",))
        if x.dim() < 2 or x[0].numel() != self.in_features:
            raise InputError(
                f"expected a batch (B, ...) of {self.in_features} entries per observation, "
                f"got shape {tuple(x.shape)}",
                where=("MLP",),
            )
        return self.net(x.flatten(1))
