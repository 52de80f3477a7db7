"""Additive coupling (NICE / RevNet): a volume-preserving coupling layer."""

from __future__ import annotations

from torch import Tensor

from hybridflow.layers.coupling.base import CouplingLayer

__all__ = ["AdditiveCoupling"]


class AdditiveCoupling(CouplingLayer):
    r"""Additive coupling: :math:`y_1 = x_1`, :math:`y_2 = x_2 + t`, :math:`t = \mathrm{NN}([x_1, c])`.

    Volume preserving: the log determinant is 0. The inverse is :math:`x_2 = y_2 - t`, exact up
    to one rounding per entry, which is why reversible residual networks (RevNet) use it.
    Inputs are vectors ``(B, D)``, sequences ``(B, C, L)``, images ``(B, C, H, W)`` or volumes
    ``(B, C, D, H, W)`` by ``spatial_dims``; the condition ``c`` (optional) is a vector
    ``(B, cond_features)`` or a field ``(B, cond_features, *spatial)``.

    With the default zero-initialised conditioner the layer starts as the identity.

    Args:
        num_features: see :class:`~hybridflow.layers.CouplingLayer`.
        hidden: see :class:`~hybridflow.layers.CouplingLayer`.
        cond_features: see :class:`~hybridflow.layers.CouplingLayer`.
        spatial_dims: see :class:`~hybridflow.layers.CouplingLayer`.
        subnet: see :class:`~hybridflow.layers.CouplingLayer`.

    Example:
        >>> import torch
        >>> from hybridflow.layers import AdditiveCoupling
        >>> layer = AdditiveCoupling(4, hidden=8, cond_features=2)
        >>> x, c = torch.randn(3, 4), torch.randn(3, 2)
        >>> y, logdet = layer(x, c)
        >>> torch.allclose(layer.inverse(y, c)[0], x), logdet.tolist()
        (True, [0.0, 0.0, 0.0])

    References:
        Dinh et al., "NICE: Non-linear Independent Components Estimation", 2015;
        Gomez et al., "The Reversible Residual Network", 2017.
    """

    draws_random_numbers = False

    previous_config_names = ("hybridflow.layers.additive_coupling.AdditiveCoupling",)

    params_per_feature = 1

    def _transform(self, x2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return x2 + h, x2.new_zeros(x2.shape[0])

    def _inverse_transform(self, y2: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return y2 - h, y2.new_zeros(y2.shape[0])

    def _elementwise_vjp(
        self, out2: Tensor, h: Tensor, grad_out2: Tensor, grad_logdet: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""Hand-written. Forward pass: :math:`x_2 = y_2 - t`, :math:`\bar x_2 = \bar y_2`,
        :math:`\bar t = \bar y_2`. Inverse pass: :math:`y_2 = x_2 + t`,
        :math:`\bar y_2 = \bar x_2`, :math:`\bar t = -\bar x_2`. The log determinant is
        constant: :math:`\overline{\log\det}` contributes nothing.
        """
        if not inverse:
            return out2 - h, grad_out2, grad_out2
        return out2 + h, grad_out2, -grad_out2
