"""``CNN``: a convolutional summary network for signals, images and volumes."""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor, nn

from hybridflow.arguments import integer, one_of
from hybridflow.config import Configurable
from hybridflow.errors import InputError, InputTypeError

__all__ = ["CNN", "SummaryOutput"]

SummaryOutput = Literal["vector", "field"]
"""What :class:`CNN` returns: one vector per observation, or a feature map of its size."""

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_LAYOUT = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}


class CNN(nn.Module, Configurable):
    r"""Convolutional summary network for observations on a grid.

    ``depth`` convolutions (kernel 3, "same" padding, GELU) extract local features of an
    observation ``(B, in_channels, *S)``. Then, with ``output="vector"`` (default), adaptive
    average pooling to a fixed ``pool_size`` grid and an MLP give a vector
    ``(B, out_features)`` for any input size; with ``output="field"``, a 1x1 convolution gives
    a feature map ``(B, out_features, *S)`` of the observation's size, the condition a
    multiscale image flow (:class:`~hybridflow.networks.Glow` with
    ``cond_features=out_features``) resizes to each of its scales.

    Args:
        in_channels: channels of the observation.
        out_features: size of the summary vector, or channels of the summary field.
        spatial_dims: 1 for signals ``(B, C, L)``, 2 for images, 3 for volumes.
        hidden: channels of the convolutions.
        depth: number of convolutions, at least 1.
        output: ``"vector"`` or ``"field"`` (see :data:`SummaryOutput`).
        pool_size: side of the pooled grid (``"vector"`` only).

    Example:
        >>> import torch
        >>> from hybridflow.summary import CNN
        >>> tuple(CNN(1, 16)(torch.randn(2, 1, 28, 28)).shape)
        (2, 16)
        >>> tuple(CNN(1, 4, output="field")(torch.randn(2, 1, 28, 28)).shape)
        (2, 4, 28, 28)
    """

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        spatial_dims: int = 2,
        hidden: int = 32,
        depth: int = 3,
        output: SummaryOutput = "vector",
        pool_size: int = 4,
    ) -> None:
        super().__init__()
        self.in_channels = integer(in_channels, "in_channels", "CNN", minimum=1)
        self.out_features = integer(out_features, "out_features", "CNN", minimum=1)
        integer(hidden, "hidden", "CNN", minimum=1)
        integer(depth, "depth", "CNN", minimum=1)
        integer(pool_size, "pool_size", "CNN", minimum=1)
        one_of(spatial_dims, "spatial_dims", "CNN", (1, 2, 3))
        one_of(output, "output", "CNN", get_args(SummaryOutput))
        self.spatial_dims = spatial_dims
        self.output: SummaryOutput = output
        conv = _CONV[spatial_dims]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [conv(in_channels if i == 0 else hidden, hidden, 3, padding=1), nn.GELU()]
        self.features = nn.Sequential(*layers)
        if output == "field":
            self.head: nn.Module = conv(hidden, out_features, 1)
        else:
            self.head = nn.Sequential(
                _POOL[spatial_dims](pool_size),
                nn.Flatten(),
                nn.Linear(hidden * pool_size**spatial_dims, hidden),
                nn.GELU(),
                nn.Linear(hidden, out_features),
            )

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_features={self.out_features}, "
            f"spatial_dims={self.spatial_dims}, output={self.output!r}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, *S)`` to ``(B, out_features)`` or ``(B, out_features, *S)``."""
        if not isinstance(x, Tensor):
            raise InputTypeError(f"expected a tensor, got {type(x).__name__}", where=("CNN",))
        if x.dim() != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            raise InputError(
                f"expected {_LAYOUT[self.spatial_dims]} with C={self.in_channels}, got "
                f"shape {tuple(x.shape)}",
                where=("CNN",),
            )
        return self.head(self.features(x))
