"""``DeepSet``: a permutation-invariant summary of a set of iid observations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from hybridflow.arguments import boolean, integer, one_of
from hybridflow.config import Configurable
from hybridflow.summary.mlp import mlp_layers
from hybridflow.summary.sets import as_padded_set

__all__ = ["DeepSet", "Pooling"]

Pooling = Literal["mean", "sum", "max"]
"""How :class:`DeepSet` pools the per-element features over the set."""


class DeepSet(nn.Module, Configurable):
    r"""Deep Sets: :math:`s(\{x_i\}_{i=1}^n) = \rho\big(\operatorname{pool}_i \phi(x_i),\
    \log(1 + n)\big)`.

    :math:`\phi` (an MLP on each element) and :math:`\rho` (an MLP on the pooled features) are
    learned; pooling is a mean, sum or max over the elements, so the summary does not depend
    on the order of the elements. For iid observations the posterior sharpens with the number
    of observations :math:`n`, which a mean or max forgets: with ``set_size=True`` (default)
    :math:`\log(1 + n)` is given to :math:`\rho` as an extra input.

    **Sets of different sizes.** Pass a list of ``B`` tensors ``(n_b, D)``, or a zero-padded
    tensor ``(B, N, D)`` with a boolean ``mask`` ``(B, N)`` that is ``True`` at real elements
    (:func:`~hybridflow.summary.pad_sets` builds both from a list). Padded entries are
    ignored whatever they hold; an empty set (``n_b = 0``) pools to zeros. Through
    :class:`~hybridflow.distributions.ConditionalFlow` the mask goes as a keyword,
    ``flow(x, mask=mask)``, and padding must be finite (the flow refuses NaN/Inf
    observations): pad with zeros.

    Args:
        in_features: size ``D`` of one element.
        out_features: size of the summary.
        hidden: width of :math:`\phi`, :math:`\rho` and of the pooled features.
        depth: hidden layers of :math:`\phi` and of :math:`\rho` each.
        pooling: ``"mean"``, ``"sum"`` or ``"max"``.
        set_size: give :math:`\log(1 + n)` to :math:`\rho`.

    Example:
        >>> import torch
        >>> from hybridflow.summary import DeepSet
        >>> net = DeepSet(2, 8, hidden=16)
        >>> x = torch.randn(3, 5, 2)
        >>> torch.allclose(net(x), net(x[:, torch.randperm(5)]), atol=1e-6)
        True
        >>> tuple(net([torch.randn(4, 2), torch.randn(1, 2)]).shape)  # sets of 4 and 1
        (2, 8)

    References:
        Zaheer et al., "Deep Sets", 2017; Radev et al., "BayesFlow", 2020 (summary networks
        for amortized inference).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        depth: int = 2,
        pooling: Pooling = "mean",
        set_size: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = integer(in_features, "in_features", "DeepSet", minimum=1)
        self.out_features = integer(out_features, "out_features", "DeepSet", minimum=1)
        integer(hidden, "hidden", "DeepSet", minimum=1)
        integer(depth, "depth", "DeepSet", minimum=0)
        one_of(pooling, "pooling", "DeepSet", get_args(Pooling))
        self.pooling: Pooling = pooling
        self.set_size = boolean(set_size, "set_size", "DeepSet")
        self.phi = mlp_layers(in_features, hidden, hidden, depth)
        self.rho = mlp_layers(hidden + int(self.set_size), out_features, hidden, depth)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"pooling={self.pooling!r}, set_size={self.set_size}"
        )

    def forward(self, x: Tensor | Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        """Summaries ``(B, out_features)`` of a set batch (see the class docstring)."""
        x, mask = as_padded_set(x, mask, self.in_features, "DeepSet")
        keep = mask.unsqueeze(-1)
        h = self.phi(x)
        count = keep.sum(dim=1).to(h.dtype)  # (B, 1)
        if self.pooling == "max":
            pooled = h.masked_fill(~keep, float("-inf")).amax(dim=1)
            pooled = torch.where(count > 0, pooled, torch.zeros_like(pooled))
        else:
            pooled = (h * keep).sum(dim=1)
            if self.pooling == "mean":
                pooled = pooled / count.clamp_min(1)
        if self.set_size:
            pooled = torch.cat([pooled, torch.log1p(count)], dim=1)
        return self.rho(pooled)
