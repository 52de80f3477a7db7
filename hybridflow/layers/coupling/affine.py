"""Affine coupling (Real NVP / Glow): a softly clamped scale and a shift of half the features."""

from __future__ import annotations

import torch
from torch import Tensor

from hybridflow.arguments import number
from hybridflow.layers.coupling.base import CouplingLayer
from hybridflow.layers.coupling.conditioners import Subnet
from hybridflow.layers.shapes import batch_view, per_sample_sum

__all__ = ["AffineCoupling"]


class AffineCoupling(CouplingLayer):
    r"""Affine coupling (Glow / Real NVP): :math:`y_2 = x_2 \odot e^{s} + t`,
    :math:`\log\det = \sum s`, where :math:`(\tilde s, t) = \mathrm{NN}([x_1, c])` and
    :math:`s = a \tanh(\tilde s / a)` is softly clamped to :math:`(-a, a)` for stability.

    With the default zero-initialised conditioner the layer starts as the identity.

    Args:
        num_features: see :class:`CouplingLayer`.
        hidden: see :class:`CouplingLayer`.
        cond_features: see :class:`CouplingLayer`.
        spatial_dims: see :class:`CouplingLayer`.
        subnet: see :class:`CouplingLayer`.
        clamp: the bound ``a`` of the log-scale.

    References:
        Dinh et al., "Density estimation using Real NVP", 2017;
        Kingma & Dhariwal, "Glow", 2018.
    """

    draws_random_numbers = False

    previous_config_names = ("hybridflow.layers.coupling.AffineCoupling",)

    params_per_feature = 2

    def __init__(
        self,
        num_features: int,
        hidden: int = 64,
        cond_features: int = 0,
        spatial_dims: int = 0,
        subnet: Subnet | None = None,
        clamp: float = 2.0,
    ) -> None:
        super().__init__(num_features, hidden, cond_features, spatial_dims, subnet)
        number(clamp, "clamp", type(self).__name__, minimum=0, open_low=True)
        self.clamp = clamp

    def _scale_shift(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raw, shift = h.chunk(2, dim=1)
        squashed = torch.tanh(raw / self.clamp)
        return self.clamp * squashed, shift, squashed

    def _transform(self, x2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift, _ = self._scale_shift(h)
        return x2 * log_scale.exp() + shift, per_sample_sum(log_scale)

    def _inverse_transform(self, y2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift, _ = self._scale_shift(h)
        return (y2 - shift) * (-log_scale).exp(), -per_sample_sum(log_scale)

    def _elementwise_vjp(
        self, out2: Tensor, h: Tensor, grad_out2: Tensor, grad_logdet: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""Hand-written. Forward pass: :math:`x_2 = (y_2 - t) e^{-s}`,
        :math:`\bar x_2 = \bar y_2 e^{s}`, :math:`\bar s = \bar y_2 (y_2 - t) + \overline{\log\det}`,
        :math:`\bar t = \bar y_2`. Inverse pass: :math:`y_2 = x_2 e^{s} + t`,
        :math:`\bar y_2 = \bar x_2 e^{-s}`, :math:`\bar t = -\bar y_2`,
        :math:`\bar s = -\bar x_2 x_2 - \overline{\log\det}`. Then
        :math:`\bar{\tilde s} = \bar s (1 - \tanh^2(\tilde s / a))`.
        """
        log_scale, shift, squashed = self._scale_shift(h)
        dlogdet = batch_view(grad_logdet, out2)
        if not inverse:
            centered = out2 - shift
            rebuilt = centered * (-log_scale).exp()
            grad_in = grad_out2 * log_scale.exp()
            grad_log_scale = grad_out2 * centered + dlogdet
            grad_shift = grad_out2
        else:
            rebuilt = out2 * log_scale.exp() + shift
            grad_in = grad_out2 * (-log_scale).exp()
            grad_shift = -grad_in
            grad_log_scale = -grad_out2 * out2 - dlogdet
        grad_raw = grad_log_scale * (1 - squashed**2)
        return rebuilt, grad_in, torch.cat([grad_raw, grad_shift], dim=1)
