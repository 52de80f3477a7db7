"""Elementwise invertible maps: a learned per-channel affine map and an invertible activation."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hybridflow.arguments import number, positive_int
from hybridflow.autograd.checks import check_finite, check_input
from hybridflow.autograd.module import InvertibleModule, Reconstruction
from hybridflow.errors import InputError, InputTypeError
from hybridflow.layers.shapes import channel_view, per_sample_sum, reduce_except_channels

__all__ = ["Affine", "LeakyReLU"]


class Affine(InvertibleModule):
    r"""Learned per-channel affine map :math:`y = x \odot e^{s} + b`.

    :math:`s, b \in \mathbb{R}^C` are plain trainable parameters, initialised to zero (the
    identity). Unlike :class:`~hybridflow.layers.ActNorm` there is no data-dependent
    initialisation: the layer is the same function before and after its first batch, which is
    what a fixed pre-processing step or a learned output scaling wants. The parameters are per
    channel (not per entry), so one layer serves inputs of any spatial size. The log determinant
    is :math:`N \sum_c s_c` with :math:`N` the number of spatial positions.

    Works on vectors ``(B, C)``, sequences ``(B, C, L)``, images ``(B, C, H, W)`` and volumes
    ``(B, C, D, H, W)``.

    Args:
        num_features: the number of channels ``C``.

    Example:
        >>> import torch
        >>> from hybridflow.layers import Affine
        >>> layer = Affine(3)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> y, logdet = layer(x)
        >>> torch.equal(y, x), logdet.tolist()
        (True, [0.0, 0.0])

    References:
        Dinh et al., "Density estimation using Real NVP", 2017 (affine bijections).
    """

    draws_random_numbers = False

    def __init__(self, num_features: int) -> None:
        super().__init__()
        positive_int(num_features, "num_features", type(self).__name__)
        self.num_features = num_features
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def _logdet(self, x: Tensor, sign: float) -> Tensor:
        positions = math.prod(x.shape[2:])
        return (sign * positions * self.log_scale.sum()).to(x.dtype).expand(x.shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, type(self).__name__, self.num_features, None, self)
        y = x * channel_view(self.log_scale.exp(), x) + channel_view(self.bias, x)
        return y, self._logdet(x, 1.0)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        where = f"{type(self).__name__}.inverse"
        check_input(y, where, self.num_features, None, self)
        check_finite(y, where)
        x = (y - channel_view(self.bias, y)) * channel_view((-self.log_scale).exp(), y)
        return x, self._logdet(y, -1.0)

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        r"""Hand-written rule. Forward pass: :math:`x = (y - b) e^{-s}`,
        :math:`\bar x = \bar y e^{s}`, :math:`\bar b = \sum \bar y`,
        :math:`\bar s = \sum \bar y (y - b) + N \sum_B \overline{\log\det}`. Inverse pass:
        :math:`y = x e^{s} + b`, :math:`\bar y = \bar x e^{-s}`, :math:`\bar b = -\sum \bar y`,
        :math:`\bar s = -\sum \bar x x - N \sum_B \overline{\log\det}`.
        """
        scale = channel_view(self.log_scale.exp(), output)
        bias = channel_view(self.bias, output)
        positions = math.prod(output.shape[2:])
        if not inverse:
            centered = output - bias
            rebuilt = centered / scale
            grad_input = grad_output * scale
            grad_bias = reduce_except_channels(grad_output, torch.sum)
            grad_log_scale = reduce_except_channels(grad_output * centered, torch.sum)
            grad_log_scale = grad_log_scale + positions * grad_logdet.sum()
        else:
            rebuilt = output * scale + bias
            grad_input = grad_output / scale
            grad_bias = -reduce_except_channels(grad_input, torch.sum)
            grad_log_scale = -reduce_except_channels(grad_output * output, torch.sum)
            grad_log_scale = grad_log_scale - positions * grad_logdet.sum()
        grads = (
            grad_log_scale if self.log_scale.requires_grad else None,
            grad_bias if self.bias.requires_grad else None,
        )
        return Reconstruction(rebuilt, grad_input, None, grads)


class LeakyReLU(InvertibleModule):
    r"""Invertible leaky ReLU: :math:`y = x` for :math:`x \ge 0`, :math:`y = \alpha x` otherwise.

    With a slope :math:`\alpha > 0` the map is a bijection of :math:`\mathbb{R}`; its log
    determinant is :math:`\log\alpha` times the number of negative entries, per sample. The
    inverse divides the negative entries by :math:`\alpha` (the sign is preserved, so
    :math:`y < 0 \iff x < 0`). The derivative jumps at 0; the log determinant there uses the
    slope of the :math:`x \ge 0` side.

    Works on any shape ``(B, ...)``.

    Args:
        negative_slope: :math:`\alpha`, a positive float.

    Example:
        >>> import torch
        >>> from hybridflow.layers import LeakyReLU
        >>> y, logdet = LeakyReLU(0.5)(torch.tensor([[-2.0, 3.0]]))
        >>> y.tolist(), round(float(logdet), 4)
        ([[-1.0, 3.0]], -0.6931)

    References:
        Maas et al., "Rectifier Nonlinearities Improve Neural Network Acoustic Models", 2013;
        Dinh et al., "Density estimation using Real NVP", 2017 (invertible activations).
    """

    draws_random_numbers = False

    def __init__(self, negative_slope: float = 0.1) -> None:
        super().__init__()
        # a slope of 0 would not be invertible
        number(negative_slope, "negative_slope", "LeakyReLU", minimum=0, open_low=True)
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    @staticmethod
    def _check(x: object, where: str) -> None:
        if not isinstance(x, Tensor):
            raise InputTypeError(f"expected a torch.Tensor, got {type(x).__name__}", where=(where,))
        if x.dim() < 1 or not x.is_floating_point():
            raise InputError(
                f"expected a floating-point batch (B, ...), got shape "
                f"{tuple(x.shape)} of {x.dtype}",
                where=(where,),
            )

    def _logdet(self, negative: Tensor, sign: float) -> Tensor:
        return sign * math.log(self.negative_slope) * per_sample_sum(negative.to(torch.float64))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, "LeakyReLU")
        negative = x < 0
        y = torch.where(negative, x * self.negative_slope, x)
        return y, self._logdet(negative, 1.0).to(x.dtype)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, "LeakyReLU.inverse")
        check_finite(y, "LeakyReLU.inverse")
        negative = y < 0
        x = torch.where(negative, y / self.negative_slope, y)
        return x, self._logdet(negative, -1.0).to(y.dtype)

    def reconstruct_vjp(
        self,
        output: Tensor,
        grad_output: Tensor,
        grad_logdet: Tensor,
        cond: Tensor | None = None,
        *,
        inverse: bool = False,
    ) -> Reconstruction:
        r"""Hand-written rule: the sign of the output tells the branch. Forward pass:
        :math:`x = y / \alpha`, :math:`\bar x = \alpha \bar y` where :math:`y < 0`; inverse pass:
        :math:`y = \alpha x`, :math:`\bar y = \bar x / \alpha` where :math:`x < 0`. The log
        determinant is piecewise constant: it contributes no gradient.
        """
        negative = output < 0
        if not inverse:
            rebuilt = torch.where(negative, output / self.negative_slope, output)
            grad_input = torch.where(negative, grad_output * self.negative_slope, grad_output)
        else:
            rebuilt = torch.where(negative, output * self.negative_slope, output)
            grad_input = torch.where(negative, grad_output / self.negative_slope, grad_output)
        return Reconstruction(rebuilt, grad_input, None, ())
