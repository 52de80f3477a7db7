"""Elementwise conditional maps: every feature transformed, parametrised by the condition alone."""

from __future__ import annotations

from hybridflow.layers.coupling.affine import AffineCoupling
from hybridflow.layers.coupling.conditioners import Subnet
from hybridflow.layers.coupling.spline import SPLINE_BOUND, SplineCoupling

__all__ = ["ConditionalAffine", "ConditionalSpline"]


class ConditionalSpline(SplineCoupling):
    r"""Elementwise rational-quadratic spline whose knots come from the condition alone:
    :math:`y_i = g_{h, i}(x_i)`, :math:`h = \mathrm{NN}(c)`, for every entry :math:`i`.

    The transform a flow needs when there is nothing to couple: a posterior over **one**
    parameter (a coupling layer must keep half of its input fixed), or the last elementwise
    step of a vector flow. It is a :class:`~hybridflow.layers.SplineCoupling` with an empty
    pass-through half, so it shares its spline (identity tails outside :math:`[-B, B]`), its
    stability on knots and in the tails, and its reconstructing rule: the conditioner runs
    once forward and once backward on the condition, and the splines are inverted and
    differentiated given its output. Without a condition (``cond_features=0``) the knots are
    learned constants (:class:`~hybridflow.layers.ConstantConditioner`).

    With the default zero-initialised conditioner the layer starts as the identity.

    Args:
        num_features: the features ``D`` of an input ``(B, D)`` (or channels of a field), at
            least 1.
        cond_features: the size of the condition; 0 for learned constant splines.
        hidden: the width of the default conditioner.
        spatial_dims: see :class:`~hybridflow.layers.CouplingLayer`; fields need a condition
            (a vector condition gives every position the same splines).
        bins: see :class:`~hybridflow.layers.SplineCoupling`.
        bound: see :class:`~hybridflow.layers.SplineCoupling`.
        subnet: a conditioner factory ``subnet(cond_features, num_features * (3 * bins - 1))``
            replacing the default network (which a layer without a condition does not use).

    Example:
        >>> import torch
        >>> from hybridflow.layers import ConditionalSpline
        >>> layer = ConditionalSpline(1, cond_features=3, hidden=8)
        >>> y, logdet = layer(torch.randn(5, 1), torch.randn(5, 3))
        >>> tuple(y.shape), tuple(logdet.shape)
        ((5, 1), (5,))

    References:
        Durkan et al., "Neural Spline Flows", 2019 (the elementwise spline conditioned on
        context, as zuko's and nflows' one-dimensional transforms).
    """

    draws_random_numbers = False

    previous_config_names = ("hybridflow.layers.conditional_elementwise.ConditionalSpline",)

    passes_half = False

    def __init__(
        self,
        num_features: int,
        cond_features: int = 0,
        hidden: int = 64,
        spatial_dims: int = 0,
        bins: int = 8,
        bound: float = SPLINE_BOUND,
        subnet: Subnet | None = None,
    ) -> None:
        super().__init__(num_features, hidden, cond_features, spatial_dims, subnet, bins, bound)


class ConditionalAffine(AffineCoupling):
    r"""Elementwise affine map whose scale and shift come from the condition alone:
    :math:`y = x \odot e^{s(c)} + t(c)`, :math:`\log\det = \sum s`, with the soft clamp of
    :class:`~hybridflow.layers.AffineCoupling` (an affine coupling with an empty
    pass-through half, sharing its hand-written rule).

    Args:
        num_features: the features ``D`` of an input ``(B, D)``, at least 1.
        cond_features: the size of the condition; 0 for a learned constant map.
        hidden: the width of the default conditioner.
        spatial_dims: see :class:`~hybridflow.layers.CouplingLayer`.
        clamp: see :class:`~hybridflow.layers.AffineCoupling`.
        subnet: a conditioner factory ``subnet(cond_features, 2 * num_features)``.

    Example:
        >>> import torch
        >>> from hybridflow.layers import ConditionalAffine
        >>> y, logdet = ConditionalAffine(1, cond_features=2)(torch.randn(4, 1), torch.randn(4, 2))
        >>> tuple(y.shape), tuple(logdet.shape)
        ((4, 1), (4,))
    """

    draws_random_numbers = False

    previous_config_names = ("hybridflow.layers.conditional_elementwise.ConditionalAffine",)

    passes_half = False

    def __init__(
        self,
        num_features: int,
        cond_features: int = 0,
        hidden: int = 64,
        spatial_dims: int = 0,
        clamp: float = 2.0,
        subnet: Subnet | None = None,
    ) -> None:
        super().__init__(num_features, hidden, cond_features, spatial_dims, subnet, clamp)
